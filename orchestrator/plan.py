"""The launch plan: inventory + discovered facts → a frozen `Plan` of steps.

`up --dry-run` renders this object; `up` walks it. Values only discovery can
supply (rank 0's address, interfaces, home directories) are named placeholders
when `plan_launch` gets no facts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum

from orchestrator import shell
from orchestrator.scripts import follow_script, launch_script, prepare_script, push_script, wait_port_script
from orchestrator.facts import HostFacts
from orchestrator.inventory import EnvVar, Host, Inventory

RUN_MARKER = "DISTCTL_RUN_ID"  # in every rank's environment; `stop` sweeps /proc for it


class StepKind(str, Enum):
    PREPARE = "prepare"  # run dir + env file; reports which artifacts are already there
    PUSH = "push"  # a tar stream of one artifact, skipped when the host has it
    LAUNCH = "launch"  # start the host's ranks, detached
    WAIT_PORT = "wait-port"  # rank 0's rendezvous port is listening
    STREAM = "stream"  # follow one rank's log


@dataclass(frozen=True)
class Artifact:
    """A content-addressed tree pushed to every host (the trainer code, the data)."""

    name: str  # "code" | "data"
    digest: str
    local_path: str

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


@dataclass(frozen=True)
class RankPlan:
    rank: int
    local_rank: int
    argv: tuple[str, ...]


@dataclass(frozen=True)
class HostPlan:
    host: Host
    workdir: str
    rundir: str
    iface: str
    env: tuple[EnvVar, ...]
    ranks: tuple[RankPlan, ...]


@dataclass(frozen=True)
class Plan:
    run_id: str
    master_addr: str
    port: int
    world_size: int
    hosts: tuple[HostPlan, ...]
    artifacts: tuple[Artifact, ...]
    steps: tuple[Step, ...]
    join_timeout: float = 300.0
    resume: bool = False
    notes: tuple[str, ...] = ()

    def host_plan(self, name: str) -> HostPlan:
        return next(h for h in self.hosts if h.host.name == name)

    @property
    def init_method(self) -> str:
        return f"tcp://{self.master_addr}:{self.port}"


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


def rank_env(plan_run_id: str, inv: Inventory, host: Host, iface: str, code_dir: str) -> tuple[EnvVar, ...]:
    """Every rank's environment; the inventory's env (host over job) wins over ours."""
    env = {v.name: v for v in (
        EnvVar(RUN_MARKER, plan_run_id),
        EnvVar("PYTHONPATH", code_dir),
        EnvVar("PYTHONUNBUFFERED", "1"),
        # gloo needs one concrete interface; without it gloo advertises whatever the
        # hostname resolves to, 127.0.0.1 in many containers, and the peers hang.
        EnvVar("GLOO_SOCKET_IFNAME", iface),
        EnvVar("NCCL_SOCKET_IFNAME", iface),
    )}
    env.update({v.name: v for v in inv.job.env})
    env.update({v.name: v for v in host.env})
    return tuple(env.values())


def trainer_argv(inv: Inventory, python: str, init_method: str, rank: int, local_rank: int,
                 world_size: int, data_dir: str, download: bool, checkpoint_dir: str,
                 resume: bool) -> tuple[str, ...]:
    job, train = inv.job, inv.job.train
    argv = [python, "-m", "trainer", "--init-method", init_method, "--rank", str(rank),
            "--world-size", str(world_size), "--local-rank", str(local_rank),
            "--backend", job.backend, "--epochs", str(train.epochs),
            "--batch-size", str(train.batch_size), "--lr", repr(train.lr), "--seed", str(train.seed),
            "--timeout", str(train.timeout), "--data", data_dir, "--dataset", job.dataset,
            "--fallback", job.fallback, "--checkpoint-dir", checkpoint_dir]
    if download:
        argv.append("--download")
    if resume:
        argv.append("--resume")
    return tuple(argv)


def plan_launch(inv: Inventory, run_id: str, artifacts: tuple[Artifact, ...],
                facts: dict[str, HostFacts] | None = None, network: Network | None = None,
                resume: bool = False) -> Plan:
    """The whole launch as data. Without facts, unknowns become `<... of host>` placeholders."""
    rank0 = inv.hosts[0]
    master = network.master_addr if network else (
        "127.0.0.1" if len(inv.hosts) == 1 else f"<ip of {rank0.name}>")
    slots = [slots_of(h, (facts or {}).get(h.name)) for h in inv.hosts]
    world = sum(slots)
    init_method = f"tcp://{master}:{inv.job.port}"
    by_name = {a.name: a for a in artifacts}
    host_plans, next_rank = [], 0
    for host, count in zip(inv.hosts, slots):
        workdir = workdir_of(host, (facts or {}).get(host.name))
        rundir = f"{workdir}/runs/{run_id}"
        iface = network.ifaces[host.name] if network else (
            "lo" if len(inv.hosts) == 1 else
            f"<iface of {host.name}>" if host is rank0 else f"<iface of {host.name} toward {rank0.name}>")
        code_dir = by_name["code"].remote_dir(workdir)
        data_dir = by_name["data"].remote_dir(workdir) if "data" in by_name else f"{workdir}/data/downloaded"
        ranks = tuple(
            RankPlan(next_rank + i, i, trainer_argv(
                inv, host.python, init_method, next_rank + i, i, world, data_dir,
                download="data" not in by_name and inv.job.dataset == "mnist",
                checkpoint_dir=f"{rundir}/ckpt", resume=resume))
            for i in range(count))
        env = rank_env(run_id, inv, host, iface, code_dir)
        host_plans.append(HostPlan(host, workdir, rundir, iface, env, ranks))
        next_rank += count
    notes = tuple(f"{h.name}: slots not set; one rank per GPU found (shown as 1)"
                  for h in inv.hosts if h.slots is None and facts is None)
    return Plan(run_id, master, inv.job.port, world, tuple(host_plans), artifacts,
                _steps(host_plans, artifacts, inv, master), inv.job.join_timeout, resume, notes)


def _steps(host_plans: list[HostPlan], artifacts: tuple[Artifact, ...], inv: Inventory,
           master: str) -> tuple[Step, ...]:
    steps: list[Step] = []
    for hp in host_plans:
        dirs = [a.remote_dir(hp.workdir) for a in artifacts]
        steps.append(Step(StepKind.PREPARE, hp.host.name, prepare_script(hp.workdir, hp.rundir, dirs),
                          stdin=shell.env_file(hp.env, masked=True)))
        steps += [Step(StepKind.PUSH, hp.host.name, push_script(a.remote_dir(hp.workdir)), artifact=a.name)
                  for a in artifacts]
    first, rest = host_plans[0], host_plans[1:]
    steps.append(Step(StepKind.LAUNCH, first.host.name, launch_script(first.rundir, first.ranks)))
    steps.append(Step(StepKind.WAIT_PORT, first.host.name, wait_port_script(
        first.host.python, first.rundir, master, inv.job.port, 0, inv.job.join_timeout)))
    steps += [Step(StepKind.LAUNCH, hp.host.name, launch_script(hp.rundir, hp.ranks)) for hp in rest]
    steps += [Step(StepKind.STREAM, hp.host.name,
                   follow_script(hp.host.python, hp.rundir, {r.rank: 0 for r in hp.ranks}))
              for hp in host_plans]
    return tuple(steps)
