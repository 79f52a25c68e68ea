"""A Slurm run's rank logs on one stream, on the login node (run from inside the run directory).

    slurm_follow.py follow|replay TAIL JOBID WORLD

Every complete line of rankR.log comes out as `R line`, in order per rank; `node R NAME` comes
first, once the rank's wrapper wrote rankR.node; each line of `events` (the batch script's
restarts) as `ev TEXT`. TAIL >= 0 starts each log at its last TAIL lines (-1: all). `follow`
also says `queue STATE NODES` whenever Slurm's state of the job changes, and keeps reading until the
job is over: the batch script wrote job.end, or Slurm lists the job in a final state, or not
at all any more. Liveness comes from Slurm and from the run's files, never from process ids:
the ranks run on other machines. Then `exit R CODE TIME` per rank (CODE from rankR.exit, TIME
its mtime; `-` for each when there is none) and `end STATE RC WHY` (`-` where unknown).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from orchestrator.hostside.prelude import exit_record, whole_lines

POLL_S = 0.2
QUEUE_S = 1.0
HEARTBEAT_S = 2.0
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "PREEMPTED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
         "BOOT_FAIL", "DEADLINE")


def read(name: str, offset: int = 0) -> bytes:
    try:
        with open(name, "rb") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return b""


class RankLog:
    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.offset = 0
        self.partial = b""
        self.node = b""

    def start_at_tail(self, tail: int, out) -> None:
        complete = read("rank%d.log" % self.rank).split(b"\n")[:-1]
        self.offset = sum(len(line) + 1 for line in complete)
        self.announce(out)
        for line in complete[-tail:] if tail else []:
            out.write(b"%d %s\n" % (self.rank, line))

    def announce(self, out) -> None:
        if not self.node:
            self.node = read("rank%d.node" % self.rank).strip()
            if self.node:
                out.write(b"node %d %s\n" % (self.rank, self.node))

    def pump(self, out, final: bool = False) -> None:
        data = read("rank%d.log" % self.rank, self.offset)
        self.offset += len(data)
        lines, self.partial = whole_lines(self.partial, data, final)
        if lines:
            self.announce(out)
        for line in lines:
            out.write(b"%d %s\n" % (self.rank, line))

    def exit_record(self) -> bytes:
        return exit_record(self.rank)


def queue_state(job: str) -> str:
    """The state Slurm gives the job; "" when Slurm no longer lists it."""
    try:
        done = subprocess.run(["squeue", "-h", "-j", job, "--states=all", "-o", "%T %N"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    return lines[0].strip() if lines else ""


def main(argv: list) -> int:
    if len(argv) != 4 or argv[0] not in ("follow", "replay"):
        sys.stderr.write("usage: slurm_follow.py follow|replay TAIL JOBID WORLD\n")
        return 2
    live, tail, job, world = argv[0] == "follow", int(argv[1]), argv[2], int(argv[3])
    out = sys.stdout.buffer
    logs = [RankLog(r) for r in range(world)]
    if tail >= 0:
        for log in logs:
            log.start_at_tail(tail, out)
    events = 0
    state, gone, checked, quiet = "", 0, 0.0, time.monotonic()
    while True:
        ended = not live or os.path.exists("job.end")
        if live and time.monotonic() - checked >= QUEUE_S:
            checked = time.monotonic()
            now = queue_state(job)
            if now and now != state and now != "?":
                state = now
                out.write(b"queue %s\n" % state.encode())
            gone = gone + 1 if now == "" else 0
            ended = ended or state.split(" ")[0] in FINAL or gone >= 2
        data = read("events", events)
        complete = data[:data.rfind(b"\n") + 1]
        events += len(complete)
        for line in complete.splitlines():
            out.write(b"ev %s\n" % line)
        for log in logs:
            log.pump(out, final=ended)
        if ended:
            break
        if time.monotonic() - quiet >= HEARTBEAT_S:
            out.write(b"hb\n")
            quiet = time.monotonic()
        out.flush()
        time.sleep(POLL_S)
    if live:
        for log in logs:
            out.write(log.exit_record())
        end = read("job.end").decode(errors="replace").split(None, 1)
        out.write(("end %s %s %s\n" % (state.split(" ")[0] or "-", end[0] if end else "-",
                                       end[1].strip() if len(end) > 1 else "-")).encode())
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
