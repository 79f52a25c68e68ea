"""`up --dry-run`, `check` and `up` on a Slurm cluster: the checks that refuse a job before it is
queued, the push to the shared file system, job.setup on the login node, and the submission.

Everything goes over one SSH connection to the login node (remote.py, as for any host): Slurm's
clients run there, and the run directory lives on the shared file system. What the job is, is
decided in `script.py`; how it ended, in `report.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from orchestrator import shell
from orchestrator.plan import state as runs_state
from orchestrator.errors import Detached, DistctlError, ExitCode, HostError
from orchestrator.ssh.group import check as run_checked
from orchestrator.inventory.model import Inventory
from orchestrator.launch.artifacts import job_artifacts, tar_of
from orchestrator.plan.model import Artifact, python_of, setup_dir_of, trainer_program, user_program
from orchestrator.ssh.remote import Connection, connect
from orchestrator.plan.scripts import PROBE_MARK, prepare_script, push_script, setup_script
from orchestrator.slurm import queue
from orchestrator.inventory.slurm import SlurmTarget
from orchestrator.slurm.report import CONNECT_TIMEOUT_S, follow_job, outcome, queue_entry
from orchestrator.slurm.script import (BatchJob, batch_script, python_test, render_dry_run, run_env, sbatch_argv,
                                       stage_script, test_only_argv)
from orchestrator.plan.state import HostState, RankState, RunState
from orchestrator.ssh.stream import Followed

NETWORK_FS = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb2", "ceph", "panfs", "wekafs", "fuse.glusterfs",
              "glusterfs", "fuse.sshfs", "9p", "virtiofs", "afs", "orangefs")


# ------------------------------------------------------------------ the job, without I/O


def plan_job(inv: Inventory, run_id: str, workdir: str,
             artifacts: tuple[Artifact, ...] | None = None) -> tuple[BatchJob, tuple[Artifact, ...]]:
    """The run's batch job and what is pushed for it (`artifacts`: the job's own, unless given);
    `workdir` with `~` already expanded."""
    target: SlurmTarget = inv.slurm
    artifacts = artifacts or job_artifacts(inv.job)
    by_name = {a.name: a for a in artifacts}
    rundir = f"{workdir}/runs/{run_id}"
    code_dir = by_name["code"].remote_dir(workdir)
    data_dir = by_name["data"].remote_dir(workdir) if "data" in by_name else None
    python = python_of(target.login, setup_dir_of(inv, workdir, by_name["code"]), f"{rundir}/work")
    if inv.job.is_trainer:
        program = trainer_program(inv, python, data_dir or f"{workdir}/data/downloaded",
                                  download="data" not in by_name and inv.job.dataset == "mnist",
                                  checkpoint_dir=f"{rundir}/ckpt", resume=False)
    else:
        program = user_program(inv.job.command, python)
    env = run_env(inv, target, run_id, code_dir, data_dir)
    return BatchJob(run_id, target, workdir, python, program, env, code_dir, inv.job.is_trainer,
                    inv.job.max_restarts), artifacts


def expand_home(workdir: str, home: str) -> str:
    workdir = workdir.rstrip("/") or "/"
    if workdir == "~" or workdir.startswith("~/"):
        return home.rstrip("/") + workdir[1:]
    return workdir


def dry_run(inv: Inventory, run_id: str, ui) -> None:
    """The batch script and the sbatch command, from the inventory alone: connects to nothing."""
    job, artifacts = plan_job(inv, run_id, expand_home(inv.slurm.login.workdir, "<home on the login node>"))
    ui.out(render_dry_run(job, artifacts))


# ------------------------------------------------------------------ preflight


def preflight_script(target: SlurmTarget, python: str | None, workdir: str) -> str:
    """One round trip: Slurm's clients and version, the partition, python, the file systems."""
    q = shell.join
    lines = ["for c in sbatch squeue scancel scontrol; do command -v $c >/dev/null 2>&1 || echo \"missing $c\"; done",
             "echo \"version $(sbatch --version 2>&1 | head -n 1)\"",
             f"d={q([workdir])}; while [ ! -e \"$d\" ]; do d=$(dirname \"$d\"); done; "
             "echo \"fs workdir $(stat -f -c %T \"$d\" 2>/dev/null)\""]
    if target.partition:
        part = q([target.partition])
        lines.append(f"scontrol show partition {part} >/dev/null 2>&1 || "
                     f"echo \"partition $(scontrol show partition {part} 2>&1 | head -n 1)\"")
    if python:
        where = f"$(command -v {q([python])})"
        lines.append(f"if {python_test(python)}; then echo \"fs python $(stat -f -c %T \"{where}\")\"; "
                     "else echo \"python missing\"; fi")
    return shell.lines(*lines)


@dataclass(frozen=True)
class Preflight:
    version: str | None
    problems: tuple[str, ...]  # each one refuses the job
    warnings: tuple[str, ...]


def judge_preflight(out: str, target: SlurmTarget, python: str | None, workdir: str) -> Preflight:
    """The verdict on preflight_script's output (pure)."""
    problems, warnings, version = [], [], None
    for line in out.splitlines():
        word, _, rest = line.partition(" ")
        if word == "missing":
            problems.append(f"{rest} is not installed on the login node (or not on its PATH)")
        elif word == "version":
            version = queue.parse_version(rest)
        elif word == "partition":
            problems.append(f"partition {target.partition!r} does not exist ({rest.strip()})")
        elif word == "python":
            problems.append(f"python {python} does not exist on the login node (defaults.python: "
                            "it must lie on the shared file system)")
        elif word == "fs":
            what, _, fs = rest.partition(" ")
            if fs and fs not in NETWORK_FS:
                place = workdir if what == "workdir" else python
                warnings.append(f"{what} {place} is on a local file system ({fs}) as the login node sees it; "
                                "every node must see the same files (a network file system)")
    return Preflight(version, tuple(problems), tuple(warnings))


def slurm_version_of(pre: Preflight) -> str:
    return f"Slurm {pre.version}" if pre.version else "Slurm (version unknown)"


def _preflight(conn: Connection, inv: Inventory, job: BatchJob, ui) -> tuple[Preflight, queue.TestOnly | None]:
    """Refuse before anything is queued: tools, partition, python, and Slurm's own --test-only."""
    checked_python = None if inv.job.setup else job.python  # job.setup may make it
    out = conn.run(preflight_script(job.target, checked_python, job.workdir), timeout=CONNECT_TIMEOUT_S).stdout
    pre = judge_preflight(out, job.target, checked_python, job.workdir)
    for warning in pre.warnings:
        ui.warn(warning)
    if pre.problems:
        raise DistctlError(f"{job.target.login.address}: the job cannot run ({slurm_version_of(pre)}): "
                           + "; ".join(pre.problems), ExitCode.PREFLIGHT)
    argv = [a for a in test_only_argv(job) if a != job.script_path]
    result = conn.run(shell.join(argv), stdin=batch_script(job).encode(), timeout=CONNECT_TIMEOUT_S)
    found = queue.parse_test_only(result.stderr + result.stdout)
    if found is None:
        raise DistctlError(f"{job.target.login.address}: Slurm refuses the job ({slurm_version_of(pre)}, "
                           f"sbatch --test-only): {queue.slurm_error(result.stderr + result.stdout)}",
                           ExitCode.PREFLIGHT)
    return pre, found


def _connect(target: SlurmTarget, inv_ssh) -> Connection:
    return connect(target.login, inv_ssh)


def _home(conn: Connection) -> str:
    return run_checked(conn, 'printf "%s" "$HOME"', "home directory").stdout.strip()


def check(inv: Inventory, ui, as_json: bool = False) -> None:
    """Connect to the login node and ask Slurm whether the job could run; queues nothing."""
    target: SlurmTarget = inv.slurm
    conn = _connect(target, inv.ssh)
    try:
        job, _ = plan_job(inv, f"{inv.job.name}-check", expand_home(target.login.workdir, _home(conn)))
        pre, found = _preflight(conn, inv, job, ui)
    finally:
        conn.close()
    if as_json:
        ui.out(json.dumps({"format": 1, "login": target.login.address, "slurm_version": pre.version,
                           "partition": found.partition if found else None, "nodes": target.nodes,
                           "slots": target.slots, "python": job.python, "workdir": job.workdir,
                           "expected_start": found.start if found else None, "warnings": list(pre.warnings)},
                          indent=2))
        return
    ui.out(f"login node {target.login.address}: {slurm_version_of(pre)}, sbatch/squeue/scancel/scontrol found")
    ui.out(f"job: {target.nodes} node(s) x {target.slots} rank(s), partition {found.partition if found else '?'}, "
           f"python {job.python}, workdir {job.workdir}")
    if found:
        ui.out(f"sbatch --test-only: would start at {found.start} on {found.nodes}")
    ui.info("check passed: `distctl up` would submit the job")


# ------------------------------------------------------------------ up


def up(inv: Inventory, run_id: str, ui, detach: bool, resume: bool = False) -> None:
    target: SlurmTarget = inv.slurm
    if resume:
        raise DistctlError("--resume is for SSH hosts: on Slurm a requeued or preempted job resumes from its "
                           "checkpoint by itself, and job.max_restarts restarts within the allocation",
                           ExitCode.BAD_INPUT)
    ui.hide(inv.secrets)
    ui.info(f"connecting to the login node {target.login.address}")
    conn = _connect(target, inv.ssh)
    try:
        job, artifacts = plan_job(inv, run_id, expand_home(target.login.workdir, _home(conn)))
        _, expected = _preflight(conn, inv, job, ui)
        _prepare(conn, job, artifacts, ui)
        if inv.job.setup:
            _setup(conn, inv, job, ui)
        run_checked(conn, stage_script(job, ""), "staging the run", stdin=batch_script(job).encode(),
                    exit_code=ExitCode.REMOTE_STEP)
        job_id = _submit(conn, job)
        _record(inv, job, job_id)
        entry = queue_entry(conn, job_id)
        start = entry.start if entry and entry.start not in ("", "N/A") else expected.start if expected else "unknown"
        ui.info(f"queued (job {job_id}, partition {entry.partition if entry else target.partition or '?'}, "
                f"expected start {start}): run {run_id}")
        if detach:
            from click import echo

            echo(f"distctl: run {run_id} is Slurm job {job_id}. Follow it: distctl logs -f {run_id}   "
                 f"Stop it: distctl stop {run_id}", err=True)
            return
        try:
            result = follow_job(conn, job, job_id, ui, live=True)
        except KeyboardInterrupt:
            ui.info(f"detached; Slurm job {job_id} goes on. Re-attach: distctl logs -f {run_id}   "
                    f"Stop it: distctl stop {run_id}")
            raise Detached("detached") from None
        if not result.ended:
            raise DistctlError(f"lost the login node {target.login.address} while following; Slurm job {job_id} "
                               f"goes on. Re-attach: distctl logs -f {run_id}   See: distctl status {run_id}",
                               ExitCode.UNREACHABLE)
        why = _node_check_failure(conn, job, job_id) if result.end_why == "node-check" else ""
    finally:
        conn.close()
    code, message = outcome(result, job_id, inv.job.is_trainer, inv.job.max_restarts)
    if why:  # the batch script's first step named the node: say it here, not only in slurm-ID.out
        message = f"job {job_id}: a node cannot run the job, nothing was started: {why}"
    runs_state.note_state(run_id, "finished" if code == ExitCode.OK else "failed", keep=("stopped",))
    if code != ExitCode.OK:
        raise DistctlError(message, code)
    ui.info(message)


def _prepare(conn: Connection, job: BatchJob, artifacts: tuple[Artifact, ...], ui) -> None:
    dirs = [a.remote_dir(job.workdir) for a in artifacts]
    out = run_checked(conn, prepare_script(job.workdir, job.rundir, dirs), "prepare",
                      stdin=shell.env_file(job.env).encode(), exit_code=ExitCode.REMOTE_STEP).stdout
    have = {line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("have ")}
    sent = 0
    for a in artifacts:
        if a.remote_dir(job.workdir) not in have:
            data = tar_of(a)
            run_checked(conn, push_script(a.remote_dir(job.workdir)), f"push of {a.name}", stdin=data,
                        timeout=3600, exit_code=ExitCode.REMOTE_STEP)
            sent += len(data)
    ui.info(f"pushed {sent} bytes to the shared file system" + (" (up to date)" if sent == 0 else ""))


def _setup(conn: Connection, inv: Inventory, job: BatchJob, ui) -> None:
    """job.setup on the login node, in the shared file system, before anything is queued."""
    code = next(a for a in job_artifacts(inv.job) if a.name == "code")
    setup_dir = setup_dir_of(inv, job.workdir, code) or job.rundir
    ui.info("running job.setup on the login node")
    followed = Followed(job.target.login.name, conn.open_stream(setup_script(setup_dir, job.code_dir,
                                                                              inv.job.setup or "", job.python)))
    tail: list[str] = []
    probing = False
    try:
        while True:
            data = followed.stream.read()
            for line in followed.feed(data):
                probing = probing or line == PROBE_MARK
                if not probing:
                    ui.setup_line(followed.host, line)
                    tail = (tail + [line])[-10:]
            if not data:
                break
        status = followed.stream.exit_code()
    finally:
        followed.stream.close()
    if status != 0:
        shown = "".join(f"\n    {line}" for line in tail)
        raise HostError(followed.host, f"job.setup exited with code {status}; nothing was queued. Last lines:{shown}",
                        ExitCode.SETUP_FAILED)


def _node_check_failure(conn: Connection, job: BatchJob, job_id: str) -> str:
    """The batch script's first step named the node that cannot run the job: its lines."""
    out = conn.run(f"grep -h '^distctl: ' {shell.join([f'{job.rundir}/slurm-{job_id}.out'])}",
                   timeout=CONNECT_TIMEOUT_S).stdout
    return "; ".join(line.removeprefix("distctl: ") for line in out.splitlines()[:5]) or "no node said why"


def _submit(conn: Connection, job: BatchJob) -> str:
    result = conn.run(f"cd {shell.join([job.rundir])} && {shell.join(sbatch_argv(job))}", timeout=CONNECT_TIMEOUT_S)
    job_id = queue.parse_submitted(result.stdout) if result.exit_code == 0 else None
    if job_id is None:
        raise DistctlError(f"{job.target.login.address}: sbatch failed: "
                           f"{queue.slurm_error(result.stderr + result.stdout)}", ExitCode.REMOTE_STEP)
    run_checked(conn, f"echo {job_id} >{shell.join([job.rundir + '/job.id'])}", "recording the job id",
                exit_code=ExitCode.REMOTE_STEP)
    return job_id


def _record(inv: Inventory, job: BatchJob, job_id: str) -> None:
    """The run as every later command finds it: a RunState whose one host is the login node,
    plus what Slurm needs (job id, nodes, slots)."""
    t = job.target
    ranks = tuple(RankState(r, r % t.slots) for r in range(t.world_size))
    state = RunState(job.run_id, str(Path(inv.path).resolve()), inv.ssh, t.world_size, "", t.port or 0,
                     (HostState(t.login, job.rundir, ranks, python=job.python),), job.trainer, inv.job.outputs,
                     max_restarts=job.max_restarts)
    runs_state.save_run(state)
    path = runs_state.state_dir() / "runs" / f"{job.run_id}.json"
    data = json.loads(path.read_text())
    data["slurm"] = {"job_id": job_id, "nodes": t.nodes, "slots": t.slots, "partition": t.partition}
    runs_state._write(path, data)


