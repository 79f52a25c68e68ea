"""The straggler watch's cost: one round (a stack sample of every rank, over connections already
open, as `up` and `logs -f` take it every 3 s) on N hosts.

Each host runs one rank of a torch-free program blocked in a socket read (C code). The bench
opens one connection per host, as `up` holds them, then times rounds of the watch's own
sampling (stragglers.Watch.sample): the wall time of a round (all hosts at once), the CPU one
round costs a host (the collector program, from the shell's `times` on one host) and the
workstation (this process).

    python bench/bench_stragglers.py [--hosts 16] [--rounds 20]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import blocked_run, distctl_env, print_table

def host_cpu_s(conn, command: str) -> float:
    """CPU seconds (user + system) that `command`'s processes took on the host."""
    out = conn.run(f"{command} >/dev/null; times", timeout=60).stdout.split()
    return sum(_seconds(w) for w in out[-2:])  # `times`' second line: the children's user and system


def _seconds(word: str) -> float:
    """`0m0.031s` -> 0.031"""
    minutes, _, rest = word.partition("m")
    return int(minutes) * 60 + float(rest.rstrip("s"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-stragglers-"))
    atexit.register(shutil.rmtree, work, True)
    os.environ.update({k: v for k, v in distctl_env(work).items() if k == "DISTCTL_STATE_DIR"})
    from orchestrator.console.ui import Ui
    from orchestrator.plan.state import last_run_of
    from orchestrator.run.stacks import stacks_command
    from orchestrator.run.stragglers import NO_SAVE, Watch
    from orchestrator.ssh import group

    with blocked_run(work, args.hosts) as (cluster, inv):
        state = last_run_of(inv)
        conns = group.connect_each([hs.host for hs in state.hosts], state.ssh, 32).ok
        try:
            watch = Watch(state, conns, Ui(quiet=True), every=3.0)
            sampled = watch.sample()  # the first round opens each host's command session
            walls, here = [], []
            for _ in range(args.rounds):
                start, cpu_start = time.perf_counter(), time.process_time()
                sampled = watch.sample()
                walls.append(time.perf_counter() - start)
                here.append(time.process_time() - cpu_start)
            first = state.hosts[0]
            ranks = [r.rank for r in first.ranks]
            cpu = [host_cpu_s(conns[first.host.name], stacks_command(first, NO_SAVE, False, ranks))
                   for _ in range(args.rounds)]
        finally:
            group.close_all(conns)
    print(f"{args.hosts} hosts, 1 rank each; {args.rounds} rounds; "
          f"{'namespaced' if cluster.isolated else 'loopback'} hosts on this machine; "
          f"{len(sampled)} of {args.hosts} ranks sampled in the last round\n")
    walls.sort()
    print_table(("what", "median", "p90"),
                [("one round, all hosts at once (wall s)", f"{statistics.median(walls):.3f}",
                  f"{walls[int(0.9 * (len(walls) - 1))]:.3f}"),
                 ("one round's CPU on one host (s)", f"{statistics.median(cpu):.3f}",
                  f"{sorted(cpu)[int(0.9 * (len(cpu) - 1))]:.3f}"),
                 ("one round's CPU on the workstation (s)", f"{statistics.median(here):.3f}",
                  f"{sorted(here)[int(0.9 * (len(here) - 1))]:.3f}")])


if __name__ == "__main__":
    main()
