"""How a Slurm job goes and ended, read through the login node: the follower of its rank logs
(hostside/slurm_follow.py), Slurm's queue, the run's files, and the verdict (pure, unit-tested).
Nothing here judges a rank by process id: the ranks run on other machines."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator import shell
from orchestrator.errors import ExitCode
from orchestrator.ssh.remote import Connection
from orchestrator.slurm import queue
from orchestrator.slurm.script import BatchJob
from orchestrator.ssh.stream import Followed

CONNECT_TIMEOUT_S = 60


def queue_entry(conn: Connection, job_id: str) -> queue.QueueEntry | None:
    out = conn.run(shell.join(["squeue", "-h", "-j", job_id, "--states=all", "-o", queue.SQUEUE_FORMAT]),
                   timeout=CONNECT_TIMEOUT_S).stdout
    return queue.parse_squeue(out).get(job_id)


@dataclass
class JobReport:
    """What a follower reported: each rank's exit (code, time) and node, and how the job ended."""

    exits: dict[int, tuple[int | None, float | None]]
    nodes: dict[int, str]
    state: str = ""  # Slurm's last state
    end_code: int | None = None  # the batch script's own exit, when it ended by itself
    end_why: str = ""  # done, failed, exhausted, stopped (slurm_policy.py's verdicts), node-check, nodelist
    ended: bool = False  # the follower saw the job end (not a lost link)


def follow_script(python: str, rundir: str, job_id: str, world: int, live: bool, tail: int | None) -> str:
    from orchestrator.hostside import program

    return (f"cd {shell.join([rundir])} || exit 1; "
            + program(python, "slurm_follow", "follow" if live else "replay", -1 if tail is None else tail,
                      job_id, world))


def follow_job(conn: Connection, job: BatchJob | None, job_id: str, ui, live: bool, tail: int | None = None,
               python: str = "", rundir: str = "", world: int = 0, ranks: set[int] | None = None) -> JobReport:
    """Stream every rank's log, prefixed `[node rR]`, until the job is over (or, replaying, the end
    of the logs); the login node's follower says when."""
    if job is not None:
        python, rundir, world = job.python, job.rundir, job.target.world_size
    stream = Followed("login", conn.open_stream(follow_script(python, rundir, job_id, world, live, tail)))
    found = JobReport({}, {})
    try:
        while True:
            data = stream.stream.read()
            for line in stream.feed(data):
                _on_line(line, found, ui, ranks)
            ui.flush_lines()
            if not data:
                break
    finally:
        stream.stream.close()
    return found


def _on_line(line: str, found: JobReport, ui, ranks: set[int] | None) -> None:
    word, _, rest = line.partition(" ")
    if word.isdigit():
        rank = int(word)
        if ranks is None or rank in ranks:
            ui.rank_line(found.nodes.get(rank, "?"), rank, rest)
    elif word == "node":
        which, _, node = rest.partition(" ")
        found.nodes[int(which)] = node
    elif word == "queue":
        state, _, nodes = rest.partition(" ")
        found.state = state
        ui.info(f"Slurm: job {state.lower()}" + (f" on {nodes}" if nodes and state == "RUNNING" else ""))
    elif word == "ev":
        ui.info(rest)
    elif word == "exit":
        which, code, at = (rest.split() + ["-", "-"])[:3]
        found.exits[int(which)] = (int(code) if code.lstrip("-").isdigit() else None,
                                  float(at) if at != "-" else None)
    elif word == "end":
        found.ended = True
        state, code, why = (rest.split(None, 2) + ["-", "-", "-"])[:3]
        found.state = state if state != "-" else found.state
        found.end_code = int(code) if code.isdigit() else None
        found.end_why = why if why != "-" else ""


def outcome(found: JobReport, job_id: str, trainer: bool, max_restarts: int) -> tuple[ExitCode, str]:
    """How the job ended, in one line (pure): Slurm's own endings first, then a stop, then the
    rank that failed first by the times its exit code was written."""
    state = queue.base_state(found.state)
    if state in queue.SLURM_ENDED:
        return ExitCode.SLURM_ENDED, (f"Slurm ended job {job_id}: {state} ({queue.WHY[state]}); "
                                       "it did not finish")
    if found.end_why == "stopped" or state == "CANCELLED":
        return ExitCode.RUN_FAILED, f"job {job_id} was stopped ({state or 'cancelled'})"
    if found.end_why == "node-check":
        return ExitCode.PREFLIGHT, (f"job {job_id}: a node cannot run the job (see slurm-{job_id}.out in the run "
                                    "directory: the failing node is named there)")
    codes = {r: c for r, (c, _) in found.exits.items()}
    if codes and all(c == 0 for c in codes.values()) and found.end_why in ("done", ""):
        return ExitCode.OK, f"all {len(codes)} ranks finished (Slurm job {job_id})"
    first = first_failure(found, trainer)
    if first is None:
        return ExitCode.RUN_FAILED, f"job {job_id} ended ({state or 'state unknown'}) without rank exit codes"
    rank, code = first
    node = found.nodes.get(rank, "?")
    what = f"exited with code {code}" if code is not None else "was killed (no exit code)"
    exhausted = found.end_why == "exhausted"
    return (ExitCode.RESTARTS_EXHAUSTED if exhausted else ExitCode.RUN_FAILED,
            f"rank {rank} on {node} failed first: {what}" + (f"; {max_restarts} restart(s) used up" if exhausted
                                                             else "") + f" (Slurm job {job_id})")


def first_failure(found: JobReport, trainer: bool) -> tuple[int, int | None] | None:
    """The culprit: the earliest non-zero exit, counting the codes that are consequences (143:
    terminated by srun's --kill-on-bad-exit; the trainer's 4: peer lost) only when nothing else failed."""
    consequences = (143, 4) if trainer else (143,)
    failed = [(at if at is not None else float("inf"), r, c) for r, (c, at) in found.exits.items() if c != 0]
    causes = [f for f in failed if f[2] not in consequences] or failed
    if not causes:
        return None
    _, rank, code = min(causes, key=lambda f: (f[0], f[1]))
    return rank, code



def files_script(world: int) -> str:
    """Each rank's node and exit code, and the batch script's end, from the run directory."""
    return shell.lines(
        f"r=0; while [ $r -lt {world} ]; do echo \"rank $r $(cat rank$r.node 2>/dev/null || echo -) "
        "$(cat rank$r.exit 2>/dev/null || echo -) $(stat -c %Y rank$r.exit 2>/dev/null || echo -)\"; "
        "r=$((r + 1)); done",
        "echo \"end $(cat job.end 2>/dev/null || echo - -)\"",
    )


def parse_files(out: str, state: str) -> JobReport:
    """files_script's output as a follower's report (pure)."""
    found = JobReport({}, {}, state=state)
    for line in out.splitlines():
        word, _, rest = line.partition(" ")
        if word == "rank":
            rank, node, code, at = (rest.split() + ["-"] * 4)[:4]
            if node != "-":
                found.nodes[int(rank)] = node
            if code.lstrip("-").isdigit():
                found.exits[int(rank)] = (int(code), float(at) if at.isdigit() else None)
        elif word == "end":
            code, _, why = rest.partition(" ")
            found.end_code = int(code) if code.isdigit() else None
            found.end_why = why.strip() if why.strip() != "-" else ""
    return found


def rank_state(rank: int, found: JobReport, state: str) -> str:
    """One rank's state from its files and Slurm's state of the job (pure)."""
    if rank in found.exits:
        return f"exited {found.exits[rank][0]}"
    if state in ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD"):
        return "pending (queued)"
    if state in queue.ACTIVE:
        return "running" if rank in found.nodes else "starting"
    return "killed (no exit code)" if rank in found.nodes else "never started"


def status_verdict(found: JobReport, job_id: str, trainer: bool, max_restarts: int) -> tuple[ExitCode, str]:
    """`status`'s last line (pure): nothing while the job is active; how it ended otherwise, from
    the run's files where Slurm no longer lists the job (after MinJobAge)."""
    if found.state in queue.ACTIVE:
        return ExitCode.OK, ""
    code, verdict = outcome(found, job_id, trainer, max_restarts)
    if found.state:
        return code, verdict
    if found.exits or found.end_why:
        return code, f"Slurm no longer lists job {job_id}; from the run's files: {verdict}"
    return ExitCode.OK, f"Slurm no longer lists job {job_id}, and the run left no exit codes"
