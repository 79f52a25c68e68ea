"""Executing a plan's steps after preflight: prepare each run directory, push what a host
lacks, run job.setup, launch the ranks in the plan's order and wait for rank 0's port. Each
step runs on every host in parallel through `group.fan_out`."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.plan import facts as facts_mod
from orchestrator import shell
from orchestrator.errors import DistctlError, ExitCode, HostError
from orchestrator.plan.facts import HostFacts
from orchestrator.ssh.group import check, fan_out
from orchestrator.plan.model import Plan, Step, StepKind
from orchestrator.launch.packing import tar_of
from orchestrator.ssh.remote import Connection
from orchestrator.plan.scripts import PROBE_MARK
from orchestrator.run.stream import Followed


@dataclass(frozen=True)
class Prepared:
    present: frozenset[str]  # artifact names the host already has


def prepare(plan: Plan, conns: dict[str, Connection], fanout: int) -> dict[str, Prepared]:
    def one(step) -> Prepared:
        hp = plan.host_plan(step.host)
        out = check(conns[step.host], step.command, "prepare", stdin=shell.env_file(hp.env).encode(),
                    exit_code=ExitCode.REMOTE_STEP).stdout
        have = {line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("have ")}
        present = frozenset(a.name for a in plan.artifacts if a.remote_dir(hp.workdir) in have)
        return Prepared(present)

    steps = [s for s in plan.steps if s.kind is StepKind.PREPARE]
    return fan_out("prepare", steps, one, fanout, lambda s: s.host).raise_for("prepare")


def push(plan: Plan, conns: dict[str, Connection], prepared: dict[str, Prepared], fanout: int) -> int:
    """Send each artifact a host lacks; returns the bytes sent (0 when all are current)."""
    steps = [s for s in plan.steps if s.kind is StepKind.PUSH and s.artifact not in prepared[s.host].present]
    artifacts = {a.name: a for a in plan.artifacts}

    def one(step) -> int:
        data = tar_of(artifacts[step.artifact])
        check(conns[step.host], step.command, f"push of {step.artifact}", stdin=data, timeout=3600,
              exit_code=ExitCode.REMOTE_STEP)
        return len(data)

    sent = fan_out("push", steps, one, fanout, lambda s: f"{s.host}/{s.artifact}").raise_for("push")
    return sum(sent.values())


def launch(plan: Plan, conns: dict[str, Connection], fanout: int, ui) -> None:
    """The plan's launch phases in order, each phase's steps at once: a port wait (rank 0 first,
    by default) holds the phases after it back until rank 0 listens."""
    kinds = (StepKind.LAUNCH, StepKind.WAIT_PORT)
    for phase in sorted({s.phase for s in plan.steps if s.kind in kinds}):
        steps = [s for s in plan.steps if s.phase == phase]
        waits = [s for s in steps if s.kind is StepKind.WAIT_PORT]
        for wait in waits:
            ui.detail(f"{wait.host}: rank 0 started; waiting for {plan.master_addr}:{plan.port}")
            wait_port(plan, conns, wait)
        fan_out("launch", [s for s in steps if s.kind is StepKind.LAUNCH],
                lambda s: check(conns[s.host], s.command, "launch", exit_code=ExitCode.REMOTE_STEP),
                fanout, lambda s: s.host).raise_for("launch")


def wait_port(plan: Plan, conns: dict[str, Connection], wait: Step) -> None:
    """Rank 0's host polls its rendezvous port until it listens; its exit or a timeout raises."""
    result = conns[wait.host].run(wait.command, timeout=plan.join_timeout + 30)
    if result.exit_code == 0:
        return
    what = result.stdout.strip() or result.stderr.strip()
    where = f"{plan.master_addr}:{plan.port}"
    code = rank0_exit(plan, conns[wait.host]) if what == "exited" else None
    if code is not None and code != 0:  # it failed: its own error says why, not the rendezvous
        raise DistctlError(f"rank 0 on {wait.host} failed first: exited with code {code}"
                           f"{f' (signal {code - 128})' if code > 128 else ''} before it opened {where}",
                           ExitCode.RUN_FAILED)
    why = {"exited": "it exited first" + (" with code 0" if code == 0 else ""),
           "timeout": f"not within job.join_timeout={plan.join_timeout:g}s"}
    hint = "" if plan.trainer else (" (a program that brings its own rendezvous, or opens the port late: "
                                    "set job.wait_for_rank0: false)")
    raise HostError(wait.host, f"rank 0 did not open {where}: {why.get(what, what)}" + hint,
                    ExitCode.RUN_FAILED if what == "exited" else ExitCode.HANG)


def rank0_exit(plan: Plan, conn: Connection) -> int | None:
    """Rank 0's exit code, once its wrapper wrote it (None: not there, or unreadable)."""
    try:
        out = conn.run(f"cat {shell.join([plan.hosts[0].rundir + '/rank0.exit'])} 2>/dev/null", timeout=30).stdout
    except HostError:
        return None
    text = out.strip()
    return int(text) if text.lstrip("-").isdigit() else None


def run_setup(plan: Plan, conns: dict[str, Connection], fanout: int, ui) -> dict[str, HostFacts]:
    """job.setup on every host at once, its output streamed with the host's prefix; then what the
    host's python (maybe in the venv setup made) has. A failure on any host raises SETUP_FAILED."""
    def one(step: Step) -> HostFacts:
        followed = Followed(step.host, conns[step.host].open_stream(step.command))
        tail: list[str] = []
        probe: list[str] = []
        try:
            while True:
                data = followed.stream.read()
                for line in followed.feed(data):
                    if probe or line == PROBE_MARK:
                        probe.append(line)
                    else:
                        ui.setup_line(step.host, line)
                        tail = (tail + [line])[-10:]
                if not data:
                    break
            code = followed.stream.exit_code()
        finally:
            followed.stream.close()
        if code != 0:
            shown = "".join(f"\n    {line}" for line in tail)
            raise HostError(step.host, f"job.setup exited with code {code}; nothing was launched anywhere. "
                            f"Last lines:{shown}", ExitCode.SETUP_FAILED)
        return facts_mod.parse_facts("\n".join(probe[1:]))

    steps = [s for s in plan.steps if s.kind is StepKind.SETUP]
    return fan_out("setup", steps, one, fanout, lambda s: s.host).raise_for("setup")
