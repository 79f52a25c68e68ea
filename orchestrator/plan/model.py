"""The launch plan: inventory + discovered facts → a frozen `Plan` of steps.

`up --dry-run` renders this object; `up` walks it, phase by phase (a phase's steps
run on their hosts at once). Values only discovery can supply (rank 0's address,
interfaces, home directories) are named placeholders when `plan_launch` gets no
facts. Steps with a `when` run only if that happens at run time (a lost link, a
failed rank), their run-time values filled in then. A Plan is a `state.RunState`:
`up` records it, and every later command reads that record back.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from dataclasses import dataclass, field, replace
from enum import Enum

from orchestrator import shell
from orchestrator import timers
from orchestrator.hostside import program
from orchestrator.contract import PEER_LOST, RUN_MARKER, TRAINER_FINAL
from orchestrator.plan.scripts import (FROM_PREPARE, follow_script, launch_script, prepare_script, push_script,
                                  refollow_script, restart_script, setup_script, wait_port_script)
from orchestrator.plan.facts import HostFacts
from orchestrator.inventory.model import EnvVar, Host, Inventory
from orchestrator.plan.state import HostState, RankState, RunState



class StepKind(str, Enum):
    PREPARE = "prepare"  # run dir + env file; reports which artifacts are already there
    PUSH = "push"  # a tar stream of one artifact, skipped when the host has it
    SETUP = "setup"  # job.setup, skipped on the host when it last succeeded for this code
    LAUNCH = "launch"  # start the host's ranks, detached
    WAIT_PORT = "wait-port"  # rank 0's rendezvous port is listening
    STREAM = "stream"  # follow one rank's log
    # Run-time decisions: steps with a `when`, run only if it happens, placeholders filled then.
    REFOLLOW = "refollow"  # the link to a host dropped: follow again from the lines shown (links.py)
    RESTART = "restart"  # a rank failed, restarts are left: the host's agent starts the next attempt


@dataclass(frozen=True)
class Artifact:
    """A content-addressed tree pushed to every host (the trainer code, the data)."""

    name: str  # "code" | "data"
    digest: str
    local_path: str
    prefix: str = "."  # the folder's name inside the tar ("trainer" for the bundled trainer)
    walk: str = "code"  # which files go (launch/artifacts.py): "code" as git would, "tree" all of it

    def remote_dir(self, workdir: str) -> str:
        return f"{workdir}/{self.name}/{self.digest[:16]}"


@dataclass(frozen=True)
class Network:
    """What discovery decided: the address every rank dials and each host's interface."""

    master_addr: str
    ifaces: dict[str, str] = field(hash=False)  # host name -> interface toward rank 0


@dataclass(frozen=True)
class Step:
    kind: StepKind
    host: str
    command: str
    stdin: str = ""  # shown masked; the runner sends the real bytes
    artifact: str | None = None
    when: str = ""  # a run-time condition: the step runs only if it happens ("": always, in order)
    phase: int = 0  # steps of one phase run at once, phases one after another (0: a `when` step)


@dataclass(frozen=True, kw_only=True)
class RankPlan(RankState):
    argv: tuple[str, ...]  # the program, the same on every rank
    env: tuple[EnvVar, ...] = ()  # RANK, LOCAL_RANK, ROLE_RANK: set by the rank's wrapper


@dataclass(frozen=True, kw_only=True)
class HostPlan(HostState):
    ranks: tuple[RankPlan, ...]
    workdir: str
    iface: str
    env: tuple[EnvVar, ...]
    code_dir: str = ""  # the pushed code, content-addressed and shared by runs: never written to
    setup_dir: str | None = None  # where job.setup ran (its venv lives there)


@dataclass(frozen=True, kw_only=True)
class Plan(RunState):
    """The run (state.RunState, what `up` records) plus how it is launched: the ordered steps
    `up` executes and `--dry-run` prints."""

    hosts: tuple[HostPlan, ...]
    artifacts: tuple[Artifact, ...]
    steps: tuple[Step, ...]
    join_timeout: float = 300.0
    resume: bool = False
    notes: tuple[str, ...] = ()
    setup: str | None = None

    def phases(self) -> tuple[tuple[Step, ...], ...]:
        """The steps that always run, a phase at a time in order: what `up` walks. A phase's
        steps are of one kind and run on their hosts at once."""
        numbers = dict.fromkeys(s.phase for s in self.steps if s.phase)
        return tuple(tuple(s for s in self.steps if s.phase == n) for n in numbers)

    def host_plan(self, name: str) -> HostPlan:
        return next(h for h in self.hosts if h.host.name == name)

    def refollow(self, hs: HostState) -> str:
        return next(s.command for s in self.steps if s.kind is StepKind.REFOLLOW and s.host == hs.host.name)


def slots_of(host: Host, facts: HostFacts | None) -> int:
    """A host's process count: its `slots`, else one per GPU found, else 1."""
    if host.slots is not None:
        return host.slots
    return max(1, facts.gpus) if facts else 1


def workdir_of(host: Host, facts: HostFacts | None) -> str:
    """The host's workdir with `~` expanded by the host's own $HOME (discovered)."""
    workdir = host.workdir.rstrip("/") or "/"
    if workdir == "~" or workdir.startswith("~/"):
        if facts and facts.home:
            home = facts.home
        else:  # the workstation's own home needs no discovery
            home = os.path.expanduser("~") if host.is_local else f"<home of {host.name}>"
        return home.rstrip("/") + workdir[1:]
    return workdir


def host_env(run_id: str, inv: Inventory, host: Host, iface: str, master: str, world: int,
             group_rank: int, local_world: int, data_dir: str | None, code_dir: str) -> tuple[EnvVar, ...]:
    """What every rank of a host shares: torchrun's contract for a script that calls
    `init_process_group()` (env://), plus distctl's own. The inventory's env (host over job)
    wins over all of it. Per-rank values (RANK, LOCAL_RANK, ROLE_RANK) are on the rank's argv.

    Left out on purpose: TORCHELASTIC_USE_AGENT_STORE (no torchrun agent hosts the store: rank 0
    must), TORCHELASTIC_ERROR_FILE and TORCHELASTIC_SIGNALS_TO_HANDLE (agent-only).
    """
    values = [
        (RUN_MARKER, run_id),
        ("MASTER_ADDR", master),  # an IP, never a hostname: hostnames resolve to 127.0.0.1 in containers
        ("MASTER_PORT", str(inv.job.port)),
        ("WORLD_SIZE", str(world)),
        ("LOCAL_WORLD_SIZE", str(local_world)),
        ("GROUP_RANK", str(group_rank)),
        ("GROUP_WORLD_SIZE", str(len(inv.hosts))),
        ("ROLE_NAME", "default"),
        ("ROLE_WORLD_SIZE", str(world)),
        ("TORCHELASTIC_RUN_ID", run_id),
        ("TORCHELASTIC_RESTART_COUNT", "0"),
        ("TORCHELASTIC_MAX_RESTARTS", str(inv.job.max_restarts)),
        ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),  # torchrun's: a failed NCCL collective ends the rank
        ("PYTHONUNBUFFERED", "1"),  # lines reach the log (and `distctl logs`) as they are printed
        # gloo needs one concrete interface; without it gloo advertises whatever the
        # hostname resolves to, 127.0.0.1 in many containers, and the peers hang.
        ("GLOO_SOCKET_IFNAME", iface),
        ("NCCL_SOCKET_IFNAME", iface),
        ("DISTCTL_CODE", code_dir),
    ]
    if data_dir:
        values.append(("DISTCTL_DATA", data_dir))
    env = {name: EnvVar(name, value) for name, value in values}
    env.update({v.name: v for v in inv.job.env})
    env.update({v.name: v for v in host.env})
    return tuple(env.values())


def rank_env(rank: int, local_rank: int) -> tuple[EnvVar, ...]:
    """What differs between the ranks of one host (exported by each rank's wrapper)."""
    return (EnvVar("RANK", str(rank)), EnvVar("LOCAL_RANK", str(local_rank)), EnvVar("ROLE_RANK", str(rank)))


def trainer_program(inv: Inventory, python: str, data_dir: str, download: bool, checkpoint_dir: str,
                    resume: bool) -> tuple[str, ...]:
    """The bundled trainer, placed by torchrun's environment like any user program."""
    job, train = inv.job, inv.job.train
    argv = [python, "-m", "trainer", "--backend", job.backend, "--epochs", str(train.epochs),
            "--batch-size", str(train.batch_size), "--lr", repr(train.lr), "--seed", str(train.seed),
            "--timeout", str(train.timeout), "--data", data_dir, "--dataset", job.dataset,
            "--fallback", job.fallback, "--checkpoint-dir", checkpoint_dir]
    if download:
        argv.append("--download")
    if resume:
        argv.append("--resume")
    return (*argv, *job.args)


def user_program(command: tuple[str, ...], python: str) -> tuple[str, ...]:
    """A leading `python` means the host's `python` setting."""
    if command[0] in ("python", "python3"):
        return (python, *command[1:])
    return command


def setup_dir_of(inv: Inventory, workdir: str, code: Artifact) -> str | None:
    """One folder per (setup text, code): an unchanged re-up finds it done and skips setup."""
    if not inv.job.setup:
        return None
    key = hashlib.sha256(f"{inv.job.setup}\0{code.digest}".encode()).hexdigest()[:16]
    return f"{workdir}/setup/{key}"


def python_of(host: Host, setup_dir: str | None, run_workdir: str) -> str:
    """`python: .venv/bin/python` (relative, with a slash) names a file in the folder job.setup
    ran in (where it made the venv), else in the run's working directory."""
    python = host.python
    if "/" in python and not python.startswith(("/", "~")):
        base = setup_dir or run_workdir
        return f"{base}/{python.removeprefix('./')}"
    return python


def plan_launch(inv: Inventory, run_id: str, artifacts: tuple[Artifact, ...],
                facts: dict[str, HostFacts] | None = None, network: Network | None = None,
                resume: bool = False) -> Plan:
    """The whole launch as data. Without facts, unknowns become `<... of host>` placeholders."""
    rank0 = inv.hosts[0]
    master = network.master_addr if network else (
        "127.0.0.1" if len(inv.hosts) == 1 else f"<ip of {rank0.name}>")
    slots = [slots_of(h, (facts or {}).get(h.name)) for h in inv.hosts]
    world = sum(slots)
    by_name = {a.name: a for a in artifacts}
    host_plans, next_rank = [], 0
    for group_rank, (host, count) in enumerate(zip(inv.hosts, slots)):
        workdir = workdir_of(host, (facts or {}).get(host.name))
        rundir = f"{workdir}/runs/{run_id}"
        iface = network.ifaces[host.name] if network else (
            "lo" if len(inv.hosts) == 1 else
            f"<iface of {host.name}>" if host is rank0 else f"<iface of {host.name} toward {rank0.name}>")
        code_dir = by_name["code"].remote_dir(workdir)
        setup_dir = setup_dir_of(inv, workdir, by_name["code"])
        python = python_of(host, setup_dir, f"{rundir}/work")
        data_dir = by_name["data"].remote_dir(workdir) if "data" in by_name else None
        if inv.job.is_trainer:
            program = trainer_program(inv, python, data_dir or f"{workdir}/data/downloaded",
                                      download="data" not in by_name and inv.job.dataset == "mnist",
                                      checkpoint_dir=f"{rundir}/ckpt", resume=resume)
        else:
            program = user_program(inv.job.command + inv.job.args, python)
        ranks = tuple(RankPlan(rank=next_rank + i, local_rank=i, argv=program, env=rank_env(next_rank + i, i))
                      for i in range(count))
        env = host_env(run_id, inv, host, iface, master, world, group_rank, count, data_dir, code_dir)
        host_plans.append(HostPlan(host=host, rundir=rundir, ranks=ranks, clock_offset=_clock_offset(facts, host.name),
                                   python=python, workdir=workdir, iface=iface, env=env, code_dir=code_dir,
                                   setup_dir=setup_dir))
        next_rank += count
    notes = tuple(f"{h.name}: slots not set; one rank per GPU found (shown as 1)"
                  for h in inv.hosts if h.slots is None and facts is None)
    notes += tuple(f"--set {o} (on top of {os.path.basename(inv.path)})" for o in inv.overrides)
    return Plan(run_id=run_id, inventory=_inventory_path(inv), ssh=inv.ssh, world_size=world, master_addr=master,
                port=inv.job.port, hosts=tuple(host_plans), trainer=inv.job.is_trainer, outputs=inv.job.outputs,
                max_restarts=inv.job.max_restarts, hang_timeout=inv.job.hang_timeout, overrides=inv.overrides,
                args=inv.job.args,
                command=inv.job.command + inv.job.args, job_kept=True,
                artifacts=artifacts, steps=_steps(host_plans, artifacts, inv, master, run_id),
                join_timeout=inv.job.join_timeout, resume=resume, notes=notes, setup=inv.job.setup)


def _inventory_path(inv: Inventory) -> str:
    return str(Path(inv.path).resolve()) if inv.path else ""


def _clock_offset(facts: dict[str, HostFacts] | None, name: str) -> float | None:
    clock = facts[name].clock if facts and name in facts else None
    return round(clock.offset, 3) if clock else None


HANG_DUMP_TIMEOUT_S = 2.0  # as `distctl stacks` (run/stacks.py): an armed process dumps within milliseconds
RESTART_GRACE_S = 5.0  # a restart gives ranks this long after SIGTERM, then SIGKILL
# The agents' timers, in seconds: a heartbeat this often, a link silent this long is dead, the
# exits of a failure's peers awaited this long before judging it (hostside/agent.py).
AGENT_TIMERS = {"heartbeat": 2.0, "silent": 10.0, "settle": 2.0}
# A watcher (no restarts, no hang timeout) stops its host's other ranks this long after one failed:
# an attached `up` takes their stacks and stops the run everywhere well before (run/watch.py).
WATCHER_TIMERS = {"teardown": 10.0}
# Tests only: JSON that overrides AGENT_TIMERS (and WATCHER_TIMERS) and may add "pause": {host:
# [moment, ...]}, where an agent waits (hostside/agent.py, Agent.pause) so that a test can kill it
# at that moment, and "progress": how often it reads the logs for progress (0: never; a benchmark).
AGENT_TEST_VARIABLE = "DISTCTL_TEST_AGENT"
# The bundled trainer's exit codes distctl decides by (tests/test_contract.py ties them to trainer.errors):


def agent_config(inv: Inventory, run_id: str, host_plans: list[HostPlan], index: int, master: str) -> dict:
    """What hostside/agent.py needs on host `index`: every host's ranks (to renumber them when
    one is dropped), this host's wrappers, the coordinator's address, and the restart rules.
    Without restarts or a hang timeout, only what a watcher of this host's ranks needs ("watch")."""
    hp = host_plans[index]
    job = inv.job
    hosts = [{"name": h.host.name, "ranks": [r.rank for r in h.ranks]} for h in host_plans]
    ranks = [{"rank": r.rank} for r in hp.ranks]
    if not job.coordinated:
        return {"run": run_id, "me": index, "watch": True, "hosts": hosts, "ranks": ranks, "max_restarts": 0,
                "grace": RESTART_GRACE_S, **WATCHER_TIMERS, **_agent_test_overrides(), **_stacks_config(hp)}
    return {
        "run": run_id, "me": index,
        "hosts": hosts, "ranks": ranks,
        "restart": _restart_command(inv, hp),  # the plan's RESTART step for this host, verbatim
        "coord": [master, job.control_port], "master": [master, job.port],
        "max_restarts": job.max_restarts, "min_hosts": job.min_hosts or len(host_plans),
        "lost_after": job.lost_host_timeout, "grace": RESTART_GRACE_S,
        "final_codes": list(TRAINER_FINAL) if job.is_trainer else [],
        "peer_lost": [PEER_LOST] if job.is_trainer else [],
        "wait_port": job.wait_for_rank0,  # rank 0's host first, and its port open, before the others
        **AGENT_TIMERS, **_agent_test_overrides(), **_hang_config(inv, hp),
    }


def _hang_config(inv: Inventory, hp: HostPlan) -> dict:
    """With job.hang_timeout: the timeout, the line that says a rank joined (the trainer's
    `joined`; any program's first output stands for it otherwise), and how to take this host's
    stacks, as `distctl stacks` does, split around the folder name the agent chooses."""
    if inv.job.hang_timeout is None:
        return {}
    return {"hang_timeout": inv.job.hang_timeout, "join_line": "joined " if inv.job.is_trainer else None,
            **_stacks_config(hp)}


def _stacks_config(hp: HostPlan) -> dict:
    """How the agent takes this host's stacks, as `distctl stacks` does, split around the folder
    name it chooses (hostside/agent.py, RunDir.take_stacks)."""
    return {"stacks": [program(hp.python, "stacks", hp.rundir),
                       shell.join([0, HANG_DUMP_TIMEOUT_S, 1, 0.1, *[r.rank for r in hp.ranks]])]}


def _agent_test_overrides() -> dict:
    raw = os.environ.get(AGENT_TEST_VARIABLE)
    if not raw:
        return {}
    given = json.loads(raw)
    return {k: v for k, v in given.items() if k in AGENT_TIMERS or k in WATCHER_TIMERS or k in ("pause", "progress")}


def _restart_command(inv: Inventory, hp: HostPlan) -> str:
    return restart_script(hp.rundir, hp.ranks, hp.python, ["--resume"] if inv.job.is_trainer else [])


def _steps(host_plans: list[HostPlan], artifacts: tuple[Artifact, ...], inv: Inventory,
           master: str, run_id: str) -> tuple[Step, ...]:
    """The launch as phases: each phase's steps run on their hosts at once, phase after phase;
    then the steps that run only when something happens."""
    phases: list[list[Step]] = []
    phases.append([Step(StepKind.PREPARE, hp.host.name,
                        prepare_script(hp.workdir, hp.rundir, [a.remote_dir(hp.workdir) for a in artifacts],
                                       [r.rank for r in hp.ranks], hp.setup_dir),
                        stdin=shell.env_file(hp.env, masked=True)) for hp in host_plans])
    phases.append([Step(StepKind.PUSH, hp.host.name, push_script(a.remote_dir(hp.workdir)), artifact=a.name)
                   for hp in host_plans for a in artifacts])
    phases.append([Step(StepKind.SETUP, hp.host.name, setup_script(hp.setup_dir, hp.code_dir, inv.job.setup,
                                                                    hp.python))
                   for hp in host_plans if hp.setup_dir and inv.job.setup])
    launches = [Step(StepKind.LAUNCH, hp.host.name, launch_script(
                    hp.rundir, hp.ranks, hp.code_dir, hp.python,
                    agent_config(inv, run_id, host_plans, i, master)))
                for i, hp in enumerate(host_plans)]
    first = host_plans[0]
    if inv.job.wait_for_rank0:
        # Rank 0 first: it hosts the rendezvous store on MASTER_PORT (torchrun's env contract
        # makes any torch.distributed program do so), then every other host at once.
        phases += [launches[:1], [Step(StepKind.WAIT_PORT, first.host.name, wait_port_script(
            first.python, first.rundir, master, inv.job.port, 0, inv.job.join_timeout))], launches[1:]]
    else:
        phases.append(launches)
    heartbeat = timers.current().heartbeat  # the default, but in tests (timers.py)
    phases.append([Step(StepKind.STREAM, hp.host.name,
                        follow_script(hp.python, hp.rundir, {r.rank: FROM_PREPARE for r in hp.ranks},
                                      heartbeat=heartbeat))
                   for hp in host_plans])
    steps = [replace(s, phase=number) for number, phase in enumerate((p for p in phases if p), 1) for s in phase]
    steps += [Step(StepKind.REFOLLOW, hp.host.name, refollow_script(hp.python, hp.rundir, heartbeat),
                   when=f"the link to {hp.host.name} drops") for hp in host_plans]
    if inv.job.restarts:
        lost = (f"; a host silent for {inv.job.lost_host_timeout:g}s is dropped, and the others' ranks renumbered, "
                f"while {inv.job.min_hosts or len(host_plans)} host(s) remain")
        steps += [Step(StepKind.RESTART, hp.host.name, _restart_command(inv, hp),
                       when=f"a rank fails and fewer than {inv.job.max_restarts} restart(s) were used{lost}")
                  for hp in host_plans]
    return tuple(steps)
