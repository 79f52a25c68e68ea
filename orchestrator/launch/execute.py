"""Executing a plan's phases after preflight: prepare each run directory, push what a host
lacks, run job.setup, launch ranks, wait for rank 0's port. `up` walks the plan's phases in
order and hands each to one of these; a phase's steps run on their hosts at once through
`group.fan_out`."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.plan import facts as facts_mod
from orchestrator import shell
from orchestrator.errors import DistctlError, ExitCode, HostError
from orchestrator.plan.facts import HostFacts
from orchestrator.ssh.group import check, fan_out
from orchestrator.hostside.agent import KEY_LINE as AGENT_KEY_LINE
from orchestrator.plan.model import Plan, Step, StepKind
from orchestrator.launch.artifacts import tar_of
from orchestrator.ssh.remote import Connection
from orchestrator.plan.scripts import PROBE_MARK
from orchestrator.ssh.stream import Followed

if TYPE_CHECKING:
    from orchestrator.console.ui import Ui


@dataclass(frozen=True)
class Prepared:
    present: frozenset[str]  # artifact names the host already has


def prepare(plan: Plan, conns: dict[str, Connection], fanout: int,
            steps: Sequence[Step] | None = None) -> dict[str, Prepared]:
    """The PREPARE phase (`steps`; by default the plan's): what each host already has."""
    # With restart agents, the run's secret for their channel (hostside/agent.py): made here, sent
    # only inside the env file over SSH (0600 in the 0700 run directory), never recorded or shown.
    key = f"{AGENT_KEY_LINE}{secrets.token_hex(32)}\n" if plan.coordinated else ""

    def one(step: Step) -> Prepared:
        hp = plan.host_plan(step.host)
        out = check(conns[step.host], step.command, "prepare", stdin=(shell.env_file(hp.env) + key).encode(),
                    exit_code=ExitCode.REMOTE_STEP).stdout
        have = {line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("have ")}
        present = frozenset(a.name for a in plan.artifacts if a.remote_dir(hp.workdir) in have)
        return Prepared(present)

    steps = _of_kind(plan, StepKind.PREPARE) if steps is None else steps
    return fan_out("prepare", steps, one, fanout, lambda s: s.host).raise_for("prepare")


def _of_kind(plan: Plan, kind: StepKind) -> list[Step]:
    return [s for s in plan.steps if s.kind is kind]


def push(plan: Plan, conns: dict[str, Connection], prepared: dict[str, Prepared], fanout: int,
         steps: Sequence[Step] | None = None) -> int:
    """The PUSH phase (`steps`; by default the plan's): each artifact a host lacks; returns the
    bytes sent (0 when all are current)."""
    steps = [s for s in (_of_kind(plan, StepKind.PUSH) if steps is None else steps)
             if s.artifact not in prepared[s.host].present]
    artifacts = {a.name: a for a in plan.artifacts}

    def one(step: Step) -> int:
        data = tar_of(artifacts[step.artifact or ""])  # a PUSH step names its artifact
        check(conns[step.host], step.command, f"push of {step.artifact}", stdin=data, timeout=3600,
              exit_code=ExitCode.REMOTE_STEP)
        return len(data)

    sent = fan_out("push", steps, one, fanout, lambda s: f"{s.host}/{s.artifact}").raise_for("push")
    return sum(sent.values())


def launch(conns: dict[str, Connection], steps: Sequence[Step], fanout: int) -> None:
    """One LAUNCH phase: its hosts start their ranks at once."""
    fan_out("launch", steps, lambda s: check(conns[s.host], s.command, "launch", exit_code=ExitCode.REMOTE_STEP),
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


def run_setup(plan: Plan, conns: dict[str, Connection], fanout: int, ui: Ui,
              steps: Sequence[Step] | None = None) -> dict[str, HostFacts]:
    """The SETUP phase (`steps`; by default the plan's): job.setup on every host at once, its
    output streamed with the host's prefix; then what the host's python (maybe in the venv setup
    made) has. A failure on any host raises SETUP_FAILED."""
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

    steps = _of_kind(plan, StepKind.SETUP) if steps is None else steps
    return fan_out("setup", steps, one, fanout, lambda s: s.host).raise_for("setup")
