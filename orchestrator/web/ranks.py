"""Each rank as the live view sees it, and what the ranks together say: who lags (stragglers),
who failed first (the failure report). Pure: the view holds the state, these read it."""

from __future__ import annotations

import re
import statistics
from collections import deque
from dataclasses import dataclass, field

from orchestrator.contract import STOPPED
from orchestrator.plan.state import RunState
from orchestrator.run.watch import on_workstation_clock, root_causes

RESTART_AFTER = re.compile(r" after (\S+) r(\d+) (?:exited (-?\d+)|was killed)")  # hostside/agent.py's words


@dataclass
class RankView:
    rank: int
    host: str
    state: str = "starting"
    code: int | None = None
    exit_at: float | None = None  # host clock
    step: int | None = None
    total: int | None = None
    heard: float | None = None  # workstation time of its last progress line
    recent: deque = field(default_factory=lambda: deque(maxlen=20))  # (t, step) for the rate
    tail: deque = field(default_factory=lambda: deque(maxlen=20))
    keys: set[str] = field(default_factory=set)

    def rate(self) -> float | None:
        """Steps per second over its recent progress lines (live lines only: replayed ones have no time)."""
        if len(self.recent) < 2:
            return None
        (t0, s0), (t1, s1) = self.recent[0], self.recent[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 >= s0 else None


def stragglers(ranks: list[RankView], now: float) -> set[int]:
    """Running ranks that lag: several steps behind the furthest, or silent for more than three
    times the usual gap between progress lines (and 10 s)."""
    live = [r for r in ranks if r.state == "running" and r.step is not None]
    if len(live) < 2:
        return set()
    furthest = max(r.step for r in live if r.step is not None)
    quiet = {r.rank: now - r.heard for r in live if r.heard is not None}
    usual = statistics.median(quiet.values()) if quiet else 0.0
    return {r.rank for r in live if r.step is not None and furthest - r.step >= max(2, 0.05 * furthest)
            or quiet.get(r.rank, 0.0) > max(10.0, 3 * usual)}


def failure_report(ranks: dict[int, RankView], state: RunState) -> dict | None:
    """The culprit (the rank that most likely failed first, as `up` and `status` name it), its
    last lines, and the collateral (the other failed ranks); None while nothing failed, or when
    the bundled trainer's ranks all stopped after a checkpoint."""
    exits = {r.rank: r.code for r in ranks.values() if r.state in ("exited", "killed")}
    stopped = state.trainer and bool(exits) and set(exits.values()) <= {0, STOPPED}
    if stopped or all(c == 0 for c in exits.values()):
        return None
    times = {r.rank: r.exit_at for r in ranks.values() if r.exit_at is not None}
    killed = {r.rank for r in ranks.values() if r.state == "killed"}
    order = root_causes(exits, on_workstation_clock(times, state.clock_offsets()), state.trainer, killed)
    if not order:
        return None
    culprit = ranks[order[0]]
    return {"rank": culprit.rank, "host": culprit.host, "code": culprit.code, "tail": list(culprit.tail)[-10:],
            "collateral": [{"rank": r, "host": ranks[r].host, "code": ranks[r].code} for r in order[1:]]}


def restart_report(text: str, ranks: dict[int, RankView]) -> dict | None:
    """The report of the rank a restart agent blamed (`restart 1/3 after node2 r1 exited 137`)."""
    blamed = RESTART_AFTER.search(text)
    culprit = ranks.get(int(blamed[2])) if blamed else None
    if culprit is None or blamed is None:
        return None
    return {"rank": culprit.rank, "host": culprit.host, "code": int(blamed[3]) if blamed[3] is not None else None,
            "tail": list(culprit.tail)[-10:], "collateral": []}
