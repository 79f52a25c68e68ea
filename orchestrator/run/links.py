"""Keep following a run across link faults between the workstation and its hosts.

A follower's stream can end or go quiet while the run itself is healthy: its process was
killed, sshd dropped the session, or the network between the workstation and the host broke
(the hosts still reach each other, so training goes on). None of that is a failed rank.
When a host's stream ends before every rank of that host reported its exit, or stays silent
for longer than a few of the follower's heartbeats, the host is reconnected in the background
with backoff and followed again from the exact line each rank had reached (the follower skips
what was already shown): no line lost, none shown twice. Only a host that stays unreachable
past `ssh.reconnect_timeout` is given up on, and reported as "run state unknown", never as a
failed rank.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from orchestrator.contract import RECORD_AT, RECORD_EXIT, RECORD_HEARTBEAT, RECORD_MISSING
from orchestrator.errors import DistctlError
from orchestrator.ssh.remote import Connection, connect
from orchestrator.plan.scripts import FROM_PREPARE, fill_shown, follow_script
from orchestrator.plan.state import HostState, RunState
from orchestrator.ssh.stream import Followed
from orchestrator.timers import Timers, current as current_timers

if TYPE_CHECKING:
    from orchestrator.console.ui import Ui


class HostLinks:
    """One follower per host, reopened after a link fault. `on_line` gets every line but the
    heartbeats; `conns` is updated in place when a host gets a new connection, so teardown and
    stop use the live one. `timers`: how long a silent link may be, how fast one is retried
    (timers.py; by default those of this process)."""

    def __init__(self, state: RunState, conns: dict[str, Connection], ui: Ui, reconnect_timeout: float,
                 ranks: set[int] | None = None, after_prepare: bool = False, timers: Timers | None = None,
                 grep: str | None = None):
        self.state = state
        self.timers = timers or current_timers()
        self.grep = grep  # `logs --grep`: the followers send only matching lines
        self.conns = conns
        self.ui = ui
        self.reconnect_timeout = reconnect_timeout
        self.hosts = {hs.host.name: hs for hs in state.hosts
                      if any(ranks is None or r.rank in ranks for r in hs.ranks)}
        self.wanted = {r.rank for hs in self.hosts.values() for r in hs.ranks if ranks is None or r.rank in ranks}
        self.seen = {rank: 0 for rank in self.wanted}
        # Right after `up`'s prepare step: each follower starts where that step counted the
        # log (rankR.from; a resumed run's logs hold earlier attempts) and says where (`at`).
        self._from_prepare = set(self.wanted) if after_prepare else set()
        self.ended: set[int] = set()
        self.unreachable: dict[str, str] = {}  # host -> why, once given up on
        self.missing: set[str] = set()  # hosts without the run's directory (reimaged, workdir cleaned)
        self._new: queue.Queue[Followed] = queue.Queue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self.abandoned: set[str] = set()  # hosts dropped from the run by its restart agent

    # -------------------------------------------------------------- the stream's side

    def open_all(self, live: bool = True, tail: int | None = None) -> list[Followed]:
        """A follower per host; `tail` starts each log at its last N lines (the follower says
        where that is, so a reopened one still skips exactly what was shown). Not `live`:
        replay what is there and end."""
        return [self._open(hs, self.conns[name], live, tail) for name, hs in self.hosts.items()]

    def line(self, f: Followed, text: str, on_line: Callable[[Followed, str], None]) -> None:
        """Count what reached the workstation, so a reopened follower skips exactly that."""
        head, _, rest = text.partition(" ")
        if text == RECORD_HEARTBEAT:
            return
        if head == RECORD_AT:  # a follower started at a tail: the lines before it count as seen
            rank, _, count = rest.partition(" ")
            if rank.isdigit() and count.isdigit() and int(rank) in self.seen:
                self.seen[int(rank)] = int(count)
                self._from_prepare.discard(int(rank))
            return
        if text == RECORD_MISSING:  # no run directory there: nothing to follow, now or after a reconnect
            self.missing.add(f.host)
            self.ended.update(r.rank for r in self.hosts[f.host].ranks if r.rank in self.wanted)
            return
        if head == RECORD_EXIT:
            self.ended.add(int(rest.split(" ")[0]))
        elif head.isdigit() and int(head) in self.seen:
            self.seen[int(head)] += 1
        on_line(f, text)

    def take_new(self) -> list[Followed]:
        out = []
        while True:
            try:
                out.append(self._new.get_nowait())
            except queue.Empty:
                return out

    def pending(self) -> bool:
        with self._lock:
            return bool(self._pending) or not self._new.empty()

    def stalled(self, f: Followed, quiet_s: float) -> bool:
        return quiet_s > self.timers.stall or f.host in self.abandoned

    def abandon(self, host: str) -> None:
        """The run went on without `host` (its agent dropped it): stop following it."""
        self.abandoned.add(host)

    def closed(self, f: Followed) -> None:
        hs = self.hosts[f.host]
        if (all(r.rank in self.ended for r in hs.ranks if r.rank in self.wanted) or self._stopping
                or f.host in self.abandoned):
            threading.Thread(target=f.stream.close, daemon=True).start()
            return
        with self._lock:
            self._pending.add(f.host)
        self.ui.warn(f"{f.host}: connection lost, reconnecting")
        threading.Thread(target=self._reconnect, args=(hs, f), daemon=True).start()

    def stop(self) -> None:
        """No more reconnecting (the caller is done: Ctrl-C, or the run is over)."""
        self._stopping = True

    # -------------------------------------------------------------- reconnecting

    def _open(self, hs: HostState, conn: Connection, live: bool = True, tail: int | None = None) -> Followed:
        skip: dict[int, int | str] = {
            r.rank: FROM_PREPARE if r.rank in self._from_prepare else self.seen[r.rank]
            for r in hs.ranks if r.rank in self.wanted and r.rank not in self.ended}
        if live and tail is None and self.grep is None:  # the plan's STREAM step, and its REFOLLOW step
            command = fill_shown(self.state.refollow(hs), skip)
        else:
            command = follow_script(hs.python, hs.rundir, skip, live, tail, self.timers.heartbeat, self.grep)
        return Followed(hs.host.name, conn.open_stream(command))

    def _reconnect(self, hs: HostState, old: Followed) -> None:
        name = hs.host.name
        # A killed follower, or one starved of CPU, leaves the connection fine: try it first (a
        # channel open is bounded, remote.CHANNEL_OPEN_TIMEOUT_S), then a new connection.
        conn: Connection | None = self.conns.get(name)
        threading.Thread(target=_close_stream, args=(old,), daemon=True).start()
        deadline = time.monotonic() + self.reconnect_timeout
        delay, problem = self.timers.first_retry, ""
        while not self._stopping and name not in self.abandoned:
            try:
                if conn is None:
                    conn = connect(hs.host, self.state.ssh)
                self._new.put(self._open(hs, conn))
                self.conns[name] = conn
                self.ui.info(f"{name}: reconnected")
                break
            except DistctlError as exc:
                problem = getattr(exc, "cause", str(exc))
                threading.Thread(target=_close_quietly, args=(conn,), daemon=True).start()
                conn = None
            if name in self.abandoned:
                break
            if time.monotonic() + delay > deadline:
                self.unreachable[name] = problem or "no answer"
                self.ui.warn(f"{name}: unreachable for {self.reconnect_timeout:g} s ({problem}); run state "
                             f"unknown. Re-attach with: distctl logs -f {self.state.run_id}")
                break
            time.sleep(delay)
            delay = min(self.timers.max_retry, delay * 2)
        with self._lock:
            self._pending.discard(name)


def _close_stream(f: Followed) -> None:
    try:
        f.stream.close()
    except Exception:
        pass


def _close_quietly(conn: Connection | None) -> None:
    if conn is None:
        return
    try:
        conn.close()
    except Exception:
        pass
