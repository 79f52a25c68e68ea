"""`status`, `stop` and `logs` of a run on a Slurm cluster, through its login node (the run's
record names the login node and the job id; `submit.py` wrote it)."""

from __future__ import annotations

import json

from orchestrator import shell
from orchestrator.plan import state as runs_state
from orchestrator.errors import Detached, DistctlError, ExitCode, HostError
from orchestrator.ssh.group import check as run_checked
from orchestrator.ssh.remote import Connection, connect
from orchestrator.slurm import queue
from orchestrator.slurm.report import (CONNECT_TIMEOUT_S, files_script, follow_job, parse_files, queue_entry,
                                       rank_state, status_verdict)
from orchestrator.plan.state import HostState, RunState


def slurm_of(state: RunState) -> dict | None:
    """The Slurm part of a run's record; None for a run on SSH hosts."""
    path = runs_state.state_dir() / "runs" / f"{state.run_id}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    info = data.get("slurm") if isinstance(data, dict) else None
    return info if isinstance(info, dict) and str(info.get("job_id", "")).isdigit() else None


def _login_of(state: RunState) -> tuple[Connection, HostState, str]:
    info = slurm_of(state)
    assert info is not None  # commands.py dispatches only Slurm runs here
    hs = state.hosts[0]
    return connect(hs.host, state.ssh), hs, str(info["job_id"])


def status(state: RunState, ui, as_json: bool) -> None:
    """Slurm's state of the job, then each rank's, from the run's files on the shared file system."""
    conn, hs, job_id = _login_of(state)
    try:
        entry = queue_entry(conn, job_id)
        record = queue.job_record(conn.run(shell.join(["scontrol", "show", "job", job_id]),
                                           timeout=CONNECT_TIMEOUT_S).stdout)
        out = conn.run(f"cd {shell.join([hs.rundir])} && " + files_script(state.world_size),
                       timeout=CONNECT_TIMEOUT_S).stdout
    finally:
        conn.close()
    slurm_state = entry.state if entry else record.state if record else ""
    found = parse_files(out, slurm_state)
    ended = slurm_state not in queue.ACTIVE
    code, verdict = status_verdict(found, job_id, state.trainer, state.max_restarts)
    ranks = [{"rank": r, "node": found.nodes.get(r), "state": rank_state(r, found, slurm_state),
              "exit_code": found.exits.get(r, (None, None))[0]} for r in range(state.world_size)]
    if as_json:
        ui.out(json.dumps({"format": 1, "run_id": state.run_id, "slurm_job": job_id, "slurm_state": slurm_state or None,
                           "nodes": entry.nodes if entry else record.nodes if record else None,
                           "ranks": ranks, "outcome": verdict or None}, indent=2))
    else:
        where = f" on {entry.nodes}" if entry and entry.nodes else ""
        reason = f" ({entry.reason})" if entry and entry.reason not in ("", "None") else ""
        ui.out(f"run {state.run_id}: Slurm job {job_id} {slurm_state or 'no longer listed'}{where}{reason}")
        for r in ranks:
            ui.out(f"  {ui.prefix(r['node'] or '?', r['rank'])} {r['state']}")
        if verdict:
            ui.out(verdict)
    if ended and code == ExitCode.SLURM_ENDED:
        raise DistctlError(verdict, ExitCode.SLURM_ENDED)


STOP_SETTLE_S = 60.0  # after the final scancel: until Slurm lists the job as ended, every step gone


def stop(state: RunState, ui, grace: float) -> None:
    """A `stopping` mark in the run directory (the batch script then restarts nothing), SIGTERM
    through Slurm (`scancel -s TERM --full`: the batch script passes it on to every rank, once,
    and the ranks checkpoint; script.STOP_LINES says why not straight to the ranks), then
    `scancel` after the grace; done once Slurm lists the job as ended, which it does only when
    no process of it is left on any node."""
    import time

    try:
        conn, hs, job_id = _login_of(state)
    except HostError as exc:  # as over SSH: a stop that could not reach its host is incomplete
        raise DistctlError(f"stop of {state.run_id} incomplete: {exc}", ExitCode.STOP_INCOMPLETE) from None

    def entry_now() -> queue.QueueEntry | None:
        return queue_entry(conn, job_id)

    def settled(within: float) -> queue.QueueEntry | None:
        deadline = time.monotonic() + within
        entry = entry_now()
        while entry is not None and entry.active and time.monotonic() < deadline:
            time.sleep(0.5)
            entry = entry_now()
        return entry

    try:
        entry = entry_now()
        if entry is None or not entry.active:
            ui.info(f"run {state.run_id}: Slurm job {job_id} is {entry.state if entry else 'no longer listed'}; "
                    "nothing to stop")
            return
        if entry.state == "PENDING":
            run_checked(conn, shell.join(["scancel", job_id]), "scancel", exit_code=ExitCode.STOP_INCOMPLETE)
        else:
            ui.info(f"job {job_id}: SIGTERM to the batch script and, through it, every rank (scancel -s TERM --full)")
            run_checked(conn, f"touch {shell.join([hs.rundir + '/stopping'])} && "
                        + shell.join(["scancel", "-s", "TERM", "--full", job_id]), "scancel -s TERM --full",
                        exit_code=ExitCode.STOP_INCOMPLETE)
        entry = settled(grace)
        if entry is not None and entry.active:
            ui.info(f"job {job_id} still {entry.state} after {grace:g} s: scancel")
            run_checked(conn, shell.join(["scancel", job_id]), "scancel", exit_code=ExitCode.STOP_INCOMPLETE)
            entry = settled(STOP_SETTLE_S)
    finally:
        conn.close()
    if entry is not None and entry.active:
        raise DistctlError(f"stop of {state.run_id} incomplete: Slurm still lists job {job_id} as {entry.state}",
                           ExitCode.STOP_INCOMPLETE)
    runs_state.note_state(state.run_id, "stopped")
    ui.info(f"stopped run {state.run_id}: Slurm job {job_id} is {entry.state if entry else 'gone'}, "
            "nothing of it left in the queue")


def logs(state: RunState, ui, follow_live: bool, host: str | None, rank: int | None, tail: int | None) -> None:
    conn, hs, job_id = _login_of(state)
    ranks = {rank} if rank is not None else None
    if rank is not None and not 0 <= rank < state.world_size:
        raise DistctlError(f"no rank {rank} in run {state.run_id}", ExitCode.BAD_INPUT)
    try:
        follow_job(conn, None, job_id, _NodeFilter(ui, host), follow_live, tail, python=hs.python,
                   rundir=hs.rundir, world=state.world_size, ranks=ranks)
    except KeyboardInterrupt:
        ui.info(f"stopped following; run {state.run_id} goes on")
        raise Detached("interrupted") from None
    finally:
        conn.close()


class _NodeFilter:
    """The ui, showing only the lines of ranks on one node (`logs --host NODE`)."""

    def __init__(self, ui, node: str | None):
        self._ui, self._node = ui, node

    def rank_line(self, node: str, rank: int | None, line: str) -> None:
        if self._node is None or node == self._node:
            self._ui.rank_line(node, rank, line)

    def __getattr__(self, name: str):
        return getattr(self._ui, name)
