"""The cost of progress tracking (hostside/progress.py `track`) on the streaming case: a rank
printing 100,000 lines as fast as it can, every tenth a `distctl: step=N` line and the rest like
bench_stream.py's.

Default, no cluster: interleaved rounds of the program alone, and the program with the tracker
following its log (started first, as the wrapper does), on this machine. Prints the program's
median wall time in both cases, the tracker's CPU time, and the ratios (target: under 10 % of
the program's own time).

`--cluster`: the same rank on a namespaced test host, started by an attached `distctl up` (the
rank's wrapper, its tracker, the follower streaming every line to the workstation), with and
without the tracker, interleaved. Without it: the inventory's `python` is a shim (the same in
both cases) that exits at once when it is asked to start `distctl-progress.py` and the
inventory's env says BENCH_TRACKER=off; the wrapper itself is what users run, unchanged. The
rank measures itself: its wall time to print its lines, then (not counted) it waits until its
tracker has seen the last step and reads the tracker's CPU time from /proc.

    python bench/bench_progress.py [--lines 100000] [--reps 5]
    python bench/bench_progress.py --cluster [--lines 100000] [--reps 5]    # root: namespaces
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
    parser.add_argument("--cluster", action="store_true", help="on a test host, under an attached `distctl up`")
    args = parser.parse_args()
    if args.cluster:
        on_cluster(args.lines, args.reps)
        return
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


# ------------------------------------------------------------------ --cluster

# The rank: its lines, then `bench wall=S cpu=S tracker_cpu=S`: its wall time to print them, its
# own CPU time (interpreter start included), its tracker's CPU time (-1: no tracker in its group).
RANK_PROGRAM = "import time\nSTART = time.perf_counter()\n" + PROGRAM + """
import os
def tracker_pid():
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                # an argument of its own: the wrapper's shell names it inside its script
                if b"distctl-progress.py" in f.read().split(b"\\0") and os.getpgid(int(pid)) == os.getpgrp():
                    return pid
        except OSError:
            pass
def cpu_of(pid):
    with open("/proc/%s/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
out.flush()
wall, own = time.perf_counter() - START, time.process_time()
pid, cpu, want = tracker_pid(), -1.0, b"step=%d " % (n - 10)
if pid:
    deadline = time.monotonic() + 30  # the tracker writes rankR.progress at most once a second
    while time.monotonic() < deadline:
        try:
            with open("../rank%s.progress" % os.environ["RANK"], "rb") as f:
                if f.read().startswith(want):
                    break
        except OSError:
            pass
        time.sleep(0.05)
    cpu = cpu_of(pid)
print("bench wall=%.4f cpu=%.4f tracker_cpu=%.4f" % (wall, own, cpu))
"""
SHIM = """#!/bin/sh
# the bench's python: without the tracker (BENCH_TRACKER=off), its start is a no-op
if [ "$2" = distctl-progress.py ] && [ "$BENCH_TRACKER" = off ]; then exit 0; fi
exec {python} "$@"
"""


def on_cluster(lines: int, reps: int) -> None:
    from common import cluster_of, distctl, write_inventory

    work = Path(tempfile.mkdtemp(prefix="bench-progress-"))
    try:
        (work / "prog").mkdir()
        (work / "prog" / "spew.py").write_text(RANK_PROGRAM)
        shim = work / "python"
        shim.write_text(SHIM.format(python=sys.executable))
        shim.chmod(0o755)
        with cluster_of(1) as cluster:
            host = cluster.hosts[0].name
            invs = {case: write_inventory(work / f"{case}.yaml", cluster, [host], code="prog",
                                          host_extra={host: {"python": str(shim)}}, wait_for_rank0=False,
                                          command=["python", "spew.py", str(lines)], env={"BENCH_TRACKER": case})
                    for case in ("on", "off")}
            distctl("up", str(invs["on"]), cwd=work)  # untimed: pushes the code
            # rank wall, tracker CPU, rank CPU, up wall
            rounds: dict[str, list[tuple[float, ...]]] = {"off": [], "on": []}
            for _ in range(reps):
                for case in ("off", "on"):
                    start = time.perf_counter()
                    output = distctl("up", str(invs[case]), cwd=work).stdout
                    rounds[case].append((*rank_figures(output, case), time.perf_counter() - start))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {case: [statistics.median(r[i] for r in rounds[case]) for i in range(4)] for case in rounds}
    (off, _, own_off, up_off), (on, cpu, own_on, up_on) = median["off"], median["on"]
    print(f"{lines:,} lines from one rank on a test host under an attached `distctl up`, median of {reps} "
          f"interleaved rounds ({os.cpu_count()} CPUs shared by the host, the follower and distctl)")
    print(f"the rank's wall time to print its lines: without the tracker {off:.3f} s, with it {on:.3f} s "
          f"({on / off - 1:+.1%}; the median of each round's ratio: "
          f"{statistics.median(b[0] / a[0] for a, b in zip(rounds['off'], rounds['on'])) - 1:+.1%}); "
          f"its own CPU time {own_off:.3f} s and {own_on:.3f} s")
    print(f"the attached `up`, start to end: without {up_off:.2f} s, with {up_on:.2f} s ({up_on / up_off - 1:+.1%})")
    print(f"tracker CPU: {cpu:.3f} s = {cpu / off:.1%} of the rank's time without it, {cpu / up_off:.1%} of `up`'s")
    print("rounds (rank wall without, with; tracker CPU): " + ", ".join(
        f"({a[0]:.3f}, {b[0]:.3f}; {b[1]:.3f})" for a, b in zip(rounds["off"], rounds["on"])))


def rank_figures(output: str, case: str) -> tuple[float, float, float]:
    """(wall, tracker CPU, own CPU) from the rank's `bench` line in `up`'s output; checks the case
    ran as named."""
    line = next(x for x in output.splitlines() if " bench wall=" in x)
    fields = dict(word.split("=") for word in line.split() if "=" in word)
    wall, cpu = float(fields["wall"]), float(fields["tracker_cpu"])
    if (cpu >= 0) != (case == "on"):
        raise SystemExit(f"the tracker {'did not run' if case == 'on' else 'ran'} in the {case!r} case: {line}")
    return wall, cpu, float(fields["cpu"])


if __name__ == "__main__":
    main()
