"""Naming the straggler while a run is followed, for any Python program.

While an attached `up` (or `logs -f`) follows a run, a background thread takes one stack sample
of every rank every few seconds (timers.straggler_every), as `distctl stacks` takes them
(stacks.collect, over the connections already held; one round at a time, nothing saved on the
hosts), and keeps each rank's last WINDOW answers to one question: was its main thread waiting
in a collective? The verdict is `distctl stacks --samples`' rule (stacks.straggler_rank) over
that window, with hysteresis so that it does not flap: a rank is named once the rule holds, and
said to have recovered only once a looser rule no longer holds for it (its share above 3/4 of
the others' median, or their median below 0.35). Each change is one line, and the verdict is
kept in rank 0's run directory as `straggler` (JSON: host, rank, since, shares), removed on
recovery, so `status` from any workstation marks the rank.

Where no rank can be sampled (a program that is not Python, ranks not started yet) the watch
asks ever more rarely (up to IDLE_MAX_S) and says nothing.
"""

from __future__ import annotations

import json
import shlex
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orchestrator.errors import HostError
from orchestrator.run.stacks import activity, collect, straggler_line, straggler_rank, waited_for
from orchestrator.ssh.remote import Connection
from orchestrator.plan.state import RunState
from orchestrator.timers import current as current_timers

if TYPE_CHECKING:
    from orchestrator.console.ui import Ui

WINDOW = 20  # samples per rank the verdict looks at: a minute at the default period
MIN_SAMPLES = 10  # a rank is judged once this many of its samples are in the window
RECOVER_MEDIAN, RECOVER_OWN = 0.35, 0.75  # the looser rule a named rank must stop meeting
FILE = "straggler"  # in rank 0's run directory: status reads it
IDLE_MAX_S = 30.0
SAMPLE_TIMEOUT_S = 10.0  # one round on one host, at most (a dump takes milliseconds)
NO_SAVE = "-"  # hostside/stacks.py keeps no copy of these samples
STOP_WAIT_S = 1.0  # what the end of `up` waits for a round under way


@dataclass(frozen=True)
class Verdict:
    rank: int
    host: str
    since: float  # when it was named (workstation clock)
    shares: dict[int, tuple[float, int]] = field(hash=False)  # rank -> (share waiting, samples)

    def named(self) -> str:
        return straggler_line(self.rank, self.host, self.shares)

    def recovered(self) -> str:
        return f"rank {self.rank} on {self.host} is no longer a straggler"

    def record(self) -> str:
        """The `straggler` file's one line."""
        return json.dumps({"host": self.host, "rank": self.rank,
                           "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since)),
                           "shares": {str(r): round(share, 3) for r, (share, _) in sorted(self.shares.items())},
                           "samples": self.shares[self.rank][1], "line": self.named()})


class Judge:
    """The pure part: each rank's window of samples, and the verdict with its hysteresis."""

    def __init__(self, host_of: dict[int, str], window: int = WINDOW, min_samples: int = MIN_SAMPLES):
        self.host_of = host_of
        self.window, self.min_samples = window, min_samples
        self.windows: dict[int, deque[bool]] = {}
        self.current: Verdict | None = None

    def shares(self) -> dict[int, tuple[float, int]]:
        return {r: (sum(w) / len(w), len(w)) for r, w in self.windows.items() if len(w) >= self.min_samples}

    def add(self, waiting: dict[int, bool], now: float) -> list[tuple[str, Verdict]]:
        """One round (rank -> its main thread waited in a collective); the changes it makes:
        ("recovered", verdict) and/or ("named", verdict)."""
        for rank, waited in waiting.items():
            self.windows.setdefault(rank, deque(maxlen=self.window)).append(waited)
        shares = self.shares()
        changes = []
        if self.current and waited_for(shares, self.current.rank, RECOVER_MEDIAN, RECOVER_OWN) is None:
            changes.append(("recovered", Verdict(self.current.rank, self.current.host, self.current.since, shares)))
            self.current = None
        slowest = None if self.current else straggler_rank(shares)
        if slowest is not None:
            self.current = Verdict(slowest, self.host_of.get(slowest, "?"), now, shares)
            changes.append(("named", self.current))
        return changes

    def judging(self) -> bool:
        """Enough samples of at least two ranks for a verdict."""
        return len(self.shares()) >= 2


class Watch:
    """The sampling thread: one round every `every` seconds until stopped."""

    def __init__(self, state: RunState, conns: dict[str, Connection], ui: Ui, every: float, fanout: int = 32):
        self.state, self.conns, self.ui, self.every, self.fanout = state, conns, ui, every, fanout
        self.ranks = {r.rank for hs in state.hosts for r in hs.ranks}
        self.judge = Judge({r.rank: hs.host.name for hs in state.hosts for r in hs.ranks})
        self._stop = threading.Event()
        self._synced = False  # the file agrees with this watch's verdict (a stale one is removed)
        self._thread = threading.Thread(target=self._loop, name="straggler-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """No more rounds. A round under way gets a moment to end (it says nothing more); one
        that takes longer (a stalled link) is left to end on its own."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_WAIT_S)

    def _loop(self) -> None:
        delay = self.every
        while not self._stop.wait(delay):
            waiting = self.sample()
            delay = self.every if waiting else min(IDLE_MAX_S, delay * 2)
            if waiting and not self._stop.is_set():
                try:
                    self.judge_round(waiting)
                except Exception:  # as in sample(): never a traceback in the middle of the run's lines
                    pass

    def sample(self) -> dict[int, bool]:
        """rank -> waiting in a collective, for every rank whose main thread could be dumped."""
        try:
            dumps, _ = collect(self.state, self.conns, self.ranks, {}, NO_SAVE, False, self.fanout,
                               timeout=SAMPLE_TIMEOUT_S)
        except Exception:  # a watch must never be why a run is not followed
            return {}
        return {d.rank: activity(d.main.main_thread, d.workdir).waiting
                for d in dumps if d.main and d.main.main_thread}

    def judge_round(self, waiting: dict[int, bool]) -> None:
        changes = self.judge.add(waiting, time.time())
        for kind, verdict in changes:
            if kind == "named":
                self.ui.warn(verdict.named())
            else:
                self.ui.info(verdict.recovered())
        if changes or (not self._synced and self.judge.judging()):
            self._synced = True
            self.keep(self.judge.current)

    def keep(self, verdict: Verdict | None) -> None:
        """The verdict as rank 0's run directory keeps it: the file, or none."""
        first = self.state.hosts[0]
        path = shlex.quote(f"{first.rundir}/{FILE}")
        conn = self.conns.get(first.host.name)
        if conn is None:
            return
        try:
            if verdict is None:
                conn.run(f"rm -f {path}", timeout=30)
            else:
                conn.run(f"cat >{path}.tmp && mv {path}.tmp {path}", stdin=(verdict.record() + "\n").encode(),
                         timeout=30)
        except HostError:
            pass  # said on the terminal already; status then shows the last verdict kept


@contextmanager
def watching(state: RunState, conns: dict[str, Connection], ui: Ui, enabled: bool = True,
             fanout: int = 32) -> Iterator[Watch | None]:
    """The straggler watch for as long as the block follows the run (`enabled`: not opted out)."""
    if not enabled:
        yield None
        return
    watch = Watch(state, conns, ui, current_timers().straggler_every, fanout)
    watch.start()
    try:
        yield watch
    finally:
        watch.stop()


def parse_record(text: str) -> dict | None:
    """The `straggler` file as status reads it (None: none, or not a record of ours)."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("rank"), int) else None
