"""A host's bandwidth and latency to rank 0's host, without torch (`distctl check --net`).

    netbench.py serve ADDR PORT CLIENTS DEADLINE
    netbench.py measure ADDR PORT SECONDS

`serve` (on rank 0's host) listens on ADDR:PORT, prints `listening`, and answers until
CLIENTS bandwidth runs are done or DEADLINE seconds passed. A connection's first byte says
what it is: `P` echoes every byte back (round trips), `B` counts every byte until the
client's end of stream, then sends the count as a line.

`measure` (on another host) takes the median of 30 one-byte round trips, then sends for
SECONDS, and prints `net rtt_ms=R gbps=G bytes=N seconds=S`: G is the bytes the server
received over the time from the first byte sent to the server's count (GB/s, 10^9 bytes).
Socket buffers are 1 MiB, so the bytes still queued when sending stops are few.
"""

import socket
import sys
import threading
import time

CHUNK = 1 << 20
BUFFER = 1 << 20
PINGS = 30


def echo(conn):
    while True:
        data = conn.recv(64)
        if not data:
            return
        conn.sendall(data)


def count(conn):
    total = 0
    while True:
        data = conn.recv(CHUNK)
        if not data:
            break
        total += len(data)
    conn.sendall(b"%d\n" % total)


def handle(conn, done):
    try:
        with conn:
            kind = conn.recv(1)
            if kind == b"P":
                echo(conn)
            elif kind == b"B":
                count(conn)
                done.append(1)
    except OSError:
        pass


def serve(addr, port, clients, deadline):
    server = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    server.bind((addr, port))
    server.listen(16)
    server.settimeout(0.2)
    print("listening", flush=True)
    done = []  # type: list
    end = time.monotonic() + deadline
    while len(done) < clients and time.monotonic() < end:
        try:
            conn, _ = server.accept()
        except socket.timeout:
            continue
        conn.settimeout(max(1.0, end - time.monotonic()))
        threading.Thread(target=handle, args=(conn, done), daemon=True).start()
    return 0


def connect(addr, port, kind):
    conn = socket.create_connection((addr, port), timeout=30)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
    conn.sendall(kind)
    return conn


def measure(addr, port, seconds):
    with connect(addr, port, b"P") as conn:
        trips = []
        for _ in range(PINGS):
            start = time.perf_counter()
            conn.sendall(b"x")
            conn.recv(1)
            trips.append(time.perf_counter() - start)
    rtt = sorted(trips)[len(trips) // 2]
    payload = b"\0" * CHUNK
    with connect(addr, port, b"B") as conn:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        reply = b""
        while not reply.endswith(b"\n"):
            data = conn.recv(64)
            if not data:
                break
            reply += data
        took = time.perf_counter() - start
    received = int(reply.strip() or 0)
    print("net rtt_ms=%.3f gbps=%.4f bytes=%d seconds=%.3f" % (rtt * 1000, received / took / 1e9, received, took))
    return 0


def main(argv):
    if len(argv) == 5 and argv[0] == "serve":
        return serve(argv[1], int(argv[2]), int(argv[3]), float(argv[4]))
    if len(argv) == 4 and argv[0] == "measure":
        try:
            return measure(argv[1], int(argv[2]), float(argv[3]))
        except OSError as exc:
            print("net error %s" % (exc.strerror or exc))
            return 1
    sys.stderr.write("usage: netbench.py serve ADDR PORT CLIENTS DEADLINE | measure ADDR PORT SECONDS\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
