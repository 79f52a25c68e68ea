"""Reading /proc: which processes exist, their command lines, environments and namespaces.

Each reader answers "nothing" (empty, None, False) for a process that is gone, or went between
listing and reading: the tests look at processes that are being started and killed. The test
cluster finds and sweeps its hosts' processes with these, and tests find ranks with them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def all_pids() -> list[int]:
    """All PIDs visible in /proc."""
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def cmdline(pid: int) -> bytes:
    """A process's argv as the kernel keeps it (each argument ends in a NUL); b"" if gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def environ(pid: int) -> list[str]:
    """A process's environment entries (KEY=VALUE); empty if unreadable or gone."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return []
    return [e.decode(errors="surrogateescape") for e in raw.split(b"\0") if e]


def pids_with_env(test: Callable[[str], bool]) -> list[int]:
    """PIDs (not this one) with an environment entry for which ``test(entry)`` is true."""
    return [pid for pid in all_pids() if pid != os.getpid()
            and any(test(entry) for entry in environ(pid))]


def ns_inode(path: str) -> int | None:
    """The namespace inode behind an nsfs path; None if gone (or a zombie's)."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def pids_in_netns(netns: str) -> list[int]:
    """Live processes (not this one) whose network namespace is the named one."""
    ino = ns_inode(f"/run/netns/{netns}")
    if ino is None:
        return []
    return [pid for pid in all_pids() if pid != os.getpid()
            and ns_inode(f"/proc/{pid}/ns/net") == ino]


def stat(pid: int) -> tuple[str, int] | None:
    """(state letter, kernel start time) of ``pid``; None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` (tells a reused PID apart); None if it is gone."""
    found = stat(pid)
    return found[1] if found else None


def alive(pid: int, start: int | None) -> bool:
    """Whether ``pid`` still runs, not as a zombie (and, given ``start``, is the same process)."""
    found = stat(pid)
    return found is not None and found[0] != "Z" and (start is None or found[1] == start)


def read_pid(path: str) -> int | None:
    """The PID in a pid file, None if there is none."""
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None
