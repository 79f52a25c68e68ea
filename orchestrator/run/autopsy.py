"""Culprit and collateral: when a rank fails under an attached `up`, what the other ranks were
doing (their stacks, taken before the teardown, bounded to a few seconds) and which ranks died
only as a consequence.

Pure but for `take_stacks`. The rules:
- collateral: a failed rank whose last lines hold a peer-lost or timeout error (gloo, NCCL,
  c10d: `Connection reset by peer`, `Timed out`, `DistNetworkError`, ...), or one that exited
  after the culprit;
- the culprit is the first failure that is not collateral; when every failure is (the others'
  collective timed out), it is the rank still running outside any collective while the others
  waited: the one that never arrived, named with where it is.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

from orchestrator.run.stacks import RankDump, activity, collect, rollcall, saved
from orchestrator.ssh.remote import Connection
from orchestrator.plan.state import RunState

STACKS_TIMEOUT_S = 8.0  # the teardown waits at most this long for the stacks
PEER_LOST = re.compile(r"connection (reset|closed) by peer|broken pipe|timed? ?out|timeout|communicator was aborted|"
                       r"ncclRemoteError|DistNetworkError|DistBackendError|peer (lost|closed)|EOF from peer",
                       re.IGNORECASE)
REPORT = "autopsy.txt"  # in rank 0's run directory: status and pull find it
# hostside/agent.py (a watcher): one line per failure on its host, the folder of the stacks it took
# of the host's other ranks right then
FAILURE_STACKS = "failure-stacks"


def looks_collateral(lines: Iterable[str]) -> bool:
    """The last lines name a lost peer or a timed-out collective."""
    return any(PEER_LOST.search(line) for line in lines)


def take_stacks(state: RunState, conns: dict[str, Connection], ranks: set[int]) -> list[RankDump]:
    """The stacks of `ranks` (those still running), or [] when they cannot be had in time."""
    if not ranks:
        return []
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-failure"
    try:
        dumps, _ = collect(state, conns, ranks, {}, stamp, False, 32, timeout=STACKS_TIMEOUT_S)
    except Exception:  # the teardown must go on whatever happened here
        return []
    return [d for d in dumps if d.main]  # a rank that exited meanwhile is reported by its exit


def is_waiting(d: RankDump) -> bool:
    main = d.main
    thread = main.main_thread if main else None
    return bool(thread) and activity(thread, d.workdir).waiting  # type: ignore[arg-type]


def culprit(failed: list[int], tails: dict[int, list[str]], stacks: list[RankDump]) -> tuple[int | None, str]:
    """(the culprit's rank, why) from the failures in order and the live ranks' stacks.
    None: no rank stands out."""
    for rank in failed:
        if not looks_collateral(tails.get(rank, [])):
            return rank, "failed first"
    dumped = [d for d in stacks if d.main]  # a rank that exited meanwhile says nothing here
    stuck = [d for d in dumped if not is_waiting(d)]
    waiting = [d for d in dumped if is_waiting(d)]
    if failed and len(stuck) == 1 and (waiting or len(dumped) == 1):
        d = stuck[0]
        where = activity(d.main.main_thread, d.workdir).text  # type: ignore[union-attr,arg-type]
        return d.rank, f"never arrived: still running, {where}, while the others' collective failed"
    return (failed[0], "failed first") if failed else (None, "")


def collateral(failed: list[int], culprit_rank: int | None, tails: dict[int, list[str]],
               times: dict[int, float]) -> list[int]:
    """Failed ranks that died only as a consequence of the culprit."""
    if culprit_rank is None:
        return []
    after = times.get(culprit_rank)
    return sorted(r for r in failed if r != culprit_rank and (
        looks_collateral(tails.get(r, [])) or (after is not None and times.get(r, after) >= after)))


def report(culprit_line: str, stacks: list[RankDump], consequences: list[int], host_of: dict[int, str]) -> list[str]:
    """The lines `up` prints and keeps in rank 0's run directory."""
    lines = [culprit_line]
    if stacks:
        lines.append(f"the other ranks, before the teardown: {rollcall(stacks)}")
    if consequences:
        from orchestrator.console.rankset import ranks_phrase

        hosts = sorted({host_of.get(r, "?") for r in consequences})
        lines.append(f"{ranks_phrase(consequences)} ({', '.join(hosts)}) died only as a consequence "
                     "(a lost peer or a timed-out collective, or an exit after the culprit's)")
    return lines


# ------------------------------------------------------------------ a run no attached up saw fail

def saved_stacks(state: RunState, conns: dict[str, Connection], fanout: int) -> list[RankDump]:
    """The stacks each host's watcher took of its other ranks when one of its own failed
    (hostside/agent.py, FAILURE_STACKS), newest per host; none where it took none."""
    return [d for d in saved(state, conns, fanout, FAILURE_STACKS)[0] if d.main]


def from_records(failed: list[int], tails: dict[int, list[str]], stacks: list[RankDump], running: list[int],
                 times: dict[int, float], host_of: dict[int, str], watched: Iterable[int] = ()) -> list[str]:
    """Culprit and collateral of a failed run that no attached `up` analysed (`status`, from
    any workstation): from the ranks' exits in order (`failed`, the most likely cause first),
    their last lines, the stacks the hosts' watchers saved, the ranks still `running`, and those
    a watcher stopped after a failure on their host (`watched`, not among `failed`).
    Without stacks, a lone rank still running while every failure is a peer-lost or timeout
    error is taken for the one that never arrived (`distctl stacks` shows where it is)."""
    if not failed:
        return []
    rank, why = culprit(failed, tails, stacks)
    if rank is None:
        return []
    if why == "failed first" and len(running) == 1 and all(looks_collateral(tails.get(r, [])) for r in failed):
        rank, why = running[0], (f"never arrived: still running while the others' collective failed "
                                 f"(distctl stacks --rank {running[0]} shows where)")
    lines = [f"culprit: rank {rank} on {host_of.get(rank, '?')} {why}"] if rank != failed[0] else []
    lines += report("", [], collateral(failed, rank, tails, times), host_of)[1:]
    if stacks:
        lines.append(f"the other ranks on the hosts of the failures, when they failed: {rollcall(stacks)}")
    if watched:
        from orchestrator.console.rankset import ranks_phrase

        lines.append(f"{ranks_phrase(list(watched))}: stopped by the watcher of their host "
                     f"({', '.join(sorted({host_of.get(r, '?') for r in watched}))}) after that failure")
    return lines


def failed_tails(state: RunState, conns: dict[str, Connection], failed: list[int], host_of: dict[int, str],
                 lines: int = 10, most: int = 32) -> dict[int, list[str]]:
    """The last lines of the first `most` failed ranks (those that decide the culprit)."""
    from orchestrator.run.tails import read_tail

    return {rank: read_tail(conns[host_of[rank]], state.host(host_of[rank]).rundir, rank, lines)
            for rank in failed[:most] if host_of.get(rank) in conns}
