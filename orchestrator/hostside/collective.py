"""An all_reduce over every host, one rank per host, timed (`distctl check --net --collective`).

    collective.py MIB ITERS TIMEOUT

Started on every host at once, the way distctl starts ranks: MASTER_ADDR and MASTER_PORT
(rank 0's discovered address and the job's port), RANK and WORLD_SIZE, GLOO_SOCKET_IFNAME and
NCCL_SOCKET_IFNAME (the interface toward rank 0) in the environment. It needs torch, imported
inside `main`: a host without it answers with an error line, not a traceback.

Rank 0 hosts the TCP store; each rank marks its arrival there and waits for the others, so a
rank that never arrives is named by those that did (`coll missing 2,3`). The backend is gloo,
or NCCL where `torch.cuda.is_available()` on every host (agreed by a gloo all_reduce). Then
1 + ITERS all_reduces (sum) of a float32 buffer of MIB MiB, the first a warm-up whose result
is checked, and `coll ok backend=B bytes=N iters=K seconds=S`: S is this host's mean time per
timed all_reduce.

Bounded: a watchdog thread ends the process after TIMEOUT seconds (`coll error timeout
STAGE`; os._exit, since gloo may be blocked in C code). A rank that fails writes `failed` in
the store; the others' watchdogs read it and end at once (`coll error peer RANK STAGE`). Any
other failure prints `coll error STAGE MESSAGE`. Exit 0 when measured, 3 when not, 2 on usage.
"""

import os
import re
import socket
import sys
import threading
import time
from datetime import timedelta

POLL_S = 0.2
LINGER_S = 1.0  # a failed rank 0 keeps its store up this long, for the others to read why
BIND_RETRY_S = 5.0  # the port on rank 0 may still be held by the bandwidth test server


class State:
    """Where this rank is (the watchdog names it) and the store client the watchdog reads."""

    def __init__(self, rank):
        self.rank = rank
        self.stage = "torch"
        self.peek = None
        self.store = None
        self.done = False


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def end(line):
    say(line)
    os._exit(3)


def failed_peer(state):
    """The rank another rank wrote as failed in the store, or None (also when unreadable)."""
    try:
        if state.peek is not None and state.peek.check(["failed"]):
            return state.peek.get("failed").decode()
    except Exception:  # the store went away: rank 0 ended; the collective itself says why
        pass
    return None


def watchdog(state, deadline):
    while time.monotonic() < deadline:
        time.sleep(POLL_S)
        if state.done:
            return
        peer = failed_peer(state)
        if peer is not None and peer != str(state.rank) and not state.done:
            end("coll error peer %s %s" % (peer, state.stage))
    if not state.done:
        end("coll error timeout %s" % state.stage)


def fail(state, message):
    """This rank failed on its own: say so, tell the others through the store, end."""
    text = re.sub(r"^\[enforce fail at [^]]*\] *(\S+ != nullptr\. )?", "", " ".join(str(message).split()))
    say("coll error %s %s" % (state.stage, text[:300]))
    try:
        if state.store is not None:
            state.store.set("failed", str(state.rank))
            if state.rank == 0:
                time.sleep(LINGER_S)
    except Exception:
        pass
    os._exit(3)


def open_store(dist, state, addr, port, world, timeout):
    """Rank 0 serves the store (retrying a port still held for a moment); the others connect."""
    start = time.monotonic()
    while True:
        try:
            return dist.TCPStore(addr, port, world, state.rank == 0, timedelta(seconds=timeout),
                                 wait_for_workers=False)
        except RuntimeError as exc:
            if state.rank != 0 or "in use" not in str(exc) or time.monotonic() - start > BIND_RETRY_S:
                raise
            time.sleep(POLL_S)


def arrive(state, world, seconds):
    """Mark the arrival of this rank and wait for all the others; name those that did not come."""
    state.store.set("arrived/%d" % state.rank, socket.gethostname())
    keys = ["arrived/%d" % r for r in range(world)]
    try:
        state.store.wait(keys, timedelta(seconds=max(1.0, seconds)))
    except Exception:
        missing = [str(r) for r, key in enumerate(keys) if not state.store.check([key])]
        if not missing:
            raise
        end("coll missing %s" % ",".join(missing))


def measure(torch, dist, state, world, mib, iters):
    """The backend every host can use, then the timed all_reduces: (backend, bytes, mean seconds)."""
    state.stage = "agree"
    cuda = torch.tensor([1 if torch.cuda.is_available() else 0])
    dist.all_reduce(cuda, op=dist.ReduceOp.MIN)
    group, device, backend = None, torch.device("cpu"), "gloo"
    if int(cuda[0]) == 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        group, backend = dist.new_group(backend="nccl"), "nccl"
    buffer = torch.ones(mib * (1 << 20) // 4, dtype=torch.float32, device=device)
    sync = torch.cuda.synchronize if backend == "nccl" else (lambda: None)
    state.stage = "warmup"
    dist.all_reduce(buffer, group=group)
    sync()
    if float(buffer[0]) != float(world):
        raise RuntimeError("the warm-up all_reduce summed to %s, not %d" % (float(buffer[0]), world))
    state.stage = "timed"
    took = []
    for _ in range(iters):
        buffer.fill_(1.0)
        sync()
        start = time.perf_counter()
        dist.all_reduce(buffer, group=group)
        sync()
        took.append(time.perf_counter() - start)
    return backend, buffer.numel() * 4, sum(took) / len(took)


def run(state, mib, iters, timeout, deadline):
    try:
        import torch
        import torch.distributed as dist
    except Exception as exc:
        fail(state, "%s: %s" % (type(exc).__name__, exc))
    addr, port, world = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"])
    try:
        state.stage = "store"
        state.store = open_store(dist, state, addr, port, world, timeout)
        state.peek = dist.TCPStore(addr, port, world, False, timedelta(seconds=timeout))
        state.stage = "arrive"
        arrive(state, world, deadline - time.monotonic() - 2)
        state.stage = "init"
        dist.init_process_group("gloo", store=state.store, rank=state.rank, world_size=world,
                                timeout=timedelta(seconds=max(1.0, deadline - time.monotonic())))
        backend, nbytes, seconds = measure(torch, dist, state, world, mib, iters)
        state.stage = "finish"
        dist.barrier()
    except Exception as exc:
        fail(state, exc)
    say("coll ok backend=%s bytes=%d iters=%d seconds=%.6f" % (backend, nbytes, iters, seconds))
    dist.destroy_process_group()  # still under the watchdog: it may wait on a peer
    state.done = True
    return 0


def main(argv):
    if len(argv) != 3 or not all(os.environ.get(v) for v in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")):
        sys.stderr.write("usage: collective.py MIB ITERS TIMEOUT (with MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE)\n")
        return 2
    mib, iters, timeout = int(argv[0]), int(argv[1]), float(argv[2])
    state = State(int(os.environ["RANK"]))
    deadline = time.monotonic() + timeout
    threading.Thread(target=watchdog, args=(state, deadline), daemon=True).start()
    return run(state, mib, iters, timeout, deadline)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
