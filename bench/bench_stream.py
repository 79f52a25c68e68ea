"""Log streaming: `distctl logs` (a replay of a finished run) against `ssh host cat` of the same
rank log, on one namespaced host.

A user program (one rank) prints `--lines` numbered lines as fast as it can and exits; an
untimed `distctl up` runs it. Then, interleaved, each case writes the whole log to a file on
the workstation, as a user's `> file` would: `ssh -F <cluster ssh_config> h01 cat LOG` (OpenSSH,
the floor) and `distctl logs RUN` (connect, the host's follower, the workstation's line loop,
the `[h01 r0] ` prefixes); between them, `ssh h01 <the follower distctl runs there>` shows the
host side's share (it adds `0 ` before each line and an `exit` line). Every output is checked to
hold every line. Rates are of the log's own lines and bytes, so the two columns compare.

Run (root, for network namespaces):
    .venv/bin/python bench/bench_stream.py                  # 500,000 lines, 3 rounds
    .venv/bin/python bench/bench_stream.py --lines 100000 --reps 5 --profile
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import os
import re
import pstats
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from common import DISTCTL, ROOT, cluster_of, distctl, interleaved, print_table, write_inventory

PROGRAM = '''
import sys
n = int(sys.argv[1])
out = sys.stdout
for i in range(n):
    out.write("step %07d loss=%.6f lr=0.010000 %s\\n" % (i, 1.0 / (i + 1), "x" * (i % 23)))
'''


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--reps", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--profile", action="store_true", help="then profile one `distctl logs` in-process")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    atexit.register(shutil.rmtree, work, True)
    (work / "prog").mkdir()
    (work / "prog" / "spew.py").write_text(PROGRAM)
    with cluster_of(1) as cluster:
        host = cluster.hosts[0]
        inv = write_inventory(work / "inv.yaml", cluster, [host.name], code="prog",
                              command=["python", "spew.py", str(args.lines)], wait_for_rank0=False)
        up = distctl("up", str(inv), cwd=work)  # untimed: the run whose log is replayed
        run_id = re.search(r"run (\S+) started", up.stderr)[1]
        log = f"{host.workdir}/runs/{run_id}/rank0.log"
        size = int(host.run(["stat", "-c", "%s", log], check=True).stdout)
        outputs = {"ssh host cat": work / "cat.out", "ssh host follower": work / "follower.out",
                   "distctl logs": work / "logs.out"}
        env = {"DISTCTL_STATE_DIR": str(work / ".distctl-state"), **os.environ, "NO_COLOR": "1",
               "PYTHONPATH": str(ROOT)}  # the run records common.distctl wrote

        def to_file(argv: list[str], path: Path):
            def run():
                with open(path, "wb") as out:
                    subprocess.run(argv, stdout=out, stderr=subprocess.DEVNULL, check=True, cwd=work, env=env)
            return run

        cases = {"ssh host cat": to_file(cluster.ssh_argv(host, "cat", log), outputs["ssh host cat"]),
                 # distctl's host side alone: the follower `logs` runs, read by OpenSSH
                 "ssh host follower": to_file(cluster.ssh_argv(host, follower(cluster, log)),
                                              outputs["ssh host follower"]),
                 "distctl logs": to_file([*DISTCTL, "logs", run_id], outputs["distctl logs"])}
        for fn in cases.values():  # untimed: warm caches
            fn()
        times = interleaved(cases, args.reps)
        for name, path in outputs.items():
            lines = count_lines(path) - (name == "ssh host follower")  # its `exit 0 0 TIME` line
            if lines != args.lines:
                raise SystemExit(f"{name} wrote {lines} lines, {args.lines} expected")
        base = statistics.median(times["ssh host cat"])
        rows = []
        for name, values in times.items():
            s = statistics.median(values)
            rows.append((name, f"{s:.2f}", f"{args.lines / s:,.0f}", f"{size / s / 1e6:.1f}", f"{s / base:.2f}x"))
        print(f"{args.lines:,} lines, {size / 1e6:.1f} MB log, one host; median of {args.reps} interleaved rounds\n")
        print_table(("command", "wall s", "lines/s", "MB/s", "vs ssh cat"), rows)
        if args.profile:
            profile(run_id, work)


def follower(cluster, log: str) -> str:
    """The command `distctl logs` runs on the host for rank 0 of a finished run."""
    from orchestrator.plan.scripts import follow_script

    return follow_script(cluster.python, log.rpartition("/")[0], {0: 0}, follow=False)


def profile(run_id: str, work: Path) -> None:
    """One `distctl logs` in this process under cProfile (output to /dev/null), top 25 by own time."""
    import sys

    from orchestrator.cli.main import cli

    os.chdir(work)
    stdout = os.dup(1)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 1)
        prof = cProfile.Profile()
        try:
            prof.runcall(cli.main, ["logs", run_id], prog_name="distctl", standalone_mode=False)
        finally:
            sys.stdout.flush()
            os.dup2(stdout, 1)
    print()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
