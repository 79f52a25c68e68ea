"""The cost of progress tracking (hostside/progress.py `track`) on the streaming case: a rank
printing 100,000 lines as fast as it can, every tenth a `distctl: step=N` line and the rest like
bench_stream.py's, into its log the way a rank's wrapper writes it.

Interleaved rounds of: the program alone, and the program with the tracker following its log
(started first, as the wrapper does). Prints the program's median wall time in both cases, the
tracker's CPU time, and the ratios (target: under 10 % of the program's own time). Runs on this
machine, no cluster: the tracker does the same work on a test host.

    python bench/bench_progress.py [--lines 100000] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import hostside  # noqa: E402

PROGRAM = """
import sys
n = int(sys.argv[1])
out = sys.stdout
for i in range(n):
    if i % 10 == 0:
        out.write("distctl: step=%d total=%d loss=%.6f\\n" % (i, n, 1.0 / (i + 1)))
    else:
        out.write("step %07d loss=%.6f lr=0.010000 %s\\n" % (i, 1.0 / (i + 1), "x" * (i % 23)))
"""


def run_rank(folder: Path, lines: int, tracked: bool) -> tuple[float, float]:
    """(the program's wall seconds, the tracker's CPU seconds) for one rank run."""
    log = folder / "rank0.log"
    log.write_bytes(b"")
    (folder / "rank0.progress").unlink(missing_ok=True)
    tracker = None
    if tracked:
        tracker = subprocess.Popen([sys.executable, "-I", "-c", hostside.source("progress"), "track", "0"],
                                   cwd=folder)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "ab") as out:
        subprocess.run([sys.executable, "-c", PROGRAM, str(lines)], stdout=out, check=True)
    wall = time.perf_counter() - start
    cpu = 0.0
    if tracker:
        while not (folder / "rank0.progress").exists() or b"step=%d" % (lines - 10) not in \
                (folder / "rank0.progress").read_bytes():
            time.sleep(0.1)  # the tracker caught up with the last step line
        mid = resource.getrusage(resource.RUSAGE_CHILDREN)
        tracker.terminate()
        tracker.wait()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (mid.ru_utime + mid.ru_stime)
    del before
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-progress-"))
    try:
        alone, tracked, cpu = [], [], []
        for _ in range(args.reps):
            alone.append(run_rank(folder, args.lines, False)[0])
            wall, used = run_rank(folder, args.lines, True)
            tracked.append(wall)
            cpu.append(used)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    a, t, c = statistics.median(alone), statistics.median(tracked), statistics.median(cpu)
    print(f"{args.lines:,} lines, median of {args.reps} interleaved rounds, on this machine ({os.cpu_count()} CPUs)")
    print(f"program alone: {a:.3f} s; with the tracker: {t:.3f} s ({t / a - 1:+.1%} wall)")
    print(f"tracker CPU: {c:.3f} s = {c / a:.1%} of the program's time alone")


if __name__ == "__main__":
    main()
