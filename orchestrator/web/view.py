"""Everything the page shows about one run, kept on the workstation, bounded in memory.

Feed threads write into a `RunView` (rank lines, exits, the restart agents' events, what each
host's status command said); the server reads it as deltas, one `Cursor` per open page, so a
page receives each bucket, line and mark once, and a series again in full only after it was
merged (series.py). Memory is bounded whatever the run's length: `Series.cap` buckets per
(rank, key), at most `max_keys` keys per rank, the last `max_lines` log lines, the last 20
lines of each rank for its failure report.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from orchestrator.run.lifecycle import RankStatus
from orchestrator.plan.state import RunState, summarize
from orchestrator.web.progress import Mark, Reading, parse_progress
from orchestrator.web.ranks import RankView, failure_report, restart_report, stragglers
from orchestrator.web.series import CAP, Series

SGR = re.compile(r"\x1b\[[0-9;]*m")
LINE_CHARS = 4000  # longer lines are cut: a page holds thousands of them
FIRST_LINES = 1000  # what a newly opened page gets of the log at once
LINES_PER_PUSH = 2000  # more than this in one push: the oldest of them are skipped (and counted)


@dataclass
class Cursor:
    """What one page already has."""

    series: dict[tuple[int, str], tuple[int, int, int]] = field(default_factory=dict)  # gen, complete, version
    line_seq: int = -1
    notice_seq: int = 0
    marks: int = 0
    meta: int = -1


class RunView:
    def __init__(self, state: RunState, source: str, clock=time.time, cap: int = CAP, max_keys: int = 16,
                 max_lines: int = 5000):
        self.state = state
        self.source = source  # live | pulled: where the page's facts come from
        self.clock = clock
        self.cap, self.max_keys = cap, max_keys
        self.lock = threading.Lock()
        self.started = _epoch(state.started) or clock()
        self.ranks = {r.rank: RankView(r.rank, hs.host.name) for hs in state.hosts for r in hs.ranks}
        self.hosts: dict[str, dict[str, Any]] = {
            hs.host.name: {"name": hs.host.name, "address": hs.host.address, "interface": None,
                           "ranks": [r.rank for r in hs.ranks], "agent": None, "health": None,
                           "reachable": None, "why": None} for hs in state.hosts}
        self.series: dict[tuple[int, str], Series] = {}
        self.marks: list[dict] = []
        self.lines: deque[tuple[int, float, str, int, str]] = deque(maxlen=max_lines)
        self.seq = 0
        self.notices: deque[tuple[int, float, str]] = deque(maxlen=100)
        self.notice_seq = 0
        self.meta = 0
        self.agent: dict | None = None
        self.stop_requested = False
        self.report_at_stop: dict | None = None  # a failure seen before the page's Stop still shows
        self.last_report: dict | None = None  # the failure a restart recovered from still shows
        self.report_attempt = -1  # the restarts seen when last_report was taken (-1: none this attempt)

    # ------------------------------------------------------------------ writers (feed threads)

    def line(self, host: str, rank: int, text: str, live: bool = True) -> None:
        """One line of a rank's log; `live` False: replayed history (no time known)."""
        text = SGR.sub("", text.rsplit("\r", 1)[-1])[:LINE_CHARS]
        now = self.clock()
        t = now - self.started if live else math.nan
        with self.lock:
            r = self.ranks.get(rank)
            if r is None:
                return
            if live:
                self.lines.append((self.seq, round(t, 2), host, rank, text))
                self.seq += 1
                r.tail.append(text)
            found = parse_progress(text)
            if isinstance(found, Reading):
                self._reading(r, found, t, now if live else None)
            elif isinstance(found, Mark):
                self._mark(found.text, t, r.step)

    def _reading(self, r: RankView, found: Reading, t: float, now: float | None) -> None:
        r.step, r.total = found.step, found.total if found.total is not None else r.total
        if now is not None:
            r.heard = now
            r.recent.append((t, found.step))
        if r.state == "starting":
            r.state = "running"
        for key, value in found.values.items():
            s = self.series.get((r.rank, key))
            if s is None:
                if len(r.keys) >= self.max_keys:
                    continue
                r.keys.add(key)
                s = self.series[(r.rank, key)] = Series(self.cap)
            s.add(found.step, t, value)
        self.meta += 1

    def _mark(self, text: str, t: float, step: int | None) -> None:
        for m in self.marks[-50:]:
            if m["text"] == text:  # every rank's log (and every host's agent) says the same
                if m["step"] is None and step is not None:
                    m["step"] = step
                    self.meta += 1
                return
        self.marks.append({"t": _num(t, 2), "step": step, "text": text})
        if text.startswith("restart "):
            self._restarted(text)
        if len(self.marks) > 500:
            del self.marks[:100]
        self.meta += 1

    def _restarted(self, text: str) -> None:
        """The restart agent blamed a rank (`restart 1/3 after node2 r1 exited 137`): the report of
        the failure it recovered from, however briefly the exit showed (a status poll may have
        missed it); what the ranks exited with belongs to the attempt before."""
        self.last_report = restart_report(text, self.ranks) or self.last_report
        for r in self.ranks.values():
            if r.state in ("exited", "killed"):
                r.state, r.code, r.exit_at = "restarting", None, None
        self.report_attempt = sum(1 for m in self.marks if m["text"].startswith("restart "))

    def event(self, host: str, text: str) -> None:
        """A restart agent's decision (`restart ...`, `dropped HOST`, `end OUTCOME: why`)."""
        kind, _, rest = text.partition(" ")
        with self.lock:
            furthest = max((r.step for r in self.ranks.values() if r.step is not None), default=None)
            if kind == "dropped":
                self._mark(f"{rest} dropped from the run", self.clock() - self.started, furthest)
            elif kind == "restart":
                self._mark(text, self.clock() - self.started, furthest)
        self.notice(f"{host}: {text}" if kind == "end" else text)

    def exit(self, host: str, rank: int, code: int | None, at: float | None) -> None:
        with self.lock:
            r = self.ranks.get(rank)
            if r is not None:
                r.state, r.code, r.exit_at = ("exited" if code is not None else "killed"), code, at
                self._remember_failure()
                self.meta += 1

    def statuses(self, host: str, found: list[RankStatus], agent: dict | None) -> None:
        with self.lock:
            restarts = sum(1 for m in self.marks if m["text"].startswith("restart "))
            # A poll of an attempt a restart has already ended (it ran before the restart and is read
            # after it, on a loaded machine) would show that attempt's teardown as new exits.
            stale = agent is not None and int(agent.get("attempt") or 0) < restarts
            for s in ([] if stale else found):
                r = self.ranks.get(s.rank)
                if r is not None and s.state not in ("missing", "unreachable"):
                    state = "restarting" if _restarting(s, agent) else s.state
                    ended = state in ("exited", "killed")  # running again after a restart: no code
                    r.state, r.code = state, (s.code if s.code is not None else r.code) if ended else None
                    r.exit_at = (s.at if s.at is not None else r.exit_at) if ended else None
            self._remember_failure()
            self.hosts[host].update(reachable=True, why=None, agent=agent)
            if agent and int(agent.get("attempt") or 0) >= int((self.agent or {}).get("attempt") or 0):
                self.agent = agent
            self.meta += 1

    def health(self, host: str, facts: dict) -> None:
        with self.lock:
            interface = facts.pop("interface", None)
            self.hosts[host].update(health=facts, **({"interface": interface} if interface else {}))
            self.meta += 1

    def unreachable(self, host: str, why: str) -> None:
        with self.lock:
            self.hosts[host].update(reachable=False, why=why)
            self.meta += 1

    def notice(self, text: str) -> None:
        with self.lock:
            self.notice_seq += 1
            self.notices.append((self.notice_seq, round(self.clock() - self.started, 2), text))

    def request_stop(self) -> None:
        """The page asked to stop the run: what the ranks exit with from now on is no failure."""
        with self.lock:
            if not self.stop_requested:
                self.report_at_stop, self.stop_requested = self.failure(), True
                self.meta += 1

    def log_lines(self, rank: int, lines: list[str]) -> None:
        """Lines loaded on demand (the last lines of a rank's log): shown in the log pane as they are."""
        host = self.ranks[rank].host
        with self.lock:
            for text in lines:
                self.lines.append((self.seq, math.nan, host, rank, SGR.sub("", text)[:LINE_CHARS]))
                self.seq += 1

    # ------------------------------------------------------------------ readers (the server)

    def delta(self, cursor: Cursor) -> dict:
        """What the page behind `cursor` does not have yet ({} when nothing); moves the cursor."""
        with self.lock:
            out: dict = {}
            if cursor.meta != self.meta:
                cursor.meta = self.meta
                out.update(self._meta())
            series = [u for key, s in self.series.items() if (u := _series_update(key, s, cursor))]
            if series:
                out["series"] = series
            if cursor.marks < len(self.marks) or cursor.marks > len(self.marks):
                out["marks"], cursor.marks = self.marks[:], len(self.marks)
            lines, skipped = self._new_lines(cursor)
            if lines:
                out["lines"] = lines
            if skipped:
                out["skipped"] = skipped
            notices = [n for n in self.notices if n[0] > cursor.notice_seq]
            if notices:
                out["notices"], cursor.notice_seq = notices, notices[-1][0]
            return out

    def _new_lines(self, cursor: Cursor) -> tuple[list, int]:
        if not self.lines or self.lines[-1][0] <= cursor.line_seq:
            return [], 0
        first = cursor.line_seq < 0
        fresh = len(self.lines) if self.lines[0][0] > cursor.line_seq else self.lines[-1][0] - cursor.line_seq
        limit = FIRST_LINES if first else LINES_PER_PUSH
        taken = list(self.lines)[-min(fresh, limit):]
        cursor.line_seq = self.lines[-1][0]
        return [[s, _num(t, 2), h, r, text] for s, t, h, r, text in taken], (0 if first else fresh - len(taken))

    def _meta(self) -> dict:
        ranks = sorted(self.ranks.values(), key=lambda r: r.rank)
        now = self.clock()
        lagging = stragglers(ranks, now)
        return {"run": self._run(ranks, now), "hosts": list(self.hosts.values()),
                "ranks": [{"rank": r.rank, "host": r.host, "state": r.state, "code": r.code, "step": r.step,
                           "total": r.total, "rate": _num(r.rate(), 3), "straggler": r.rank in lagging,
                           "keys": sorted(r.keys)} for r in ranks],
                "failure": self.failure()}

    def _run(self, ranks: list[RankView], now: float) -> dict:
        summary = summarize([(r.state, r.code) for r in ranks])
        if summary in ("failed", None) and self.stop_requested and all(r.state in ("exited", "killed") for r in ranks):
            summary = "stopped"
        agent = self.agent or {}
        restarts = sum(1 for m in self.marks if m["text"].startswith("restart "))
        ends = [r.exit_at for r in ranks]
        ended = summary in ("finished", "failed", "stopped") and None not in ends
        return {"id": self.state.run_id, "inventory": self.state.inventory, "source": self.source,
                "state": summary or ("starting" if all(r.state == "starting" for r in ranks) else "unknown"),
                "started": self.started, "now": now,
                "elapsed": round((max(e for e in ends if e is not None) if ended else now) - self.started, 1),
                "attempt": int(agent.get("attempt") or restarts),
                "restarts": max(restarts, len(agent.get("restarts") or [])),
                "max_restarts": self.state.max_restarts, "world_size": self.state.world_size,
                "trainer": self.state.trainer}

    def failure(self) -> dict | None:
        """The culprit (the rank that most likely failed first, as `up` and `status` name it) and the
        collateral (the other failed ranks); None while nothing failed, or when the run was stopped.
        After a restart, the failure it recovered from, marked `restarted`."""
        if self.stop_requested:
            return self.report_at_stop
        report = self._current_failure()
        if report is None and self.last_report:
            return {**self.last_report, "restarted": True}
        return report

    def _remember_failure(self) -> None:
        """Called on every exit and status: a restart may undo a failure before any page asked."""
        restarts = sum(1 for m in self.marks if m["text"].startswith("restart "))
        if self.report_attempt == restarts or self.stop_requested:
            return  # the first report of an attempt names its culprit; later ones see the teardown too
        report = self._current_failure()
        if report is not None:
            self.last_report, self.report_attempt = report, restarts

    def _current_failure(self) -> dict | None:
        return failure_report(self.ranks, self.state)


def _restarting(s: RankStatus, agent: dict | None) -> bool:
    """A rank that failed while its host's restart agent lives and has not decided how the run ends:
    the agent restarts it (its restart event names the culprit) or records the run's end (then its
    exits count). The status script means the same by `restarting`, but calls a rank whose exit file
    is written while its group still lives `exited`: the restart's teardown (143), read under attempt 1
    already (the agent records the new attempt before it stops the ranks), named a torn-down rank the
    culprit on the test cluster, in one poll of each host right after `restart 1/1`."""
    undecided = agent is not None and not agent.get("outcome") and not agent.get("gone")
    restarts = agent is not None and int(agent.get("max_restarts") or 0) > 0  # a watcher restarts nothing
    return undecided and restarts and s.state in ("exited", "killed") and s.code != 0


def _series_update(key: tuple[int, str], s: Series, cursor: Cursor) -> dict | None:
    gen, complete, version = cursor.series.get(key, (-1, 0, -1))
    if version == s.version:
        return None
    start = complete if gen == s.gen else 0
    cursor.series[key] = (s.gen, s.complete(), s.version)
    return {"rank": key[0], "key": key[1], "gen": s.gen, "from": start, "stride": s.stride,
            # Values exact: a rounded one would turn a timestamp or a large counter into a step curve.
            "points": [[_num(step, 0), _num(t, 2), m, lo, hi] for step, t, m, lo, hi in s.buckets(start)]}


def _num(value: float | None, digits: int) -> float | int | None:
    if value is None or not math.isfinite(value):
        return None
    return int(value) if digits == 0 else round(value, digits)


def _epoch(iso: str | None) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso).timestamp() if iso else None
    except ValueError:
        return None
