"""`distctl stacks` against `distctl exec INVENTORY -- true` on the same hosts (target: at most 2x).

Each host runs one rank of a torch-free program blocked in a socket read (C code), in a thread
of its own too. Both commands connect to every host and run one command there; `stacks` also
signals every rank, waits for its dump and groups the stacks. Prints both medians and the ratio.

    python bench/bench_stacks.py [--hosts 16] [--reps 5]
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import tempfile
from pathlib import Path

from common import blocked_run, distctl, interleaved, print_table

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5, help="interleaved rounds")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-stacks-"))
    atexit.register(shutil.rmtree, work, True)
    with blocked_run(work, args.hosts) as (cluster, inv):
        shown = distctl("stacks", cwd=work).stdout.splitlines()[0]
        cases = {"distctl exec -- true": lambda: distctl("exec", inv, "--", "true", cwd=work),
                 "distctl stacks": lambda: distctl("stacks", cwd=work)}
        times = interleaved(cases, args.reps)
    base = statistics.median(times["distctl exec -- true"])
    print(f"{args.hosts} hosts, 1 rank each; median of {args.reps} interleaved rounds; "
          f"{'namespaced' if cluster.isolated else 'loopback'} hosts on this machine")
    print(f"roll-call: {shown}\n")
    print_table(("command", "wall s", "vs exec"),
                [(name, f"{statistics.median(v):.2f}", f"{statistics.median(v) / base:.2f}x")
                 for name, v in times.items()])
    print(f"\nratio stacks / exec: {statistics.median(times['distctl stacks']) / base:.2f}")


if __name__ == "__main__":
    main()
