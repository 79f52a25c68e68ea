"""Attached to a run: stream every rank's log, tear the run down when a rank fails,
and stop it when ranks never join (the hang watchdog)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from orchestrator.errors import DistctlError, ExitCode, HostError
from orchestrator.lifecycle import read_exit_code, stop_host
from orchestrator.plan import stream_script
from orchestrator.remote import Connection
from orchestrator.state import RunState
from orchestrator.stream import Followed, follow

FAILURE_GRACE = 2.0  # seconds survivors get to exit after a rank failed; then SIGKILL
STOPPED = 143  # the trainer's code for "stopped by SIGTERM after checkpointing"


@dataclass
class Outcome:
    code: ExitCode
    message: str


def stop_everywhere(state: RunState, conns: dict[str, Connection], grace: float) -> dict[str, str]:
    """Stop the run on every host in parallel; per-host problems are returned, not raised."""
    def one(hs) -> str:
        conn = conns.get(hs.host.name)
        if conn is None:
            return "unreachable"
        try:
            left = stop_host(conn, hs.rundir, state.run_id, grace)
            return "" if left == 0 else f"{left} process(es) left"
        except HostError as exc:
            return exc.cause

    with ThreadPoolExecutor(max_workers=max(1, len(state.hosts))) as pool:
        results = list(pool.map(one, state.hosts))
    return {hs.host.name: r for hs, r in zip(state.hosts, results) if r}


def open_followers(state: RunState, conns: dict[str, Connection], ranks: set[int] | None = None,
                   from_lines: dict[int, int] | None = None) -> list[Followed]:
    out = []
    for hs in state.hosts:
        for r in hs.ranks:
            if ranks is None or r.rank in ranks:
                start = (from_lines or {}).get(r.rank, 0) + 1
                stream = conns[hs.host.name].open_stream(stream_script(hs.rundir, r.rank, start))
                out.append(Followed(hs.host.name, r.rank, stream))
    return out


def watch_run(state: RunState, conns: dict[str, Connection], ui, join_timeout: float,
              from_lines: dict[int, int] | None = None) -> Outcome:
    """Follow the run to its end. Returns the outcome; raises KeyboardInterrupt on Ctrl-C."""
    followers = open_followers(state, conns, from_lines=from_lines)
    joined: set[int] = set()
    exits: dict[int, int | None] = {}
    first_failure: list[Followed] = []
    fallback_told: set[str] = set()
    deadline = time.monotonic() + join_timeout
    hang: list[str] = []
    by_rank = {f.rank: f for f in followers}

    def on_line(f: Followed, line: str) -> None:
        ui.rank_line(f.host, f.rank, line)
        if line.startswith("joined "):
            joined.add(f.rank)
        elif line.startswith("fallback ") and f.host not in fallback_told:
            fallback_told.add(f.host)
            ui.warn(f"{f.host}: MNIST could not be had: training on generated digits, not MNIST "
                    "(job.fallback: generated; set job.data to push your copy of MNIST)")

    def on_end(f: Followed) -> None:
        try:
            code = read_exit_code(conns[f.host], state.host(f.host).rundir, f.rank)
        except HostError:
            code = None
        exits[f.rank] = code
        if code != 0 and not first_failure:
            first_failure.append(f)
            if code != STOPPED:
                teardown(f"rank {f.rank} on {f.host} exited with {_code_text(code)}")

    def teardown(reason: str) -> None:
        ui.warn(f"{reason}; stopping the run on every host")
        problems = stop_everywhere(state, conns, FAILURE_GRACE)
        for host, problem in problems.items():
            ui.warn(f"{host}: stop: {problem}")

    def tick() -> bool:
        if len(joined) < state.world_size and time.monotonic() > deadline and not first_failure and not hang:
            missing = sorted(set(range(state.world_size)) - joined)
            hang.extend(f"{by_rank[r].host} r{r}" for r in missing if r in by_rank)
            teardown(f"ranks never joined within job.join_timeout={join_timeout:g}s: {', '.join(hang)}")
        return True

    try:
        follow(followers, on_line, on_end, tick)
    finally:
        for f in followers:
            f.stream.close()
    return _outcome(state, exits, first_failure, hang)


def _code_text(code: int | None) -> str:
    if code is None:
        return "no exit code (killed with its wrapper, e.g. SIGKILL)"
    if code > 128:
        return f"code {code} (signal {code - 128})"
    return f"code {code}"


def _outcome(state: RunState, exits: dict[int, int | None], failures: list[Followed], hang: list[str]) -> Outcome:
    if hang:
        return Outcome(ExitCode.HANG, f"ranks never joined: {', '.join(hang)}; the run was stopped. "
                       "Check the interface and firewall (distctl check), and the rank logs (distctl logs)")
    if not failures and all(c == 0 for c in exits.values()):
        return Outcome(ExitCode.OK, f"run {state.run_id} finished: {len(exits)} rank(s) exited 0")
    f = failures[0]
    if exits.get(f.rank) == STOPPED and all(c in (STOPPED, 0) for c in exits.values()):
        return Outcome(ExitCode.RUN_FAILED, f"run {state.run_id} was stopped (checkpointed); "
                       "continue it with: distctl up --resume")
    tail = "\n".join(f"    {line}" for line in list(f.tail)[-10:])
    return Outcome(ExitCode.RUN_FAILED, f"rank {f.rank} on {f.host} failed first: exited with "
                   f"{_code_text(exits.get(f.rank))}; last lines of its log:\n{tail}")


def raise_for(outcome: Outcome) -> None:
    if outcome.code != ExitCode.OK:
        raise DistctlError(outcome.message, outcome.code)
