"""The cost of progress tracking on the streaming case: a rank printing 100,000 lines as fast as
it can, every tenth a `distctl: step=N` line and the rest like bench_stream.py's. The tracking
is the host's agent's (hostside/tracking.py `ProgressFile`, read every 0.5 s).

Default, no cluster: interleaved rounds of the program alone, and the program with a process
pumping a ProgressFile over its log as the agent does, on this machine. Prints the program's
median wall time in both cases, the tracking's CPU time, and the ratios (target: under 10 % of
the program's own time).

`--cluster`: the same rank on a namespaced test host, started by an attached `distctl up` (the
rank's wrapper, the host's agent, the follower streaming every line to the workstation), with
the agent's tracking on and off (the test-only agent key `"progress": 0`), interleaved. The rank
measures itself: its wall time to print its lines, then (not counted) it waits 1.5 s, checks the
progress file has its last step when tracking is on, and reads the agent's CPU time from /proc:
the difference between the two cases is what the tracking cost.

    python bench/bench_progress.py [--lines 100000] [--reps 5]
    python bench/bench_progress.py --cluster [--lines 100000] [--reps 5]    # root: namespaces
"""

from __future__ import annotations

import argparse
import json
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


# What the agent does for one rank, in a process of its own: pump until `stop` exists, then once more.
PUMP = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from orchestrator.hostside.tracking import ProgressFile
progress = ProgressFile(0, 0)
while not os.path.exists("stop"):
    progress.pump(time.time())
    time.sleep(0.5)
progress.pump(time.time(), final=True)
"""


def run_rank(folder: Path, lines: int, tracked: bool) -> tuple[float, float]:
    """(the program's wall seconds, the tracking's CPU seconds) for one rank run."""
    log = folder / "rank0.log"
    log.write_bytes(b"")
    for name in ("rank0.progress", "stop"):
        (folder / name).unlink(missing_ok=True)
    tracker = None
    if tracked:
        tracker = subprocess.Popen([sys.executable, "-I", "-c", PUMP, str(ROOT)], cwd=folder)
    start = time.perf_counter()
    with open(log, "ab") as out:
        subprocess.run([sys.executable, "-c", PROGRAM, str(lines)], stdout=out, check=True)
    wall = time.perf_counter() - start
    cpu = 0.0
    if tracker:
        mid = resource.getrusage(resource.RUSAGE_CHILDREN)
        (folder / "stop").touch()
        tracker.wait()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (mid.ru_utime + mid.ru_stime)
        if b"step=%d " % (lines - 10) not in (folder / "rank0.progress").read_bytes():
            raise SystemExit("the tracking did not reach the last step")
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
    print(f"program alone: {a:.3f} s; with the tracking beside it: {t:.3f} s ({t / a - 1:+.1%} wall)")
    print(f"tracking CPU (interpreter start included): {c:.3f} s = {c / a:.1%} of the program's time alone")


# ------------------------------------------------------------------ --cluster

# The rank: its lines, then `bench wall=S cpu=S agent_cpu=S seen=0|1`: its wall time to print
# them, its own CPU time (interpreter start included), the agent's CPU time 1.5 s later, and
# whether the progress file had its last step by then.
RANK_PROGRAM = "import time\nSTART = time.perf_counter()\n" + PROGRAM + """
import os
out.flush()
wall, own = time.perf_counter() - START, time.process_time()
time.sleep(1.5)
with open("../agent.pid") as f:
    pid = f.read().strip()
with open("/proc/%s/stat" % pid) as f:
    fields = f.read().rsplit(")", 1)[1].split()
cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
try:
    with open("../rank%s.progress" % os.environ["RANK"], "rb") as f:
        seen = f.read().startswith(b"step=%d " % (n - 10))
except OSError:
    seen = False
print("bench wall=%.4f cpu=%.4f agent_cpu=%.4f seen=%d" % (wall, own, cpu, seen))
"""


def on_cluster(lines: int, reps: int) -> None:
    from common import cluster_of, distctl, write_inventory

    work = Path(tempfile.mkdtemp(prefix="bench-progress-"))
    env = {"on": {}, "off": {"DISTCTL_TEST_AGENT": json.dumps({"progress": 0})}}
    try:
        (work / "prog").mkdir()
        (work / "prog" / "spew.py").write_text(RANK_PROGRAM)
        with cluster_of(1) as cluster:
            host = cluster.hosts[0].name
            inv = write_inventory(work / "inv.yaml", cluster, [host], code="prog", wait_for_rank0=False,
                                  command=["python", "spew.py", str(lines)])
            distctl("up", str(inv), cwd=work)  # untimed: pushes the code
            # rank wall, agent CPU, rank CPU, up wall
            rounds: dict[str, list[tuple[float, ...]]] = {"off": [], "on": []}
            for _ in range(reps):
                for case in ("off", "on"):
                    start = time.perf_counter()
                    output = distctl("up", str(inv), cwd=work, env=env[case]).stdout
                    rounds[case].append((*rank_figures(output, case), time.perf_counter() - start))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {case: [statistics.median(r[i] for r in rounds[case]) for i in range(4)] for case in rounds}
    (off, agent_off, own_off, up_off), (on, agent_on, own_on, up_on) = median["off"], median["on"]
    cpu = agent_on - agent_off
    print(f"{lines:,} lines from one rank on a test host under an attached `distctl up`, median of {reps} "
          f"interleaved rounds ({os.cpu_count()} CPUs shared by the host, the follower and distctl)")
    print(f"the rank's wall time to print its lines: tracking off {off:.3f} s, on {on:.3f} s "
          f"({on / off - 1:+.1%}; the median of each round's ratio: "
          f"{statistics.median(b[0] / a[0] for a, b in zip(rounds['off'], rounds['on'])) - 1:+.1%}); "
          f"its own CPU time {own_off:.3f} s and {own_on:.3f} s")
    print(f"the attached `up`, start to end: off {up_off:.2f} s, on {up_on:.2f} s ({up_on / up_off - 1:+.1%})")
    print(f"the agent's CPU: off {agent_off:.3f} s, on {agent_on:.3f} s: the tracking {cpu:.3f} s = "
          f"{cpu / off:.1%} of the rank's time, {cpu / up_off:.1%} of `up`'s")
    print("rounds (rank wall off, on; agent CPU off, on): " + ", ".join(
        f"({a[0]:.3f}, {b[0]:.3f}; {a[1]:.3f}, {b[1]:.3f})" for a, b in zip(rounds["off"], rounds["on"])))


def rank_figures(output: str, case: str) -> tuple[float, float, float]:
    """(wall, agent CPU, own CPU) from the rank's `bench` line in `up`'s output; checks the case
    ran as named (the progress file has the last step only when tracking is on)."""
    line = next(x for x in output.splitlines() if " bench wall=" in x)
    fields = dict(word.split("=") for word in line.split() if "=" in word)
    if (fields["seen"] == "1") != (case == "on"):
        raise SystemExit(f"the tracking {'did not run' if case == 'on' else 'ran'} in the {case!r} case: {line}")
    return float(fields["wall"]), float(fields["agent_cpu"]), float(fields["cpu"])


if __name__ == "__main__":
    main()
