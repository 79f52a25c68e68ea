"""The preflight check of the rendezvous port: free on rank 0, reachable from workers.

    port_check.py listen ADDR PORT COUNT [SECONDS]   (on the host of rank 0)
    port_check.py connect ADDR PORT                  (on every other host)

`listen` binds ADDR:PORT and prints `listening`, or `busy REASON` and exits 3 when the
port is taken; it then accepts up to COUNT connections within SECONDS (15) and prints
`accepted N`. `connect` prints `ok`, or `fail REASON` and exits 3.
"""

from __future__ import annotations

import socket
import sys
import time

BUSY = FAILED = 3
ACCEPT_S = 15.0


def listen(addr: str, port: int, count: int, seconds: float = ACCEPT_S) -> int:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((addr, port))
    except OSError as e:
        print("busy", e.strerror or e, flush=True)
        return BUSY
    s.listen(64)
    s.settimeout(0.2)
    print("listening", flush=True)
    got, deadline = 0, time.monotonic() + seconds
    while got < count and time.monotonic() < deadline:
        try:
            s.accept()[0].close()
            got += 1
        except socket.timeout:
            pass
    s.close()
    print("accepted", got, flush=True)
    return 0


def connect(addr: str, port: int) -> int:
    try:
        socket.create_connection((addr, port), timeout=5).close()
    except OSError as e:
        print("fail", e.strerror or e, flush=True)
        return FAILED
    print("ok", flush=True)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) in (4, 5) and argv[0] == "listen":
        return listen(argv[1], int(argv[2]), int(argv[3]), *map(float, argv[4:]))
    if len(argv) == 3 and argv[0] == "connect":
        return connect(argv[1], int(argv[2]))
    sys.stderr.write("usage: port_check.py listen ADDR PORT COUNT [SECONDS] | connect ADDR PORT\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
