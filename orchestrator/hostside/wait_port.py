"""Wait until a TCP port accepts connections, or the process that should open it exits.

    wait_port.py ADDR PORT PIDFILE SECONDS

Prints one word and exits with its code: `ready` (0) once ADDR:PORT accepts a
connection, `exited` (3) when the process whose id is in PIDFILE is gone first,
`timeout` (4) after SECONDS, `no-pid` (5) when PIDFILE holds no process id.
Liveness is `kill(pid, 0)`, so no /proc is needed (macOS has none): right after the launch
step wrote PIDFILE, its id cannot have been recycled yet.
"""

from __future__ import annotations

import errno
import os
import sys
import time

from orchestrator.hostside.prelude import listening, read_int

POLL_S = 0.05
READY, EXITED, TIMEOUT, NO_PID = 0, 3, 4, 5


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as e:
        # EPERM: the process exists but belongs to someone else.
        return e.errno == errno.EPERM
    return True


def read_pid(path: str) -> int | None:
    pid = read_int(path)
    return pid if pid is not None and pid > 0 else None


def wait(addr: str, port: int, pid: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if listening(addr, port):
            return READY
        if not alive(pid):
            return EXITED
        time.sleep(POLL_S)
    return TIMEOUT


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        sys.stderr.write("usage: wait_port.py ADDR PORT PIDFILE SECONDS\n")
        return 2
    addr, port, pidfile, seconds = argv[0], int(argv[1]), argv[2], float(argv[3])
    pid = read_pid(pidfile)
    code = NO_PID if pid is None else wait(addr, port, pid, seconds)
    words = {READY: "ready", EXITED: "exited", TIMEOUT: "timeout", NO_PID: "no-pid"}
    print(words[code])
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
