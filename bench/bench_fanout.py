"""Fan-out: `distctl check` and `distctl up --detach` against `pdsh -R ssh ... true`.

One namespaced cluster of the largest size; each size uses its first N hosts. Every round
runs each case once (interleaved), so load from other users of the machine hits all alike.
`up --detach` launches one rank per host of a tiny job (256 generated digits, 1 epoch); the
untimed `distctl stop --grace 0` after it ends the ranks before the next case runs. The first
`up` (untimed) pushes code and data, so timed `up`s find both already on the hosts: what a
user's second and later `up` costs.

Columns: median wall seconds, the ratio to pdsh's median in the same run, and the median CPU
seconds of the client side (distctl's process; pdsh and its ssh children).

Run (root, for network namespaces):
    .venv/bin/python bench/bench_fanout.py                 # 2, 8, 16 hosts, 5 rounds
    .venv/bin/python bench/bench_fanout.py --hosts 16 --reps 9 --no-up
"""

from __future__ import annotations

import argparse
import atexit
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path

from common import cluster_of, distctl, interleaved, median_ms, pdsh_argv, print_table, write_inventory


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_of(fn):
    """fn wrapped to record the CPU seconds of the processes it waited for."""
    spent: list[float] = []

    def wrapped():
        before = children_cpu()
        fn()
        spent.append(children_cpu() - before)

    wrapped.spent = spent  # type: ignore[attr-defined]
    return wrapped


def tiny_data(root: Path) -> Path:
    from trainer.generated import write_generated_mnist

    write_generated_mnist(str(root), seed=0, n_train=256, n_test=64)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", default="2,8,16", help="comma-separated cluster sizes")
    parser.add_argument("--reps", type=int, default=5, help="interleaved rounds per size")
    parser.add_argument("--no-up", action="store_true", help="only check vs pdsh (no trainer needed)")
    parser.add_argument("--fanout", type=int, default=32)
    args = parser.parse_args()
    sizes = [int(n) for n in args.hosts.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    atexit.register(shutil.rmtree, work, True)  # data sets and run state
    data = None if args.no_up else str(tiny_data(work / "data"))
    rows = []
    with cluster_of(max(sizes)) as cluster:
        for n in sizes:
            names = [h.name for h in cluster.hosts[:n]]
            inv = str(write_inventory(work / f"inv{n}.yaml", cluster, names, data=data, epochs=1))
            argv, env = pdsh_argv(cluster, names, "true")
            fanout = ["--fanout", str(args.fanout)]
            cases = {
                "pdsh -R ssh true": cpu_of(lambda: subprocess.run(argv, env=env, check=True, capture_output=True)),
                "distctl check": cpu_of(lambda: distctl("check", inv, *fanout, cwd=work)),
            }
            after = {}
            if data:
                cases["distctl up --detach"] = cpu_of(lambda: distctl("up", inv, "--detach", *fanout, cwd=work))
                after["distctl up --detach"] = lambda: distctl("stop", "--grace", "0", *fanout, cwd=work)
            for name, fn in cases.items():  # untimed: warm caches; the first up pushes code and data
                fn()
                fn.spent.clear()
                if name in after:
                    after[name]()
            times = interleaved(cases, args.reps, after)
            base = median_ms(times["pdsh -R ssh true"])
            for name, values in times.items():
                cpu = sorted(cases[name].spent)[len(cases[name].spent) // 2]
                rows.append((n, name, f"{median_ms(values) / 1000:.2f}", f"{median_ms(values) / base:.2f}x",
                             f"{cpu:.2f}"))
            print_table(("hosts", "command", "wall s", "vs pdsh", "client CPU s"), rows[-len(times):])
            print(flush=True)
    print(f"median of {args.reps} interleaved rounds; fan-out {args.fanout}; "
          f"{'namespaced' if cluster.isolated else 'loopback'} hosts on this machine\n")
    print_table(("hosts", "command", "wall s", "vs pdsh", "client CPU s"), rows)


if __name__ == "__main__":
    main()
