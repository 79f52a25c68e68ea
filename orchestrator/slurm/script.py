"""The batch job of one run, as data: the sbatch script, the sbatch command and the ranks'
environment. Pure: `up --dry-run` prints exactly what `up` writes and runs.

Inside the allocation each rank gets the environment it gets over SSH (README: "The environment
of a rank"), from Slurm's variables: RANK=SLURM_PROCID, LOCAL_RANK=SLURM_LOCALID,
GROUP_RANK=SLURM_NODEID; MASTER_ADDR is the first node's IP address (resolved on the batch
node, which is the first node; never a hostname); MASTER_PORT is job.port when the inventory
sets it, else derived from the job id (nodes are shared, a fixed port would collide).

The ranks start with one `srun --kill-on-bad-exit` per attempt, so Slurm tracks and kills every
process. Each rank's wrapper writes its exit code to rankR.exit (srun itself returns 143 whoever
failed), its node to rankR.node and its output to rankR.log, all in the run directory on the
shared file system, where the login node reads them: nothing judges a rank by process id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from orchestrator import shell
from orchestrator.hostside import source
from orchestrator.inventory.model import EnvVar, Inventory
from orchestrator.contract import PEER_LOST, RUN_MARKER, TRAINER_FINAL
from orchestrator.plan.model import Artifact
from orchestrator.inventory.slurm import SlurmTarget

PORT_BASE, PORT_SPAN = 20000, 20000
SCRIPT = "job.sbatch"  # in the run directory
END = "job.end"  # `RC WHY` once the batch script ends by itself (not when Slurm kills it)
POLICY = "policy.py"  # in the run directory: hostside/slurm_policy.py, which decides after each attempt
KILLED_BY_SRUN = 143  # a rank srun's --kill-on-bad-exit terminated: a consequence, never the cause


def derived_port(job_id: int) -> int:
    """MASTER_PORT of a job whose inventory sets no job.port (what the script computes)."""
    return PORT_BASE + job_id % PORT_SPAN


@dataclass(frozen=True)
class BatchJob:
    """One run's batch job: where it lives on the shared file system and what it runs."""

    run_id: str
    target: SlurmTarget
    workdir: str  # on the shared file system, `~` expanded (or a placeholder in a dry run)
    python: str
    program: tuple[str, ...]  # every rank's argv
    env: tuple[EnvVar, ...]  # the run's env file: what every rank shares
    code_dir: str
    trainer: bool
    max_restarts: int = 0

    @property
    def rundir(self) -> str:
        return f"{self.workdir}/runs/{self.run_id}"

    @property
    def script_path(self) -> str:
        return f"{self.rundir}/{SCRIPT}"


def run_env(inv: Inventory, target: SlurmTarget, run_id: str, code_dir: str,
            data_dir: str | None) -> tuple[EnvVar, ...]:
    """What every rank shares (the per-rank and per-node values come from Slurm at run time);
    the inventory's env (job, then defaults) wins, as over SSH."""
    world = str(target.world_size)
    values = [(RUN_MARKER, run_id)]
    if target.port is not None:
        values.append(("MASTER_PORT", str(target.port)))
    values += [
        ("WORLD_SIZE", world), ("LOCAL_WORLD_SIZE", str(target.slots)), ("GROUP_WORLD_SIZE", str(target.nodes)),
        ("ROLE_NAME", "default"), ("ROLE_WORLD_SIZE", world), ("TORCHELASTIC_RUN_ID", run_id),
        ("TORCHELASTIC_RESTART_COUNT", "0"), ("TORCHELASTIC_MAX_RESTARTS", str(inv.job.max_restarts)),
        ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"), ("PYTHONUNBUFFERED", "1"), ("DISTCTL_CODE", code_dir),
    ]
    if data_dir:
        values.append(("DISTCTL_DATA", data_dir))
    env = {name: EnvVar(name, value) for name, value in values}
    env.update({v.name: v for v in inv.job.env})
    env.update({v.name: v for v in target.login.env})
    return tuple(env.values())


def sbatch_argv(job: BatchJob) -> tuple[str, ...]:
    """The submission, run on the login node: `slurm.sbatch` options as they are, then the script."""
    return ("sbatch", "--parsable", *job.target.sbatch, job.script_path)


def test_only_argv(job: BatchJob) -> tuple[str, ...]:
    """What `check` asks Slurm: could this job run, and when would it start (nothing is queued)."""
    return ("sbatch", "--test-only", *job.target.sbatch, job.script_path)


def directives(job: BatchJob) -> list[str]:
    t = job.target
    out = [f"--job-name={job.run_id}", f"--nodes={t.nodes}", f"--ntasks-per-node={t.slots}"]
    out += [f"--partition={t.partition}"] if t.partition else []
    out += [f"--gpus-per-node={t.gpus_per_node}"] if t.gpus_per_node else []
    out += [f"--time={t.time}"] if t.time else []
    # The batch script's own output (node checks, srun's messages); `%j`: a requeue appends.
    out += [f"--output={job.rundir}/slurm-%j.out", "--open-mode=append", "--requeue"]
    return [f"#SBATCH {shell.join([d])}" for d in out]


def rank_wrapper() -> str:
    """The shell around one rank's program (its argv follows as "$@"), run by srun on every
    task: the rank's place from Slurm, the interface toward MASTER_ADDR, its log, node and
    exit code in the run directory, and the program's code as its own (srun's --kill-on-bad-exit
    acts on it). TERM is trapped so that the wrapper outlives the program's
    graceful stop and records its code. During `distctl stop` it exits 0 whatever the code: a
    rank that finished saving first must not make srun TERM (a second time) and KILL the ranks
    still saving theirs."""
    iface = ("i=$(ip -4 -o addr show 2>/dev/null | awk -v a=\"$MASTER_ADDR\" "
             "'{split($4, p, \"/\"); if (p[1] == a) {print $2; exit}}'); "
             "[ -n \"$i\" ] || i=$(ip -4 -o route get \"$MASTER_ADDR\" 2>/dev/null "
             "| sed -n 's/.* dev \\([^ ]*\\).*/\\1/p'); "
             '[ -z "$i" ] || export GLOO_SOCKET_IFNAME="${GLOO_SOCKET_IFNAME:-$i}" '
             'NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-$i}"; ')
    return ("trap : TERM INT HUP; "
            "export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID ROLE_RANK=$SLURM_PROCID GROUP_RANK=$SLURM_NODEID; "
            + iface
            + '[ "$LOCAL_WORLD_SIZE" -le 1 ] || [ -n "${OMP_NUM_THREADS+x}" ] || export OMP_NUM_THREADS=1; '
            'hostname >rank$RANK.node; '
            '(cd work && exec "$@") >>rank$RANK.log 2>&1 </dev/null; '
            'c=$?; echo $c >rank$RANK.exit.tmp && mv rank$RANK.exit.tmp rank$RANK.exit; '
            '[ ! -e stopping ] || exit 0; exit $c')


# `distctl stop` runs `scancel -s TERM --full`, which on Slurm 22.05 signals the batch shell's
# process group and no step (measured). srun answers a TERM by SIGKILLing its tasks ("srun: forcing
# job termination"), so every srun runs in a process group of its own (`set -m`) and the batch
# shell passes the TERM on to the ranks, once: `scancel -s TERM` signals every step, never the
# batch shell. Each rank then gets exactly one TERM, and srun none (the rank wrapper keeps srun's
# --kill-on-bad-exit from sending another: rank_wrapper).
STOP_LINES = (
    "signalled=",
    "on_term() { [ -n \"$signalled\" ] || { signalled=1; scancel -s TERM \"$SLURM_JOB_ID\"; }; }",
    "trap on_term TERM",
    "set -m  # each srun in a process group of its own, out of reach of the TERM to this shell's group",
)


def python_test(python: str) -> str:
    """A shell test that `python` can run here: a path must be an executable file (dash's
    `command -v /path` accepts any file), a bare name must be on the PATH."""
    py = shell.join([python])
    return f"[ -f {py} ] && [ -x {py} ]" if "/" in python else f"command -v {py} >/dev/null 2>&1"


def node_check(job: BatchJob) -> str:
    """Run once on every node before the ranks: python and the run directory must be there,
    else the job fails within seconds naming the node (not after hours in the queue)."""
    return (f"{python_test(job.python)} || "
            f"{{ echo \"distctl: $(hostname): python {job.python} not found\" >&2; exit 1; }}; "
            f"[ -d {shell.join([job.rundir + '/work'])} ] || "
            f"{{ echo \"distctl: $(hostname): {job.rundir} is not on this node (not a shared file system?)\" >&2; "
            "exit 1; }")


def policy_config(job: BatchJob) -> str:
    """slurm_policy.py's configuration (JSON): the ranks per node, job.max_restarts, the codes that
    are never restarted (the trainer's usage and divergence errors, as over SSH) and those that are
    never blamed while another cause exists (143: srun terminated the rank; the trainer's 4)."""
    consequences = [KILLED_BY_SRUN, PEER_LOST] if job.trainer else [KILLED_BY_SRUN]
    return json.dumps({"slots": job.target.slots, "max_restarts": job.max_restarts,
                       "final_codes": list(TRAINER_FINAL) if job.trainer else [], "peer_lost": consequences},
                      separators=(",", ":"))


def batch_script(job: BatchJob) -> str:
    """The whole sbatch script: what `up` writes to the run directory and `--dry-run` prints."""
    t = job.target
    q = shell.join
    srun = ("srun", "--kill-on-bad-exit=1", f"--nodes={t.nodes}", f"--ntasks-per-node={t.slots}")
    check = ("srun", "--kill-on-bad-exit=1", f"--nodes={t.nodes}", f"--ntasks={t.nodes}", "--ntasks-per-node=1")
    resume = 'set -- "$@" --resume' if job.trainer else ":"
    lines = [
        "#!/bin/bash",
        *directives(job),
        f"# distctl run {job.run_id}: written by `distctl up` (`distctl up --dry-run` prints it).",
        f"cd {q([job.rundir])} || exit 1",
        "umask 077",
        f"rm -f {END} rank*.exit",
        f"finish() {{ echo \"$1 $2\" >{END}.tmp && mv {END}.tmp {END}; exit \"$1\"; }}",
        *STOP_LINES,
        *(f"{line}" for line in t.preamble),
        ". ./env",
        "nodes=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\") || finish 1 nodelist",
        "echo \"$nodes\" >nodes",
        "first=$(echo \"$nodes\" | head -n 1)",
        "# The first node's address, never its name (a hostname may resolve to 127.0.0.1 there);",
        "# this script runs on the first node, so its own address stands in when the name does not resolve.",
        "MASTER_ADDR=$(getent ahostsv4 \"$first\" | awk 'NR == 1 {print $1}')",
        "case $MASTER_ADDR in ''|127.*) MASTER_ADDR=$(hostname -I | awk '{print $1}') ;; esac",
        "export MASTER_ADDR",
        f"[ -n \"${{MASTER_PORT:-}}\" ] || export MASTER_PORT=$(({PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN}))",
        "echo \"$SLURM_JOB_ID $MASTER_ADDR $MASTER_PORT\" >master",
        f"{q(check)} sh -c {q([node_check(job)])} || finish 1 node-check",
        f"set -- {q(job.program)}",
        "# A requeued or preempted job resumes from its checkpoint when Slurm runs it again.",
        f"[ \"${{SLURM_RESTART_COUNT:-0}}\" -eq 0 ] || {resume}",
        "attempt=0",
        "while :; do",
        "    [ -e stopping ] && finish 143 stopped  # `distctl stop` marked the run before its scancel",
        "    [ -z \"$signalled\" ] || exit 143",
        "    export TORCHELASTIC_RESTART_COUNT=$attempt",
        "    rm -f rank*.exit && echo \"$attempt\" >attempt",
        f"    {q(srun)} sh -c {q([rank_wrapper()])} distctl-rank \"$@\" &",
        "    step=$!",
        "    # A trapped TERM interrupts `wait`; bash keeps srun's status for the last `wait`.",
        "    while kill -0 $step 2>/dev/null; do wait $step; done; wait $step; rc=$?",
        "    # A TERM from elsewhere (Slurm ending the job, a user's own scancel): no restart, no job.end.",
        "    [ -z \"$signalled\" ] || [ -e stopping ] || exit $rc",
        "    # Restart or end: the restart policy of the agents over SSH, on the exit files of the ranks.",
        f"    verdict=$({q([job.python, POLICY, policy_config(job)])} $attempt) || verdict=failed",
        "    case $verdict in",
        "        restart) ;;",
        "        done) finish 0 done ;;",
        "        stopped) finish 143 stopped ;;",
        "        failed|exhausted) finish $rc $verdict ;;",
        f"        *) echo \"end failed: {POLICY} answered $verdict\" >>events; finish $rc failed ;;",
        "    esac",
        "    attempt=$((attempt + 1))",
        f"    [ $attempt -gt 1 ] || {resume}",
        "done",
    ]
    return "\n".join(lines) + "\n"


def stage_script(job: BatchJob, script: str) -> str:
    """On the login node, after the push: the run's own copy of the code, the restart policy
    (policy.py) and the batch script (its text arrives on stdin)."""
    q = shell.join
    return shell.lines(
        f"cd {q([job.rundir])} || exit 1",
        "umask 077",
        f"[ -d work ] || {{ rm -rf work.tmp && cp -R {q([job.code_dir + '/.'])} work.tmp && mv work.tmp work; }} "
        "|| exit 1",
        f"printf %s {q([source('slurm_policy')])} >{POLICY} || exit 1",
        f"cat >{SCRIPT} || exit 1",
    )


def render_dry_run(job: BatchJob, artifacts: tuple[Artifact, ...]) -> str:
    """What `up --dry-run` prints: the run's place, the batch script and the submission."""
    pushed = ", ".join(f"{a.name} {a.digest[:16]} -> {a.remote_dir(job.workdir)}" for a in artifacts)
    t = job.target
    env = shell.env_file(job.env, masked=True).rstrip("\n").splitlines()
    return "\n".join([
        f"run {job.run_id} on Slurm: {t.nodes} node(s) x {t.slots} rank(s), partition {t.partition or '(default)'}, "
        f"login node {t.login.address}",
        f"push (to the login node, on the shared file system): {pushed}",
        f"run directory: {job.rundir}",
        f"{job.rundir}/env:",
        *(f"  {line}" for line in env),
        f"{job.script_path}:",
        *(f"  {line}" for line in batch_script(job).rstrip("\n").splitlines()),
        f"{job.rundir}/{POLICY}: orchestrator/hostside/slurm_policy.py after agent_policy.py "
        "(the restart policy of the agents over SSH)",
        "submit (on the login node):",
        f"  {shell.join(sbatch_argv(job))}",
    ])
