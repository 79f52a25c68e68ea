"""`distctl status`: every host of a run asked at once (one command each) what became of its
ranks and how far the bundled trainer got, and what that says about the run: running,
finished, stopped at a checkpoint, or which rank failed first."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import datetime

from orchestrator import shell
from orchestrator.ssh import group
from orchestrator.errors import HostError
from orchestrator.run.lifecycle import RankStatus, parse_agent, parse_missing, parse_status, parse_stop, status_script
from orchestrator.ssh.remote import Connection
from orchestrator.hostside import program
from orchestrator.plan.state import HostState, RunState, summarize
from orchestrator.run.tails import read_tail
from orchestrator.run.watch import STOPPED, on_workstation_clock, root_causes
from orchestrator.run.stragglers import FILE as STRAGGLER_FILE, parse_record

GONE_DETAIL = "gone without an exit code: host rebooted or processes killed"
# A rank that exited this long before the stop was requested failed on its own (file times are
# whole seconds on most hosts).
STOP_SLACK_S = 2.0


def status_command(state: RunState, hs: HostState) -> str:
    """One command per host: each rank's state (lifecycle.status_script), then how far each rank
    got (hostside/progress.py: the bundled trainer's epochs, any program's steps)."""
    ranks = [r.rank for r in hs.ranks]
    autopsy = f"sed 's/^/autopsy /' {shell.join([hs.rundir + '/autopsy.txt'])} 2>/dev/null; true"
    straggler = f"sed 's/^/straggler /' {shell.join([hs.rundir + '/' + STRAGGLER_FILE])} 2>/dev/null; true"
    return shell.lines(status_script(hs.rundir, ranks), program(hs.python, "progress", hs.rundir, *ranks),
                       autopsy, straggler)


@dataclass(frozen=True)
class Progress:
    epoch: int | None = None  # the last epoch the trainer logged as done
    stopped_epoch: int | None = None  # the epoch of its `stopped` line (exit 143 after a checkpoint)
    step: int | None = None  # the last step its tracker read (tqdm, `distctl: step=N ...`)
    total: int | None = None
    rate: float | None = None  # steps per second, recently
    at: float | None = None  # when that step came (host clock)
    metrics: dict[str, float] = field(default_factory=dict, hash=False, compare=False)

    @property
    def left_s(self) -> float | None:
        """Seconds to the total at the current rate (None: no total or no rate)."""
        if self.step is None or not self.total or not self.rate or self.rate <= 0:
            return None
        return max(0.0, (self.total - self.step) / self.rate)


def parse_progress(output: str) -> dict[int, Progress]:
    """`progress R EPOCH STOPPED` and `step R step=N ...` lines (hostside/progress.py) by rank."""
    def number(text: str) -> int | None:
        return int(text) if text.isdigit() else None

    found: dict[int, Progress] = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[0] == "progress" and fields[1].isdigit():
            found[int(fields[1])] = Progress(number(fields[2]), number(fields[3]))
        elif len(fields) > 2 and fields[0] == "step" and fields[1].isdigit():
            rank = int(fields[1])
            found[rank] = _with_steps(found.get(rank, Progress()), fields[2:])
    return found


def _with_steps(progress: Progress, words: list[str]) -> Progress:
    values: dict[str, float] = {}
    for word in words:
        key, _, value = word.partition("=")
        try:
            values[key] = float(value)
        except ValueError:
            continue
    if "step" not in values:
        return progress
    total = values.pop("total", None)
    return replace(progress, step=int(values.pop("step")), total=int(total) if total else None,
                   rate=values.pop("rate", None), at=values.pop("at", None), metrics=values)


@dataclass(frozen=True)
class RankRow:
    host: str
    status: RankStatus
    detail: str = ""  # why the host could not be asked
    progress: Progress = Progress()


@dataclass(frozen=True)
class RunStatus:
    """What `status` found, and what it makes of it."""

    state: RunState
    rows: list[RankRow]
    unreachable: dict[str, str] = field(default_factory=dict)  # host -> cause
    checked_at: float = 0.0  # workstation clock
    agents: list[dict] = field(default_factory=list)  # each host's restart agent state (lifecycle.parse_agent)
    stop_at: float | None = None  # when a user's `distctl stop` was requested (workstation clock)
    missing: list[str] = field(default_factory=list)  # hosts whose run directory is gone
    autopsy: list[str] = field(default_factory=list)  # culprit and collateral, as the attached up kept it
    straggler: dict | None = None  # the straggler watch's verdict, as it kept it (stragglers.py)
    autopsy_by: str = "up"  # or "status": made now from the hosts' records (no attached up saw the failure)

    @property
    def summary(self) -> str | None:
        """One word for the run (running, finished, stopped, failed), None when unknown. Stopped:
        the bundled trainer's ranks all exited 143 (or 0), or `distctl stop` ended the run before
        any rank failed on its own, whatever the program's exit codes."""
        known = [(r.status.state, r.status.code) for r in self.rows if r.status.state != "missing"]
        word = summarize(known)
        if any(str(a.get("outcome") or "").startswith("hung") for a in self.agents):
            return "hung"  # the agents judged it so (job.hang_timeout) and ended it
        if self.stop_at is not None and word in ("failed", "stopped") and not self._failed_before_stop():
            return "stopped"
        if word == "stopped" and not self.state.trainer:
            return "failed"  # 143 means nothing in a user program: a SIGTERM from elsewhere
        return word

    def _failed_before_stop(self) -> bool:
        assert self.stop_at is not None
        times = self._exit_times()
        return any(r.status.state == "exited" and r.status.code != 0
                   and times.get(r.status.rank, self.stop_at) < self.stop_at - STOP_SLACK_S for r in self.rows)

    def _exit_times(self) -> dict[int, float]:
        """Each exited rank's exit time on the workstation's clock."""
        times = {r.status.rank: r.status.at for r in self.rows if r.status.at is not None}
        return on_workstation_clock(times, self.state.clock_offsets())

    @property
    def stopped(self) -> bool:
        """Stopped (see summary): nobody to blame; resumable."""
        return self.summary == "stopped"

    @property
    def stopped_epoch(self) -> int | None:
        epochs = [r.progress.stopped_epoch for r in self.rows
                  if r.status.code == STOPPED and r.progress.stopped_epoch is not None]
        return min(epochs) if self.state.trainer and self.stopped and epochs else None

    @property
    def started(self) -> float | None:
        return datetime.fromisoformat(self.state.started).timestamp() if self.state.started else None

    @property
    def elapsed(self) -> float | None:
        """Seconds from the start to the last rank's exit, or to now while the run may go on
        (a rank running, a host unreachable). The exit times are the hosts' clocks."""
        if self.started is None:
            return None
        known = [r for r in self.rows if r.status.state != "missing"]
        ends = [r.status.at for r in known if r.status.state == "exited"]
        ended = known and len(ends) == len(known) and None not in ends
        return max(0.0, (max(e for e in ends if e is not None) if ended else self.checked_at) - self.started)

    @property
    def restarts(self) -> dict | None:
        """The restart agents' view (the newest attempt any host knows of); None without job.max_restarts."""
        if not self.state.max_restarts:
            return None
        newest = max(self.agents, key=lambda a: int(a.get("attempt") or 0), default={})
        return {"attempt": int(newest.get("attempt") or 0), "max_restarts": self.state.max_restarts,
                "restarts": list(newest.get("restarts") or []), "dropped": list(newest.get("dropped") or []),
                "outcome": newest.get("outcome"),
                "agents_gone": [a["host"] for a in self.agents if a.get("gone")]}

    def failed_first(self) -> RankRow | None:
        """The rank that most likely failed first (see watch.root_causes); none for a stopped run."""
        ranked = self.failed_in_order()
        return next(r for r in self.rows if r.status.rank == ranked[0]) if ranked else None

    def failed_in_order(self) -> list[int]:
        """The failed ranks, the most likely cause first (watch.root_causes); none for a stopped run."""
        if self.stopped:
            return []
        exited = {r.status.rank: r.status.code for r in self.rows if r.status.state == "exited"}
        return root_causes(exited, self._exit_times(), self.state.trainer)

    def analysed(self, conns: dict[str, Connection], fanout: int) -> RunStatus:
        """A failed run that no attached `up` analysed (a detached run): with culprit and
        collateral from the hosts' records (autopsy.from_records); a read, nothing is written."""
        from orchestrator.run import autopsy

        failed = self.failed_in_order()  # (a run may still be running: its rank that never arrived)
        if self.autopsy or not failed or self.summary not in ("failed", "running"):
            return self
        host_of = {r.status.rank: r.host for r in self.rows}
        running = [r.status.rank for r in self.rows if r.status.state == "running"]
        # The ranks a watcher stopped a while after a failure on their host (agent_policy.Watcher)
        watched = sorted({r for a in self.agents for r in a.get("stopped") or [] if isinstance(r, int)} & set(failed))
        failed = [r for r in failed if r not in watched]
        tails = autopsy.failed_tails(self.state, conns, failed, host_of)
        try:
            stacks = autopsy.saved_stacks(self.state, conns, fanout)
        except HostError:
            stacks = []
        lines = autopsy.from_records(failed, tails, stacks, running, self._exit_times(), host_of, watched)
        return replace(self, autopsy=lines, autopsy_by="status")


def query(state: RunState, conns: dict[str, Connection], down: dict[str, str], fanout: int) -> RunStatus:
    """Ask every reachable host at once; `down` holds the hosts that could not be connected."""
    def one(hs: HostState) -> tuple[str, list[RankStatus], dict[int, Progress], dict | None, list[str]]:
        out = conns[hs.host.name].run(status_command(state, hs), timeout=30).stdout
        progress = parse_progress(out)
        if not state.trainer:  # a user program's `epoch=` lines are its own, not the trainer's contract
            progress = {rank: replace(p, epoch=None, stopped_epoch=None) for rank, p in progress.items()}
        # Only status_script's own lines are rank states: the others carry a rank's words (`rank=1`).
        own = "\n".join(line for line in out.splitlines()
                        if not line.startswith(("progress ", "step ", "autopsy ", "straggler ")))
        return out, parse_status(own), progress, parse_agent(own), [line[8:] for line in out.splitlines()
                                                                    if line.startswith("autopsy ")]

    found = group.fan_out("status", [hs for hs in state.hosts if hs.host.name in conns], one, fanout,
                          lambda hs: hs.host.name)
    unreachable = {**down, **{name: e.cause for name, e in found.failed.items()}}
    rows: list[RankRow] = []
    agents: list[dict] = []
    missing: list[str] = []
    autopsy: list[str] = []
    stops: list[float] = []
    straggler = None
    for hs in state.hosts:
        name = hs.host.name
        if name in found.ok and parse_missing(found.ok[name][0]):
            missing.append(name)
            rows += [RankRow(name, RankStatus(r.rank, "missing"), missing_detail(name)) for r in hs.ranks]
        elif name in found.ok:
            out, statuses, progress, agent, report = found.ok[name]
            rows += [RankRow(name, s, GONE_DETAIL if s.state == "killed" else "",
                             progress=progress.get(s.rank, Progress())) for s in statuses]
            agents += [{**agent, "host": name}] if agent else []
            stop = parse_stop(out)
            stops += [] if stop is None else [stop - (hs.clock_offset or 0.0)]
            autopsy += report
            straggler = straggler or next((parse_record(line[10:]) for line in out.splitlines()
                                           if line.startswith("straggler ")), None)
        else:
            rows += [RankRow(name, RankStatus(r.rank, "unreachable"), unreachable[name]) for r in hs.ranks]
    return RunStatus(state, rows, {h: unreachable[h] for h in sorted(unreachable)}, time.time(), agents,
                     min(stops) if stops else None, missing, autopsy, straggler)


def missing_detail(host: str) -> str:
    return f"run directory not found on {host}: host reimaged or workdir cleaned"


def log_tail(state: RunState, conns: dict[str, Connection], row: RankRow, lines: int = 10) -> list[str]:
    """The last lines of one rank's log ([] when the host cannot say)."""
    return read_tail(conns[row.host], state.host(row.host).rundir, row.status.rank, lines)
