"""The rank logs of one run directory on one stream (run from inside the directory).

    follow.py [--heartbeat=SECONDS] follow|replay TAIL [--grep REGEX] RANK:SKIP...

Every complete line of rankR.log comes out as `R line`, in order per rank. The first SKIP
lines of each log are dropped (already shown); SKIP `from` reads the count from rankR.from
(written by the prepare step: what earlier attempts wrote) and says it as `at R SKIP`.
TAIL >= 0 instead starts each log at its last TAIL lines (-1: no tail). `follow` keeps
reading while the process group of the rank (its id in rankR.pid) lives; `replay` reads
what is there. When a rank is done, its unfinished last line is flushed and `exit R CODE
TIME` follows: CODE from rankR.exit, TIME the mtime of that file by the clock of this host;
`-` for each when there is none (the rank was killed, or never started).

Under an agent that may start ranks again (agent.pid without the `agent.watch` mark of a
watcher) a rank is done only once the agent is gone too: a restart starts it again, and its
log goes on. Each line of agent.events (the
agent's decisions: restarts, dropped hosts, the end) comes out as `ev TEXT`. While following,
`hb` comes out after SECONDS (2) without output: the workstation tells a quiet run from a
stalled link by these (orchestrator/timers.py).

While following, the unfinished last line (a progress bar redrawn with `\r`) comes out
as `p R TEXT`, its newest redraw, when it changed and at most every PARTIAL_S seconds: not a
line (it is not counted, and comes again as a line once its newline is written).

Once `distctl stop` (run by a user) has marked the run directory (stop-requested), `stop TIME` comes
out, once, before the exit records it explains: TIME the mtime of that mark.

With `--grep REGEX` (a Python regex, searched in each line decoded as UTF-8) only matching
lines come out; `at R N` before a shown line (and after each read) says how many lines of
the log were consumed, so a follower reopened after a link fault skips exactly those.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import BinaryIO

from orchestrator.hostside.prelude import exit_record, group_alive, read_int, whole_lines

POLL_S = 0.2
HEARTBEAT_S = 2.0  # a line `hb` after this long without output, while following (--heartbeat)
PARTIAL_S = 2.0  # an unfinished line is sent at most this often


class Counted:
    """stdout, counting what was written (a pipe cannot say)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


class RankLog:
    def __init__(self, rank: int, skip: int, grep=None) -> None:
        self.rank = rank
        self.offset = 0  # bytes of rankR.log consumed so far
        self.partial = b""  # an unfinished last line, held back until its newline
        self.skip = skip
        self.partial_sent = b""  # its newest redraw, as last sent (`p R TEXT`)
        self.partial_at = 0.0
        self.grep = grep
        self.lines = skip  # lines of the log consumed (shown, skipped or filtered out)
        self.told = skip  # the count the workstation knows of

    def read(self) -> bytes:
        try:
            with open("rank%d.log" % self.rank, "rb") as f:
                f.seek(self.offset)
                return f.read()
        except OSError:
            return b""

    def start_at_tail(self, tail: int, out: Counted) -> None:
        """Seek to the end of the last complete line; print the `tail` lines (with a grep: the
        last `tail` matching lines) before it."""
        complete = self.read().split(b"\n")[:-1]
        self.offset = sum(len(line) + 1 for line in complete)
        self.skip = 0
        if self.grep is not None:
            found = [i for i, line in enumerate(complete) if self.grep.search(line.decode("utf-8", "replace"))]
            self.told = -1  # say where the first shown line is, even at 0
            for i in found[-tail:] if tail else []:
                self.lines = i
                self.write(complete[i], out)
            self.lines = len(complete)
            self.tell(out)
            return
        shown = complete[-tail:] if tail else []
        # Where the tail starts, so that a follower reopened later can skip exactly what was shown.
        out.write(b"at %d %d\n" % (self.rank, len(complete) - len(shown)))
        for line in shown:
            self.write(line, out)

    def pump(self, out: Counted, final: bool = False, live: bool = False) -> None:
        data = self.read()
        self.offset += len(data)
        lines, self.partial = whole_lines(self.partial, data, final)
        for line in lines:
            if self.skip > 0:
                self.skip -= 1
            else:
                self.write(line, out)
        self.tell(out)
        if lines:
            self.partial_sent = b""
        if live and not final and self.skip == 0:
            self.send_partial(out)

    def send_partial(self, out: Counted) -> None:
        """The newest redraw of the unfinished line, when it changed, at most every PARTIAL_S."""
        redraws = [part for part in self.partial.split(b"\r") if part]
        newest = redraws[-1] if redraws else b""
        now = time.monotonic()
        if newest and newest != self.partial_sent and now - self.partial_at >= PARTIAL_S:
            out.write(b"p %d %s\n" % (self.rank, newest))
            self.partial_sent, self.partial_at = newest, now

    def write(self, line: bytes, out: Counted) -> None:
        if self.grep is not None and not self.grep.search(line.decode("utf-8", "replace")):
            self.lines += 1
            return
        if self.grep is not None:
            self.tell(out)
        out.write(b"%d %s\n" % (self.rank, line))
        self.lines += 1
        self.told = self.lines

    def tell(self, out: Counted) -> None:
        """`at R N` when lines were filtered out since the workstation last knew the count."""
        if self.grep is not None and self.told != self.lines:
            out.write(b"at %d %d\n" % (self.rank, self.lines))
            self.told = self.lines

    def alive(self) -> bool:
        return group_alive(read_int("rank%d.pid" % self.rank))

    def exit_record(self) -> bytes:
        return exit_record(self.rank)


def recorded_start(rank: int) -> int:
    return read_int("rank%d.from" % rank) or 0


class Events:
    """agent.events, relayed line by line as `ev TEXT`."""

    def __init__(self) -> None:
        self.offset = 0

    def pump(self, out: Counted) -> None:
        try:
            with open("agent.events", "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        complete = data[:data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            out.write(b"ev %s\n" % line)


class StopMark:
    """stop-requested, said once as `stop TIME`."""

    def __init__(self) -> None:
        self.told = False

    def pump(self, out: Counted) -> None:
        if self.told:
            return
        try:
            at = os.path.getmtime("stop-requested")
        except OSError:
            return
        self.told = True
        out.write(b"stop %.3f\n" % at)


def main(argv: list[str]) -> int:
    heartbeat = HEARTBEAT_S
    if argv and argv[0].startswith("--heartbeat="):
        heartbeat, argv = float(argv[0].partition("=")[2]), argv[1:]
    if len(argv) < 2 or argv[0] not in ("follow", "replay"):
        sys.stderr.write("usage: follow.py [--heartbeat=SECONDS] follow|replay TAIL [--grep REGEX] RANK:SKIP...\n")
        return 2
    live, tail = argv[0] == "follow", int(argv[1])
    grep, specs = None, argv[2:]
    if specs[:1] == ["--grep"] and len(specs) > 1:
        grep, specs = re.compile(specs[1]), specs[2:]
    out = Counted(sys.stdout.buffer)
    logs = []
    for arg in specs:
        rank, spec = arg.split(":")
        skip = recorded_start(int(rank)) if spec == "from" else int(spec)
        if spec == "from":
            out.write(b"at %d %d\n" % (int(rank), skip))
        logs.append(RankLog(int(rank), skip, grep))
    if tail >= 0:
        for log in logs:
            log.start_at_tail(tail, out)
    quiet_since = time.monotonic()
    events = Events()
    stop = StopMark()
    while logs:
        agent = live and not os.path.exists("agent.watch") and group_alive(read_int("agent.pid"))
        ended = [log for log in logs if not live or (not agent and not log.alive())]
        before = out.written
        stop.pump(out)  # after `ended`: the mark is made before any rank is signalled
        events.pump(out)
        for log in logs:
            log.pump(out, final=log in ended, live=live)
        for log in ended:
            out.write(log.exit_record())
            logs.remove(log)
        if out.written != before:
            quiet_since = time.monotonic()
        elif live and time.monotonic() - quiet_since >= heartbeat:
            out.write(b"hb\n")  # the workstation tells a quiet run from a stalled link by these
            quiet_since = time.monotonic()
        out.flush()
        if logs:
            time.sleep(POLL_S)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
