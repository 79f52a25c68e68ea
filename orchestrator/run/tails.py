"""A rank log's last lines as the stream shows them, for `status`, `up`'s failure report and
launch errors: lines split on newlines only (Python's `splitlines` also splits on `\\r`, which
turned a tqdm bar into 70 "lines"), each line its last redraw, distctl's attempt markers on a
line of their own even when a partial bar came before them, and a Python traceback kept whole
when it began before the last few lines."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator import shell
from orchestrator.errors import HostError

if TYPE_CHECKING:
    from orchestrator.ssh.remote import Connection

MARK = "--- distctl: "  # an attempt marker (scripts.launch_script, hostside/agent.py)
TRACEBACK = "Traceback (most recent call last):"
MAX_LINES = 60  # a tail reaches back this far at most, for a traceback's start


def last_redraw(line: str) -> str:
    """What a terminal shows of a line redrawn with `\\r`: its last non-empty redraw."""
    parts = [part for part in line.split("\r") if part]
    return parts[-1] if parts else ""


def split_marker(line: str) -> list[str]:
    """A marker appended after an unfinished line (no newline) is a line of its own, and so is
    a traceback's first line printed right after a partial progress bar."""
    at = line.find(MARK)
    if at > 0 and line.rstrip().endswith("---"):
        return [line[:at], line[at:]]
    at = line.find(TRACEBACK)
    if at > 0 and line.endswith(TRACEBACK):
        return [line[:at], line[at:]]
    return [line]


def log_lines(text: str) -> list[str]:
    """A log's text as lines the way the stream shows them."""
    pieces = text.split("\n")
    if pieces and pieces[-1] == "":
        pieces.pop()
    return [last_redraw(piece) for raw in pieces for piece in split_marker(raw)]


def tail_of(lines: list[str], count: int = 10) -> list[str]:
    """The last `count` lines, reaching back to the start of the last traceback when it began
    earlier (at most MAX_LINES back): its cause is at the bottom, where it was raised at the top."""
    start = max(0, len(lines) - count)
    first = max(0, len(lines) - MAX_LINES)
    tracebacks = [i for i in range(first, len(lines)) if lines[i].startswith(TRACEBACK)]
    if tracebacks and tracebacks[-1] < start:
        start = tracebacks[-1]
    return lines[start:]


def remote_tail_command(log: str, count: int = MAX_LINES * 4) -> str:
    """The shell command that reads enough of a log (`log` quoted already) for `tail_of`."""
    return f"tail -n {count} {log} 2>/dev/null"


def read_tail(conn: Connection, rundir: str, rank: int, count: int = 10) -> list[str]:
    """The last lines of rank `rank`'s log in `rundir`, read on its host ([] when it cannot say)."""
    try:
        text = conn.run(remote_tail_command(shell.join([f"{rundir}/rank{rank}.log"])), timeout=30).stdout
    except HostError:
        return []
    return tail_of(log_lines(text), count)
