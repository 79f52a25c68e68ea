"""What several host-side programs need, once: prepended to each of them when sent.

    group_alive  a process group lives, and is this run's (the recycled-id guard)
    read_int     the number in a small file (a pid file, an exit code), or None
    listening    a TCP port accepts connections
    exit_record  a rank's `exit R CODE TIME` record, as both followers send it
    whole_lines  the complete lines of a log read on, and its unfinished last line

hostside/__init__.py (PARTS) puts this text before the program that imports from it, so a
fix here reaches follow, wait_port, slurm_follow and the agent alike. Standard library, Python 3.8.
"""

from __future__ import annotations

import os
import socket


def read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def group_alive(pgid: int | None) -> bool:
    """Process group PGID lives and is ours. Its leader (the wrapper of a rank, the agent) was started
    in this run directory (the working directory of every caller) and never leaves it: a leader
    elsewhere holds a recycled id (the run ended long ago, or the host rebooted), as does one of
    another user (EPERM). No readable /proc/PGID/cwd (no /proc on macOS, a zombie leader whose
    group still holds the id) keeps the old rule: the group is ours."""
    if pgid is None or pgid <= 0:
        return False
    try:
        os.killpg(pgid, 0)
    except OSError:
        return False
    try:
        return os.readlink("/proc/%d/cwd" % pgid) == os.getcwd()
    except OSError:
        return True


def listening(addr: str, port: int) -> bool:
    try:
        socket.create_connection((addr, port), timeout=1).close()
    except OSError:
        return False
    return True


def exit_record(rank: int) -> bytes:
    """`exit R CODE TIME`: the exit code the wrapper of rank R wrote in rankR.exit and the mtime of
    that file by the clock of this host; `-` for each when there is none (killed, never started)."""
    name = "rank%d.exit" % rank
    try:
        with open(name) as f:
            code = f.read().strip() or "-"
        at = "%.3f" % os.path.getmtime(name)
    except OSError:
        code, at = "-", "-"
    return b"exit %d %s %s\n" % (rank, code.encode(), at.encode())


def whole_lines(partial: bytes, data: bytes, final: bool) -> tuple[list[bytes], bytes]:
    """The complete lines of a log read on from `partial` (the unfinished line so far) with `data`,
    and the new unfinished line; `final` (the rank is done): that line too, as it is."""
    lines = (partial + data).split(b"\n")
    rest = lines.pop()
    if final and rest:
        lines.append(rest)
        rest = b""
    return lines, rest
