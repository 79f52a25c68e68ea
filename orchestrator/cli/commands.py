"""What each CLI command does, free of Click: `cli.py` parses options and calls these."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

from orchestrator.launch import execute
from orchestrator.ssh import group
from orchestrator.cli import render
from orchestrator.plan import state as runs_state
from orchestrator.launch.discover import discover
from orchestrator.errors import Detached, DistctlError, ExitCode, HostError, PortTakenError
from orchestrator.plan.facts import HostFacts, clock_warnings
from orchestrator.inventory.model import Inventory, load_inventory, parse_inventory
from orchestrator.run.lifecycle import RankStatus, parse_status, status_script
from orchestrator.plan.model import Plan, Step, StepKind, plan_launch
from orchestrator.launch.preflight import preflight_facts, preflight_port
from orchestrator.launch.artifacts import job_artifacts
from orchestrator.ssh.remote import Connection, resolve_host
from orchestrator.cli.render import plan_json, render_plan
from orchestrator.plan.state import HostState, RunState, save_run
from orchestrator.run.status import RunStatus, log_tail
from orchestrator.run.status import query as query_status
from orchestrator.run.watch import FAILURE_GRACE, RankEvents, raise_for, stop_everywhere, watch_run
from orchestrator.run.links import HostLinks
from orchestrator.run.stragglers import watching
from orchestrator.ssh.stream import follow
from orchestrator.run.target import CheckRequest, LogRequest, Options, Target
from orchestrator.console.ui import Ui
from orchestrator.plan.state import new_run_id
from orchestrator.slurm.target import SlurmCluster, runs_on_slurm
from orchestrator.run.tails import read_tail


def _with_options(inv: Inventory, opts: Options) -> Inventory:
    if not opts.accept_new_host_keys:
        return inv
    return replace(inv, ssh=replace(inv.ssh, accept_new_host_keys=True))


# ------------------------------------------------------------ where a run runs (run/target.py)


def target_for(inv: Inventory) -> Target:
    """Where the inventory's job runs: a Slurm cluster (`slurm:`) or the SSH fleet (`hosts:`)."""
    return SlurmCluster() if inv.slurm else SshFleet()


def target_of(state: RunState) -> Target:
    """Where a recorded run runs."""
    return SlurmCluster() if runs_on_slurm(state) else SshFleet()


def dry_run(inv: Inventory, ui: Ui, resume: bool = False, full: bool = False) -> None:
    """Print the plan from the inventory alone; opens no connection. `full`: every command byte
    for byte (render_plan)."""
    target_for(inv).dry_run(inv, ui, resume, full)


def check(inv: Inventory, opts: Options, ui: Ui, as_json: bool, show_plan: bool = False, full: bool = False,
          net: bool = False, min_gbps: float | None = None, collective: bool = False) -> None:
    """Read-only: connect, discover, preflight; the verdict in a few lines (the plan on request).
    With `net`, then each host's link to rank 0's host (netcheck.py); with `collective` (which
    implies `net`), then an all_reduce over every host (collcheck.py)."""
    inv = _with_options(inv, opts)
    target_for(inv).check(inv, opts, ui, CheckRequest(as_json, show_plan, full, net or collective, min_gbps,
                                                      collective))


def up(inv: Inventory, opts: Options, ui: Ui, detach: bool, resume: bool,
       on_launch: Callable[[RunState], None] | None = None) -> None:
    """`on_launch` (`up --web`) gets the run once every rank is launched."""
    inv = _with_options(inv, opts)
    target_for(inv).up(inv, opts, ui, detach, resume, on_launch)


def _fleet_dry_run(inv: Inventory, ui: Ui, resume: bool, full: bool) -> None:
    run_id = _resumable_run_of(inv.path).run_id if resume else new_run_id(inv.job.run_name)
    plan = plan_launch(inv, run_id, job_artifacts(inv.job), resume=resume)
    ui.out(render_plan(plan, full))


def _resolve(inv: Inventory, opts: Options, ui: Ui, run_id: str, resume: bool = False):
    """Connect, discover and preflight; returns connections, facts and the real plan."""
    ui.info(f"connecting to {len(inv.hosts)} host(s)")
    with ui.host_progress([h.name for h in inv.hosts]):
        conns = group.connect_all(inv.hosts, inv.ssh, opts.fanout)
        try:
            facts, network = discover(inv, conns, opts.fanout)
            preflight_facts(inv, facts)
            preflight_port(inv, conns, network.master_addr, opts.fanout)
            plan = plan_launch(inv, run_id, job_artifacts(inv.job), facts, network, resume)
        except BaseException:
            group.close_all(conns)
            raise
    for line in clock_warnings({h.name: facts[h.name].clock for h in inv.hosts}):
        ui.warn(line)
    return conns, facts, plan


def _fleet_check(inv: Inventory, opts: Options, ui: Ui, request: CheckRequest) -> None:
    from orchestrator.launch import collcheck, netcheck

    as_json, show_plan, full, net, min_gbps = (request.as_json, request.show_plan, request.full, request.net,
                                               request.min_gbps)
    # The plan needs a run id; this one names no run (check starts none).
    conns, facts, plan = _resolve(inv, opts, ui, f"{inv.job.run_name}-<run id>")
    try:
        links = _measure_net(plan, conns, ui) if net else None
        coll = _measure_collective(plan, facts, conns, ui) if request.collective else None
    finally:
        group.close_all(conns)
    rank0 = plan.hosts[0].host.name
    if as_json:
        text = plan_json(plan, facts)
        if links is not None:  # the measurements, added under "net"
            data = json.loads(text)
            data["net"] = [{"host": x.host, "gbps": x.gbps, "rtt_ms": x.rtt_ms, "error": x.error} for x in links]
            if coll is not None:
                data["collective"] = collcheck.as_json(coll)
            text = json.dumps(data, indent=2)
        ui.out(text)
    else:
        for line in render.check_lines(plan, facts, lambda host: resolve_host(host, inv.ssh).describe()):
            ui.out(line)
        for line in netcheck.link_lines(links or [], rank0):
            ui.out(line)
        for line in collcheck.report_lines(coll or []):
            ui.out(f"collective: {line}")
        plan_shown = show_plan or ui.verbose
        if plan_shown:
            ui.out("")
            ui.out(render_plan(plan, full))
    slow = netcheck.slow_links(links or [], rank0, netcheck.MIN_GBPS if min_gbps is None else min_gbps)
    if slow:
        raise DistctlError("slow network: " + "; ".join(slow), ExitCode.PREFLIGHT)
    failed = collcheck.failure(coll or [], plan.master_addr, plan.port, collcheck.TIMEOUT)
    if failed:
        raise DistctlError(failed, ExitCode.PREFLIGHT)
    if not as_json:
        ui.info(render.check_passed(show_plan or ui.verbose))


def _measure_net(plan: Plan, conns: dict[str, Connection], ui: Ui) -> list:
    from orchestrator.launch import netcheck

    if len(plan.hosts) < 2:
        ui.info("network: one host, nothing to measure")
        return []
    ui.info(f"measuring each host's link to {plan.hosts[0].host.name} ({plan.master_addr}:{plan.port}), "
            "one host at a time")
    started = time.monotonic()
    links = netcheck.measure(plan, conns)
    ui.info(f"network measured in {time.monotonic() - started:.1f} s")
    return links


def _measure_collective(plan: Plan, facts: dict[str, HostFacts], conns: dict[str, Connection], ui: Ui) -> list:
    from orchestrator.launch import collcheck

    if len(plan.hosts) < 2:
        ui.info("collective: one host, nothing to measure")
        return []
    lacking = collcheck.torch_missing(plan, facts)
    if lacking:
        raise DistctlError(f"--collective needs torch on every host; none for the job's python on "
                           f"{', '.join(lacking)}", ExitCode.PREFLIGHT)
    ui.info(f"all_reduce of {collcheck.MIB} MiB over {len(plan.hosts)} hosts, one rank each, at "
            f"{plan.master_addr}:{plan.port} (torch on every host)")
    started = time.monotonic()
    outcomes = collcheck.measure(plan, conns)
    ui.info(f"collective measured in {time.monotonic() - started:.1f} s")
    return outcomes


def _fleet_up(inv: Inventory, opts: Options, ui: Ui, detach: bool, resume: bool,
              on_launch: Callable[[RunState], None] | None) -> None:
    ui.hide(inv.secrets)
    run_id = _resumable_run_of(inv.path).run_id if resume else new_run_id(inv.job.run_name)
    _describe_code(inv, ui)
    try:
        conns, facts, plan = _resolve(inv, opts, ui, run_id, resume)
    except DistctlError as exc:
        raise _still_running(inv, exc, resume) from None
    walk = _Walk(inv, opts, ui, plan, conns, facts, detach, on_launch)
    try:
        with walk.progress, walk.stopping_a_half_start():
            for steps in plan.phases():  # the plan orders the steps; `up` walks them
                walk.phase(steps)
    finally:
        group.close_all(conns)


class _Walk:
    """`up` after preflight: each phase of the plan, handed over in order, done by the handler of
    its steps' kind, with what the phases before it found (what each host already had)."""

    def __init__(self, inv: Inventory, opts: Options, ui: Ui, plan: Plan, conns: dict[str, Connection],
                 facts: dict[str, HostFacts], detach: bool, on_launch: Callable[[RunState], None] | None = None):
        self.inv, self.opts, self.ui, self.plan, self.conns, self.facts = inv, opts, ui, plan, conns, facts
        self.detach, self.on_launch = detach, on_launch
        self.progress = ExitStack()  # per-host progress, from the first step to the last push
        self.prepared: dict[str, execute.Prepared] = {}
        self.launching = False  # from the first launch until every rank runs

    def phase(self, steps: Sequence[Step]) -> None:
        handlers: dict[StepKind, Callable[[Sequence[Step]], None]] = {
            StepKind.PREPARE: self._prepare, StepKind.PUSH: self._push, StepKind.SETUP: self._setup,
            StepKind.LAUNCH: self._launch, StepKind.WAIT_PORT: self._wait_port, StepKind.STREAM: self._stream}
        handlers[steps[0].kind](steps)

    def _prepare(self, steps: Sequence[Step]) -> None:
        self.progress.enter_context(self.ui.host_progress([h.name for h in self.inv.hosts]))
        self.prepared = execute.prepare(self.plan, self.conns, self.opts.fanout, steps)

    def _push(self, steps: Sequence[Step]) -> None:
        sent = execute.push(self.plan, self.conns, self.prepared, self.opts.fanout, steps)
        self.progress.close()
        self.ui.info(_pushed(sent, self.prepared, self.plan))

    def _setup(self, steps: Sequence[Step]) -> None:
        self.ui.info("running job.setup on every host")
        probed = execute.run_setup(self.plan, self.conns, self.opts.fanout, self.ui, steps)
        preflight_facts(self.inv, {n: replace(self.facts[n], python=f.python, torch=f.torch,
                                              torchvision=f.torchvision) for n, f in probed.items()},
                        after_setup=True)

    def _launch(self, steps: Sequence[Step]) -> None:
        if not self.launching:  # the plan is the run: save_run records its RunState part
            save_run(self.plan)
            self.launching = True
        execute.launch(self.conns, steps, self.opts.fanout)

    def _wait_port(self, steps: Sequence[Step]) -> None:
        for wait in steps:
            self.ui.detail(f"{wait.host}: rank 0 started; waiting for {self.plan.master_addr}:{self.plan.port}")
            execute.wait_port(self.plan, self.conns, wait)

    @contextmanager
    def stopping_a_half_start(self) -> Iterator[None]:
        """From the first launch until every rank runs, what fails or is interrupted stops what
        had started, on every host."""
        state = self.plan
        try:
            yield
        except DistctlError as exc:
            if not self.launching:
                raise
            runs_state.note_state(state.run_id, "failed")
            raise _launch_failed(exc, state, self.conns) from None
        except KeyboardInterrupt:
            if not self.launching:
                raise
            # Half a run is worse than none: rank 0 alone would hold the port for its whole
            # rendezvous timeout. The launches already under way have finished by now.
            stop_everywhere(state, self.conns, FAILURE_GRACE)
            runs_state.note_state(state.run_id, "stopped")
            self.ui.info(render.up_start_interrupted(state.run_id))
            raise Detached("interrupted") from None

    def _stream(self, steps: Sequence[Step]) -> None:
        """Every rank runs: follow them to the end (the STREAM steps' commands), or return detached."""
        state, ui = self.plan, self.ui
        self.launching = False
        ui.info(render.up_started(state))
        if self.on_launch:
            self.on_launch(state)
        if self.detach:
            _verify_started(state, self.conns, self.opts.fanout)
            _report_detached(state)
            return
        try:
            with watching(state, self.conns, ui, self.opts.straggler_watch, self.opts.fanout):
                outcome = watch_run(state, self.conns, ui, state.join_timeout, after_prepare=True)
        except KeyboardInterrupt:
            ui.info(render.up_watch_interrupted(state.run_id))
            raise Detached("detached") from None
        ended = {ExitCode.OK: "finished", ExitCode.STOPPED: "stopped"}.get(outcome.code, "failed")
        runs_state.note_state(state.run_id, ended, keep=("stopped",))  # `distctl stop` from another shell ended it
        raise_for(outcome)
        ui.info(outcome.message)


def _pushed(sent: int, prepared: dict[str, execute.Prepared], plan: Plan) -> str:
    """`pushed 61.4 kB to 2 host(s) (tar streams)`: what went over the wire, in the units of
    `pushing code: ...` (which counts the files' bytes, once)."""
    if sent == 0:
        return "pushed 0 bytes (every host was up to date)"
    from orchestrator.launch.artifacts import format_bytes

    hosts = sum(1 for p in prepared.values() if len(p.present) < len(plan.artifacts))
    return f"pushed {format_bytes(sent)} to {hosts} host(s) (tar streams, headers and padding included)"


def _describe_code(inv: Inventory, ui: Ui) -> None:
    """How much of job.code goes to each host, and a warning when that is a lot."""
    if not inv.job.code:
        return
    from orchestrator.launch.artifacts import code_summary, format_summary, size_warning

    summary = code_summary(Path(inv.job.code))
    ui.info(format_summary(summary))
    warning = size_warning(summary)
    if warning:
        ui.warn(warning)


def _launch_failed(exc: DistctlError, state: RunState, conns: dict[str, Connection]) -> DistctlError:
    """Stop whatever did start, and show why rank 0 did not come up."""
    stop_everywhere(state, conns, FAILURE_GRACE)
    first = state.hosts[0]
    shown = "".join(f"\n    {line}" for line in read_tail(conns[first.host.name], first.rundir, 0))
    return DistctlError(f"{exc}; the run was stopped on every host."
                        + (f" Last lines of rank 0's log:{shown}" if shown else ""), exc.exit_code)


def _verify_started(state: RunState, conns: dict[str, Connection], fanout: int) -> None:
    """Detached `up` returns only once every rank runs (or already finished cleanly)."""
    def one(hs: HostState) -> list[RankStatus]:
        return parse_status(conns[hs.host.name].run(status_script(hs.rundir, [r.rank for r in hs.ranks]),
                                                    timeout=30).stdout)

    found = group.fan_out("verify", state.hosts, one, fanout, lambda hs: hs.host.name).raise_for("verify")
    for host, ranks in found.items():
        for s in ranks:
            if s.state not in ("running", "exited") or (s.state == "exited" and s.code != 0):
                raise DistctlError(f"rank {s.rank} on {host} is {s.state}"
                                   f"{f' with code {s.code}' if s.code is not None else ''} right after launch; "
                                   f"see: distctl logs --rank {s.rank}", ExitCode.RUN_FAILED)


def _report_detached(state: RunState) -> None:
    from click import echo

    # Not ui.info: this shows even under -q (it names the run `up -d` leaves running).
    echo(f"distctl: {render.up_detached(state.run_id)}", err=True)


def _resumable_run_of(path: str) -> RunState:
    run = runs_state.last_run_of(path, doing="to resume")
    if run.last_state == "finished":
        raise DistctlError(f"run {run.run_id} of {path} finished: nothing to resume "
                           f"(start a new run: distctl up {path})", ExitCode.BAD_INPUT)
    return run


def _still_running(inv: Inventory, exc: DistctlError, resume: bool) -> DistctlError:
    """A taken port while this inventory's last run is recorded as running: say which run holds it."""
    if resume or not isinstance(exc, PortTakenError):
        return exc
    try:
        last = runs_state.last_run_of(inv.path)
    except DistctlError:
        return exc
    if last.last_state not in ("started", "running"):
        return exc
    return DistctlError(f"run {last.run_id} of {inv.path} may still be running (its port {last.port} is taken). "
                        f"See: distctl status {last.run_id}   Stop it: distctl stop {last.run_id}   "
                        "Or run another one alongside: set another job.port", exc.exit_code)


# ------------------------------------------------------------ after launch


def find_run(target: str | None) -> RunState:
    """`target` is a run id, an inventory file (its last run), or None (the last run here)."""
    if target and Path(target).is_file():
        return runs_state.last_run_of(target)
    return runs_state.run_by_id(target) if target else runs_state.last_run_here()


def runs(inventory: str | None, ui: Ui, as_json: bool) -> None:
    """List recorded runs, newest last; read locally, connects to nothing."""
    records = runs_state.list_runs(inventory)
    if as_json:
        ui.out(render.runs_json(records))
        return
    if not records:
        ui.info(f"no runs{f' of {inventory}' if inventory else ''} recorded in {runs_state.state_dir() / 'runs'}")
        return
    if ui.interactive:
        ui.table("runs", render.RUNS_COLUMNS, render.runs_rows(records))
    else:
        ui.out(render.runs_text(records))


def _connect_reachable(state: RunState, opts: Options) -> tuple[dict[str, Connection], dict[str, str]]:
    """Connect to every host of a run; unreachable hosts are reported (host -> cause), not fatal."""
    connected = group.connect_each([h.host for h in state.hosts], state.ssh, opts.fanout)
    return connected.ok, {name: e.cause for name, e in connected.failed.items()}


def status(target: str | None, opts: Options, ui: Ui, as_json: bool) -> None:
    """Each rank's state and last epoch, every host asked at once; then how the run ended, when it
    did. Unreachable hosts are named in the table, and make the exit code UNREACHABLE."""
    state = find_run(target)
    target_of(state).status(state, opts, ui, as_json)


def _fleet_status(state: RunState, opts: Options, ui: Ui, as_json: bool) -> None:
    conns, down = _connect_reachable(state, opts)
    try:
        found = query_status(state, conns, down, opts.fanout)
        first = found.failed_first()
        failure = {"host": first.host, "rank": first.status.rank, "exit_code": first.status.code,
                   "log_tail": log_tail(state, conns, first)} if first and found.summary != "hung" else None
        hung = _hang_lines(state, conns, found, opts.fanout)
        found = found.analysed(conns, opts.fanout)
    finally:
        group.close_all(conns)
    if found.summary:
        runs_state.note_state(state.run_id, found.summary)
    if as_json:
        ui.out(render.status_json(found, failure))
    else:
        _show_status(found, failure, ui)
        for line in hung:
            ui.out(ui.shown(line))
    _exit_for_status(found)


def _hang_lines(state: RunState, conns: dict, found: RunStatus, fanout: int) -> list[str]:
    """A hung run (job.hang_timeout): why, and the roll-call of the stacks the agents took."""
    if found.summary != "hung":
        return []
    from orchestrator.run.stacks import hang_report

    why = next(str(a["outcome"]) for a in found.agents if str(a.get("outcome") or "").startswith("hung"))
    try:
        return [why] + hang_report(state, conns, fanout)
    except HostError:
        return [why]


def _exit_for_status(found: RunStatus) -> None:
    """0 while running and once finished or stopped; else what is wrong, the worst first."""
    run_id = found.state.run_id
    if found.unreachable:
        raise DistctlError(f"status of run {run_id} is incomplete: {', '.join(found.unreachable)} "
                           f"could not be reached", ExitCode.UNREACHABLE)
    if found.missing:
        raise DistctlError(f"status of run {run_id} is incomplete: run directory not found on "
                           f"{', '.join(found.missing)}", ExitCode.PARTIAL)
    if found.summary == "failed":
        raise DistctlError(f"run {run_id} failed", ExitCode.RUN_FAILED)
    if found.summary == "hung":
        raise DistctlError(f"run {run_id} is hung", ExitCode.HUNG)


def _show_status(found: RunStatus, failure: dict | None, ui: Ui) -> None:
    if ui.interactive:
        ui.table(render.status_header(found), render.STATUS_COLUMNS, render.status_rows(found))
    else:
        for line in render.status_lines(found, ui.prefix):
            ui.out(line)
    for line in render.status_restarts(found) + render.status_outcome(found, failure, ui.shown):
        ui.out(line)
    for line in render.status_straggler(found):  # kept by the straggler watch of up / logs -f
        ui.out(ui.shown(line))
    if found.autopsy:  # kept by the attached up that saw the failure, or made now (autopsy.py)
        ui.out("culprit and collateral, as up saw them:" if found.autopsy_by == "up" else
               "culprit and collateral, from the hosts' records:")
        for line in found.autopsy:
            ui.out(f"  {ui.shown(line)}")


def stop(target: str | None, opts: Options, ui: Ui, grace: float) -> None:
    state = find_run(target)
    target_of(state).stop(state, opts, ui, grace)


def _fleet_stop(state: RunState, opts: Options, ui: Ui, grace: float) -> None:
    conns, down = _connect_reachable(state, opts)
    try:
        problems = stop_everywhere(state, conns, grace, opts.fanout, requested=True)
    finally:
        group.close_all(conns)
    problems.update({h: f"unreachable: {cause}" for h, cause in down.items()})
    for line in render.stop_lines(state, problems):
        ui.info(line)
    if problems:
        raise DistctlError(f"stop of {state.run_id} incomplete on {', '.join(sorted(problems))}",
                           ExitCode.STOP_INCOMPLETE)
    runs_state.note_state(state.run_id, "stopped")
    ui.info(render.stop_done(state.run_id))


def _hide_secrets_of(state: RunState, ui: Ui) -> None:
    """Secrets are not stored with the run: take them from its inventory, when readable."""
    try:
        ui.hide(load_inventory(state.inventory).secrets)
    except DistctlError:
        pass


def logs(target: str | None, opts: Options, ui: Ui, follow_live: bool, host: str | None, rank: int | None,
         tail: int | None, grep: str | None = None, collapse: bool = False) -> None:
    state = find_run(target)
    _hide_secrets_of(state, ui)
    target_of(state).logs(state, opts, ui, LogRequest(follow_live, host, rank, tail, grep, collapse))


def _fleet_logs(state: RunState, opts: Options, ui: Ui, request: LogRequest) -> None:
    follow_live, host, rank, tail, grep, collapse = (request.follow, request.host, request.rank, request.tail,
                                                     request.grep, request.collapse)
    _check_regex(grep)
    wanted = _ranks_of(state, host, rank)
    hosts = [h.host for h in state.hosts if any(r.rank in wanted for r in h.ranks)]
    connected = group.connect_each(hosts, state.ssh, opts.fanout)
    conns, down = connected.ok, {name: e.cause for name, e in connected.failed.items()}
    for name, cause in down.items():  # show what can be reached; say what cannot
        ui.warn(f"{name}: unreachable, its ranks' logs are not shown: {cause}")
    reached = {r.rank for hs in state.hosts if hs.host.name not in down for r in hs.ranks} & wanted
    links = HostLinks(state, conns, ui, state.ssh.reconnect_timeout, ranks=reached, grep=grep)
    events, tick, finish = _log_printer(ui, reached, collapse, follow_live)
    followers: list = []
    try:
        followers = links.open_all(follow_live, tail)
        # The straggler watch needs every rank: not with --host/--rank, nor with a host down.
        every_rank = follow_live and reached == {r.rank for hs in state.hosts for r in hs.ranks}
        with watching(state, conns, ui, opts.straggler_watch and every_rank, opts.fanout):
            # Replaying (no -f) reads what is there: a dropped link is only healed while following.
            follow(followers, lambda f, text: links.line(f, text, events.line), tick=tick,
                   links=links if follow_live else None)
        finish()
    except KeyboardInterrupt:
        finish()
        ui.info(f"stopped following; run {state.run_id} goes on")
        raise Detached("interrupted") from None
    finally:
        links.stop()
        for f in followers:
            f.stream.close()
        group.close_all(conns)
    for name in sorted(links.missing):
        ui.warn(f"{name}: run directory not found on {name} ({state.host(name).rundir}): "
                "host reimaged or workdir cleaned; its ranks' logs are gone")
    if links.unreachable or down or links.missing:
        lost = sorted(set(links.unreachable) | set(down))
        why = ([f"{', '.join(lost)} (unreachable)"] if lost else []) + (
            [f"{', '.join(sorted(links.missing))} (run directory not found)"] if links.missing else [])
        raise DistctlError(f"logs of {'; '.join(why)} could not be shown", ExitCode.PARTIAL)


def _check_regex(grep: str | None) -> None:
    import re

    if grep is None:
        return
    try:
        re.compile(grep)
    except re.error as exc:
        raise DistctlError(f"--grep {grep!r} is not a valid Python regex: {exc}", ExitCode.BAD_INPUT) from None


def _log_printer(ui: Ui, ranks: set[int], collapse: bool, live: bool):
    """How `logs` prints: each line with its `[host rN]` prefix, or (--collapse) alike lines
    once with their rank ranges. Returns the line handler, the periodic tick and the end."""
    if not collapse:
        return RankEvents(ui.rank_line, on_partial=ui.partial_line), None, lambda: None
    from orchestrator.run.collapse import Collapser

    collapser = Collapser(ranks)

    def show(everything: bool = False) -> None:
        for line in collapser.release(time.monotonic(), everything):
            ui.out(ui.shown(line))

    events = RankEvents(lambda host, rank, line: collapser.add(rank, line, time.monotonic()),
                        on_exit=lambda host, rank, code, at: collapser.ended(rank))
    return events, (show if live else None), lambda: show(True)


def _ranks_of(state: RunState, host: str | None, rank: int | None) -> set[int]:
    """The ranks --host/--rank select; none selected is bad input."""
    if host:
        state.host(host)
    wanted = {r.rank for hs in state.hosts for r in hs.ranks
              if (host is None or hs.host.name == host) and (rank is None or r.rank == rank)}
    if not wanted:
        raise DistctlError(f"no rank {rank}{f' on {host}' if host else ''} in run {state.run_id}", ExitCode.BAD_INPUT)
    return wanted


def stacks(target: str | None, opts: Options, ui, host: str | None, rank: int | None, native: bool,
           as_json: bool, samples: int = 1, every: float = 0.1) -> None:
    """Every selected rank's Python stacks, grouped, the roll-call first; saved on the hosts."""
    from orchestrator.run import stacks as dumps

    state = find_run(target)
    wanted = _ranks_of(state, host, rank)
    stamp = dumps.new_stamp()
    found, notes, down = dumps.take(state, wanted, stamp, native, opts.fanout, samples, every)
    if as_json:
        ui.out(dumps.render_json(state.run_id, stamp, found, notes, down))
    else:
        for line in dumps.render_text(found, notes, dumps.saved_line(state.run_id, stamp)):
            ui.out(ui.masked(line))
    missing = [d for d in found if d.main is None]
    if missing:
        raise DistctlError(f"{len(missing)} of {len(found)} rank(s) could not be dumped: "
                           + "; ".join(f"rank {d.rank} on {d.host}: {d.error}" for d in missing), ExitCode.PARTIAL)


def load(path: str, overrides: tuple[str, ...] = ()) -> Inventory:
    return load_inventory(path, overrides=overrides)


def load_job(path: str, overrides: tuple[str, ...], args: tuple[str, ...], only: tuple[str, ...],
             exclude: tuple[str, ...], resume: bool = False, ui: Ui | None = None) -> Inventory:
    """The inventory as this run runs it (effective.py); a resume's from its run's record, its
    differences from the file now said first."""
    from orchestrator.plan.effective import effective, resumed

    if not resume:
        return effective(load(path, overrides), args, only, exclude)
    inv, lines = resumed(_resumable_run_of(path), lambda sets: load(path, sets), overrides, args, only, exclude)
    for line in lines:
        if ui is not None:
            ui.info(line)
    return inv


def init(hosts: tuple[str, ...], hostfile: str | None, defaults, output: str, force: bool, ui: Ui) -> None:
    from orchestrator.inventory.init import host_entries, parse_hostfile, render_inventory

    if bool(hosts) == bool(hostfile):
        raise DistctlError("give host names or --hostfile (one of the two)", ExitCode.BAD_INPUT)
    entries = parse_hostfile(Path(hostfile).read_text(), hostfile) if hostfile else host_entries(hosts)
    path = Path(output)
    if path.exists() and not force:
        raise DistctlError(f"{output} exists; use --force to overwrite it", ExitCode.BAD_INPUT)
    if defaults.code:  # job.code is read relative to the inventory's folder
        defaults = replace(defaults, code=os.path.relpath(os.path.abspath(defaults.code),
                                                          os.path.dirname(os.path.abspath(output))))
    text = render_inventory(entries, defaults)
    written = parse_inventory(text, output, check_files=False)  # what we write must load
    for key in sorted({h.identity_file for h in written.hosts if h.identity_file}):
        if not os.path.isfile(os.path.expanduser(key)):
            ui.warn(f"identity_file {key} does not exist yet; create it before 'distctl check'")
    path.write_text(text)
    ui.info(f"wrote {output} ({len(entries)} host(s)); next: distctl check {output}")


def exec_command(inv: Inventory, argv: tuple[str, ...], hosts: tuple[str, ...], opts: Options, ui: Ui,
                 grouped: bool = False) -> None:
    from orchestrator.run.adhoc import exec_everywhere

    inv = _with_options(inv, opts)
    ui.hide(inv.secrets)
    exec_everywhere(inv, argv, hosts, opts.fanout, ui, grouped)


def pull(target: str | None, opts: Options, ui: Ui, dest: str) -> None:
    from orchestrator.results.pull import pull_run

    from orchestrator.results.ckptinfo import describe_checkpoint
    from orchestrator.results.outputs import format_report, pull_outputs

    state = find_run(target)
    conns, down = _connect_reachable(state, opts)
    if len(down) == len(state.hosts):
        raise DistctlError(f"no host of run {state.run_id} could be reached: "
                           + "; ".join(f"{h}: {c}" for h, c in down.items()), ExitCode.UNREACHABLE)
    for name, cause in down.items():
        ui.warn(f"{name}: unreachable, nothing pulled from it: {cause}")
    reachable = replace(state, hosts=tuple(hs for hs in state.hosts if hs.host.name in conns))
    try:
        out, written, own = pull_run(state, conns, Path(dest) / "runs", ui)
        report = pull_outputs(reachable, conns, list(state.outputs), Path(dest) / "runs") if state.outputs else None
    finally:
        group.close_all(conns)
    ui.info(render.pull_done(state.run_id, out, written))
    label = describe_checkpoint(out / "model.pt") if "model.pt" in written else None
    if label:
        ui.info(render.pull_checkpoint(label))
    if report is not None:
        for line in format_report(report):
            ui.info(line)
    problems = [f"{h}: {m}" for h, m in own.errors + (report.errors if report else [])]
    problems += [f"{h}: unreachable" for h in down]
    if problems:
        raise DistctlError("pull incomplete: " + "; ".join(problems), ExitCode.PARTIAL)


class SshFleet:
    """`Target` for the inventory's `hosts:`: the SSH code of this package and its lower layers."""

    dry_run = staticmethod(_fleet_dry_run)
    check = staticmethod(_fleet_check)
    up = staticmethod(_fleet_up)
    status = staticmethod(_fleet_status)
    stop = staticmethod(_fleet_stop)
    logs = staticmethod(_fleet_logs)
