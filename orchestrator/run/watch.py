"""Attached to a run: stream every rank's log, tear the run down when a rank fails,
and stop it when ranks never join (the hang watchdog)."""

from __future__ import annotations

import shlex
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import TYPE_CHECKING

from orchestrator.hostside import program
from orchestrator.errors import DistctlError, ExitCode, HostError
from orchestrator.ssh.group import fan_out
from orchestrator.run.lifecycle import halt_host, stop_host
from orchestrator.run.links import HostLinks
from orchestrator.contract import PEER_LOST, RECORD_EVENT, RECORD_EXIT, RECORD_PARTIAL, RECORD_STOP, STOPPED
from orchestrator.ssh.remote import Connection
from orchestrator.plan.state import RunState
from orchestrator.ssh.stream import Followed, follow
from orchestrator.run.tails import MAX_LINES, last_redraw, split_marker, tail_of

if TYPE_CHECKING:
    from orchestrator.console.ui import Ui

FAILURE_GRACE = 2.0  # seconds survivors get to exit after a rank failed; then SIGKILL
# A rank whose wrapper left no exit code: its whole process group was killed at once (a reboot,
# kill -9 of the group, an OOM kill of the wrapper), which no program's exit path reports.
GONE = "processes are gone without an exit code (host rebooted or processes killed)"


@dataclass
class Outcome:
    code: ExitCode
    message: str


def stop_everywhere(state: RunState, conns: dict[str, Connection], grace: float,
                    fanout: int = 64, requested: bool = False) -> dict[str, str]:
    """Stop the run on every host in parallel; per-host problems are returned, not raised.
    With restart agents, every agent is halted first, on every host (lifecycle.halt_script);
    a user's stop (`requested`) is marked on every host before any rank is signalled."""
    def halt(hs) -> None:
        conn = conns.get(hs.host.name)
        if conn is not None:
            halt_host(conn, hs.rundir, requested)

    if state.coordinated or requested:  # a host that fails to halt: the stop halts it again, and reports it
        fan_out("halt", state.hosts, halt, fanout, lambda hs: hs.host.name)

    def one(hs) -> None:
        conn = conns.get(hs.host.name)
        if conn is None:
            raise HostError(hs.host.name, "unreachable")
        left = stop_host(conn, hs.rundir, state.run_id, grace)
        if left:
            raise HostError(hs.host.name, f"{left} process(es) left")

    stopped = fan_out("stop", state.hosts, one, fanout, lambda hs: hs.host.name)
    return {name: exc.cause for name, exc in stopped.failed.items()}


@dataclass
class RankEvents:
    """Demultiplexes `R line` / `exit R CODE` from host followers into per-rank callbacks."""

    on_line: Callable[[str, int, str], None]
    on_exit: Callable[[str, int, int | None, float | None], None] = lambda host, rank, code, at: None
    on_event: Callable[[str, str], None] = lambda host, text: None  # the restart agent's decisions
    on_stop: Callable[[str], None] = lambda host: None  # a user's `distctl stop` marked the host
    # A rank's unfinished line (its newest redraw: a progress bar), not a line of its log.
    on_partial: Callable[[str, int, str], None] = lambda host, rank, text: None
    tails: dict[int, deque] = field(default_factory=dict)

    def line(self, f: Followed, text: str) -> None:
        head, _, rest = text.partition(" ")
        if head == RECORD_EVENT:
            self.on_event(f.host, rest)
        elif head == RECORD_STOP:
            self.on_stop(f.host)
        elif head == RECORD_PARTIAL:
            which, _, partial = rest.partition(" ")
            if which.isdigit():
                self.on_partial(f.host, int(which), partial)
        elif head == RECORD_EXIT:
            which, code, at = (rest.split(" ") + ["-", "-"])[:3]
            self.on_exit(f.host, int(which), int(code) if code.lstrip("-").isdigit() else None,
                         float(at) if at.replace(".", "", 1).isdigit() else None)
        elif head.isdigit():
            rank = int(head)
            if rank not in self.tails:  # not setdefault: that builds a deque for every line
                self.tails[rank] = deque(maxlen=MAX_LINES)
            for piece in split_marker(rest):  # a marker after a partial bar: a line of its own
                self.tails[rank].append(piece)
                self.on_line(f.host, rank, piece)


def watch_run(state: RunState, conns: dict[str, Connection], ui: Ui, join_timeout: float,
              after_prepare: bool = False) -> Outcome:
    """Follow the run to its end. Returns the outcome; raises KeyboardInterrupt on Ctrl-C."""
    links = HostLinks(state, conns, ui, state.ssh.reconnect_timeout, after_prepare=after_prepare)
    followers = links.open_all()
    host_of = {r.rank: hs.host.name for hs in state.hosts for r in hs.ranks}
    joined: set[int] = set()
    started: set[int] = set()
    exits: dict[int, int | None] = {}
    exit_times: dict[int, float] = {}
    vanished: set[int] = set()  # gone without an exit code before distctl stopped anything
    torn_down: list[bool] = []
    first_failure: list[int] = []
    fallback_told: set[str] = set()
    deadline = time.monotonic() + join_timeout
    hang: list[str] = []
    agent = AgentNews()
    live_stacks: list = []  # the running ranks' stacks when the first rank failed (autopsy.py)
    before_teardown: set[int] = set()

    def on_line(host: str, rank: int, line: str) -> None:
        ui.rank_line(host, rank, line)
        if line.startswith("joined "):
            joined.add(rank)
        elif line.startswith("rendezvous "):
            started.add(rank)
        elif state.trainer and line.startswith("fallback ") and host not in fallback_told:
            fallback_told.add(host)
            ui.warn(f"{host}: MNIST could not be had: training on generated digits, not MNIST "
                    "(job.fallback: generated; set job.data to push your copy of MNIST)")

    def on_event(host: str, text: str) -> None:
        if text in agent.seen:
            return  # every host relays the same decision
        agent.seen.add(text)
        kind, _, rest = text.partition(" ")
        # lost: an agent is gone (hostside/agent.py), and how long the run waits; hung: the
        # agents judged the run hung (job.hang_timeout) and take every rank's stacks
        if kind in ("restart", "lost", "hung:"):
            ui.warn(text)
        elif kind == "dropped" and rest in links.hosts and rest not in agent.dropped:
            agent.dropped.append(rest)
            links.abandon(rest)
            for r in [r for r, h in host_of.items() if h == rest]:
                del host_of[r]
                exits.pop(r, None)
            ui.warn(f"{rest}: dropped from the run; it goes on without it")
        elif kind == "end":
            outcome, _, why = rest.partition(": ")
            agent.end = (outcome, why)

    stop_requested: list[bool] = []  # `distctl stop` before any rank failed: every exit is its doing

    def on_stop(host: str) -> None:
        if not first_failure and not stop_requested:
            stop_requested.append(True)
            ui.info(f"{host}: distctl stop was requested; the run is being stopped")

    def on_exit(host: str, rank: int, code: int | None, at: float | None) -> None:
        if host in agent.dropped:
            return
        exits[rank] = code
        if at is not None:
            exit_times[rank] = at
        if code is None and not torn_down and not stop_requested:
            vanished.add(rank)
        if code != 0 and not first_failure:
            first_failure.append(rank)
            # After the hang watchdog's teardown the ranks exit from its SIGTERM: not a new failure;
            # after a user's stop, the stop is under way already.
            # After the agents judged the run hung, they stopped it: their stacks say the rest.
            hung = agent.end is not None and agent.end[0] == "hung"
            if (code != STOPPED or not state.trainer) and not hang and not stop_requested and not hung:
                live_stacks.extend(_stacks_of_the_others(state, conns, set(host_of) - set(exits), ui))
                before_teardown.update(exits)
                teardown(_ended(host, rank, code))

    def teardown(reason: str) -> None:
        torn_down.append(True)
        ui.warn(f"{reason}; stopping the run on every host")
        for host, problem in stop_everywhere(state, conns, FAILURE_GRACE).items():
            ui.warn(f"{host}: stop: {problem}")

    judged: list[bool] = []

    def tick() -> None:
        restarted = any(text.startswith("restart ") for text in agent.seen)
        if time.monotonic() <= deadline or first_failure or hang or judged or restarted:
            return  # (after a restart the agents judge: the rendezvous may be under way again)
        if not state.trainer:
            judged.append(True)
            hang.extend(unjoined_hosts(state, conns, set(exits)))
        elif len(joined) < state.world_size:
            missing = sorted(set(host_of) - joined)
            # Rank 0 waits in the rendezvous for the others: name the ranks that never reached
            # it, when the trainer said which did; otherwise every rank still missing.
            culprits = [r for r in missing if r not in started] if started else missing
            hang.extend(f"{host_of[r]} r{r}" for r in (culprits or missing))
        if hang:
            teardown(f"ranks never joined within job.join_timeout={join_timeout:g}s: {', '.join(hang)}")

    events = RankEvents(on_line, on_exit, on_event, on_stop, ui.partial_line)
    try:
        follow(followers, lambda f, text: links.line(f, text, events.line), tick, links=links)
    finally:
        links.stop()
        for f in followers:
            f.stream.close()
    ranked = root_causes(exits, on_workstation_clock(exit_times, state.clock_offsets()), state.trainer, vanished)
    outcome = _outcome(state, exits, ranked, hang, events.tails, host_of, links.unreachable)
    if stop_requested and not hang:
        outcome = _stopped(state)
    elif ranked and outcome.code == ExitCode.RUN_FAILED and live_stacks:  # what the others did, when known
        times = on_workstation_clock(exit_times, state.clock_offsets())
        # Exited on their own: all but the ranks found running right before the teardown (their
        # stacks were taken then). Without stacks: those read before it, or with a code of their
        # own (an exit read later may still predate it).
        alive = {d.rank for d in live_stacks}
        before = (set(exits) - alive if live_stacks else
                  before_teardown | {r for r, code in exits.items() if code not in (143, 137, None)})
        outcome = _with_autopsy(state, conns, outcome, ranked, before, live_stacks, events.tails, host_of, times)
    outcome = agent.amend(outcome)
    if agent.end and agent.end[0] == "hung":
        outcome = _hung(state, conns, agent.end[1])
    if fallback_told and outcome.code == ExitCode.OK:  # said again at the end: easy to miss mid-run
        outcome.message += " (on generated digits, not MNIST: MNIST could not be had)"
    return outcome


def _hung(state: RunState, conns: dict[str, Connection], why: str) -> Outcome:
    """The agents judged the run hung (job.hang_timeout) and ended it: why, and the roll-call of
    the stacks they took first."""
    from orchestrator.run.stacks import hang_report

    lines = [f"run {state.run_id} hung: {why}; the run was stopped"]
    try:
        lines += hang_report(state, conns, 64)
    except HostError:
        pass
    return Outcome(ExitCode.HUNG, "\n".join(lines))


def _stacks_of_the_others(state: RunState, conns: dict[str, Connection], live: set[int], ui) -> list:
    """Before the teardown: where the ranks still running are (bounded: autopsy.STACKS_TIMEOUT_S)."""
    from orchestrator.run.autopsy import take_stacks
    from orchestrator.run.stacks import rollcall

    dumps = take_stacks(state, conns, live)
    if dumps:
        ui.warn(f"the ranks still running: {rollcall(dumps)}")
    return dumps


def _with_autopsy(state: RunState, conns: dict[str, Connection], outcome: Outcome, ranked: list[int],
                  before: set[int], stacks: list, tails: dict[int, deque], host_of: dict[int, str],
                  times: dict[int, float]) -> Outcome:
    """The culprit (which may be a rank that never failed: it never arrived), what the others
    were doing, and which ranks died only as a consequence; kept in rank 0's run directory."""
    from orchestrator.run import autopsy

    failed = [r for r in ranked if r in before]
    last = {r: list(t) for r, t in tails.items()}
    culprit, why = autopsy.culprit(failed, last, stacks)
    first = ranked[0]
    lines = outcome.message.splitlines()
    if culprit is not None and culprit != first and why != "failed first":
        lines.insert(0, f"culprit: rank {culprit} on {host_of.get(culprit, '?')} {why}")
    consequences = autopsy.collateral(failed, culprit, last, times)
    lines += autopsy.report("", stacks, consequences, host_of)[1:]
    stopped = sorted(set(ranked) - before - {culprit})
    if stopped:
        from orchestrator.console.rankset import ranks_phrase

        lines.append(f"{ranks_phrase(stopped)}: stopped by distctl's teardown")
    message = "\n".join(lines)
    first_host = state.hosts[0]
    try:
        conns[first_host.host.name].run(f"cat >{shlex.quote(first_host.rundir + '/' + autopsy.REPORT)}",
                                        stdin=(message + "\n").encode(), timeout=30)
    except (HostError, KeyError):
        pass
    return Outcome(outcome.code, message)


@dataclass
class AgentNews:
    """What the restart agents said (hostside/agent.py), relayed by the followers."""

    seen: set[str] = field(default_factory=set)
    dropped: list[str] = field(default_factory=list)
    end: tuple[str, str] | None = None  # (outcome, why) when they gave up

    def amend(self, outcome: Outcome) -> Outcome:
        restarts = sum(1 for text in self.seen if text.startswith("restart "))
        if outcome.code == ExitCode.OK and (restarts or self.dropped):
            extra = [f"after {restarts} restart(s)"] if restarts else []
            extra += [f"without {', '.join(self.dropped)} (dropped)"] if self.dropped else []
            return Outcome(outcome.code, f"{outcome.message}, {'; '.join(extra)}")
        if self.end and self.end[0] == "exhausted" and outcome.code == ExitCode.RUN_FAILED:
            return Outcome(ExitCode.RESTARTS_EXHAUSTED, f"{self.end[1]}\n{outcome.message}")
        if self.end and self.end[0] == "failed" and outcome.code == ExitCode.RUN_FAILED:
            return Outcome(outcome.code, f"{self.end[1]}\n{outcome.message}")
        return outcome


def unjoined_hosts(state: RunState, conns: dict[str, Connection], exited: set[int]) -> list[str]:
    """Ranks that never reached rank 0's store, judged by each host's connections to it: every
    rank that joined through env:// holds one. Where no host holds any (a program that brings
    its own rendezvous, or none) or a host cannot tell, nobody is judged: a healthy run is
    never torn down for a rendezvous distctl cannot see."""
    def count(hs) -> int | None:
        command = program(hs.python, "store_peers", state.master_addr, state.port)
        try:
            out = conns[hs.host.name].run(command, timeout=30).stdout
        except HostError:
            return None
        value = out.strip().rpartition("connected=")[2]
        return int(value) if value.isdigit() else None

    with ThreadPoolExecutor(max_workers=max(1, min(32, len(state.hosts)))) as pool:
        counts = list(pool.map(count, state.hosts))
    if None in counts or not any(counts):
        return []
    out = []
    for hs, n in zip(state.hosts, counts):
        waiting = [r.rank for r in hs.ranks if r.rank not in exited]
        if n is not None and n < len(waiting):
            out.append(f"{hs.host.name} ({n} of {len(waiting)} rank(s) connected to {state.master_addr}:{state.port})")
    return out


def root_causes(exits: dict[int, int | None], times: dict[int, float], trainer: bool = True,
                vanished: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """Failed ranks, most likely cause first: the order distctl saw them in is the order of
    its reads, not of the failures. Ranks that `vanished` (no exit code, before distctl stopped
    anything: their host rebooted) come first: what happened to them explains the others, and
    nothing else does. For the bundled trainer a peer-lost exit is a consequence, and so is no
    exit code (distctl's own SIGKILL); then earliest first. A user program's codes mean
    nothing to distctl: earliest first."""
    failed = [r for r, code in exits.items() if code != 0]
    lost = (PEER_LOST, None) if trainer else (None,)
    return sorted(failed, key=lambda r: (r not in vanished, exits[r] in lost, times.get(r, float("inf"))))


def on_workstation_clock(times: dict[int, float], offsets: dict[int, float]) -> dict[int, float]:
    """Exit times as each host's clock wrote them (file mtimes), moved onto the workstation's clock
    so that hosts compare: `offsets` maps a rank to its host's clock minus the workstation's, as
    discovery measured it (0 where unknown). A host 5 s ahead otherwise looks 5 s late to fail."""
    return {rank: at - offsets.get(rank, 0.0) for rank, at in times.items()}


def _ended(host: str, rank: int, code: int | None) -> str:
    """How a rank ended, naming its host: `rank 1 on node2 exited with code 1`."""
    return f"{host}: rank {rank}'s {GONE}" if code is None else f"rank {rank} on {host} exited with {_code_text(code)}"


def _code_text(code: int) -> str:
    if code > 128:
        return f"code {code} (signal {code - 128})"
    return f"code {code}"


def _outcome(state: RunState, exits: dict[int, int | None], failures: list[int], hang: list[str],
             tails: dict[int, deque], host_of: dict[int, str], unreachable: dict[str, str]) -> Outcome:
    if hang:
        return Outcome(ExitCode.HANG, f"ranks never joined: {', '.join(hang)}; the run was stopped. "
                       "Check the interface and firewall (distctl check), and the rank logs (distctl logs)")
    if not failures and len(exits) == len(host_of) and all(c == 0 for c in exits.values()):
        return Outcome(ExitCode.OK, f"run {state.run_id} finished: {len(exits)} rank(s) exited 0")
    if not failures:
        lost = sorted(set(host_of) - set(exits))
        hosts = sorted({host_of[r] for r in lost})
        why = "; ".join(f"{h}: {unreachable[h]}" for h in hosts if h in unreachable)
        return Outcome(ExitCode.UNREACHABLE, f"{', '.join(hosts)} unreachable (rank(s) {', '.join(map(str, lost))}): "
                       f"run state unknown{f' ({why})' if why else ''}. Re-attach: distctl logs -f {state.run_id}   "
                       f"Status: distctl status {state.run_id}")
    rank = failures[0]
    if state.trainer and exits.get(rank) == STOPPED and all(c in (STOPPED, 0) for c in exits.values()):
        return _stopped(state)
    tail = "\n".join(f"    {line}" for line in tail_of([last_redraw(line) for line in tails.get(rank, ())]))
    code = exits.get(rank)
    first = (f"{host_of[rank]}: rank {rank} failed first: its {GONE}" if code is None else
             f"rank {rank} on {host_of[rank]} failed first: exited with {_code_text(code)}")
    return Outcome(ExitCode.RUN_FAILED, f"{first}; last lines of its log:\n{tail}")


def _stopped(state: RunState) -> Outcome:
    """The run ended by a stop: the bundled trainer checkpointed; any program can be resumed."""
    how = "stopped (checkpointed)" if state.trainer else "stopped by distctl stop"
    return Outcome(ExitCode.STOPPED, f"run {state.run_id} was {how}; "
                   f"continue it with: distctl up {shlex.quote(state.inventory)} --resume")


def raise_for(outcome: Outcome) -> None:
    if outcome.code != ExitCode.OK:
        raise DistctlError(outcome.message, outcome.code)
