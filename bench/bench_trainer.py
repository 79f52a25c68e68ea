"""Seed loop vs trainer, side by side in one run: 2 gloo ranks on CPU, same model, batch, lr, epochs.

Runs ``bench/seed_loop.py`` (the seed's loop on CPU) and then ``python -m trainer`` on the same
data, each as ``--world-size`` local processes on loopback, alternating ``--repeat`` times,
and prints per rank the mean samples/s over the epochs (training time only, as each prints it),
their ratio, the held-out accuracy and whether the ranks end with equal parameters.  The
machine is shared: compare the columns of one run, not numbers across runs.

Example::

    .venv/bin/python bench/bench_trainer.py                     # ../shared/data/mnist-mini, 3 epochs
    .venv/bin/python bench/bench_trainer.py --epochs 5 --repeat 3
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse(line):
    return dict(word.split("=", 1) for word in line.split() if "=" in word)


def run_ranks(command, world_size, timeout):
    """Start one process per rank with ``command(port, rank)``; (stdout per rank, wall seconds)."""
    port, started = free_port(), time.perf_counter()
    procs = [subprocess.Popen(command(port, rank), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in range(world_size)]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(proc.args)} exited {proc.returncode}:\n{err[-2000:]}")
        outs.append(out.splitlines())
    return outs, time.perf_counter() - started


def measure(outs, final_prefix):
    """Per rank: mean epoch samples/s; and rank 0's accuracy and all digests from the final lines."""
    rates = [statistics.mean(float(parse(ln)["samples_per_s"]) for ln in out if ln.startswith("epoch="))
             for out in outs]
    finals = [parse(next(ln for ln in out if ln.startswith(final_prefix))) for out in outs]
    return rates, float(finals[0]["test_accuracy"]), [f["param_sha256"] for f in finals]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "mnist-mini"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="alternate the two this many times")
    p.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args()
    data = os.path.abspath(args.data)
    common = ["--world-size", str(args.world_size), "--data", data, "--epochs", str(args.epochs)]

    def seed(port, rank):
        return [sys.executable, "bench/seed_loop.py", "--init-method", f"tcp://127.0.0.1:{port}",
                "--rank", str(rank), *common]

    def trainer(port, rank):
        return [sys.executable, "-m", "trainer", "--init-method", f"tcp://127.0.0.1:{port}",
                "--rank", str(rank), *common, "--batch-size", "64", "--lr", "0.01", "--seed", "0"]

    results = {"seed loop": [], "trainer": []}
    for _ in range(args.repeat):
        for name, command, final in (("seed loop", seed, "result "), ("trainer", trainer, "done ")):
            outs, wall = run_ranks(command, args.world_size, args.timeout)
            results[name].append((*measure(outs, final), wall))
    report(args, data, results)


def report(args, data, results):
    print(f"data={data} world_size={args.world_size} epochs={args.epochs} batch=64/rank lr=0.01 "
          f"repeat={args.repeat} (median over repeats; gloo on CPU, {os.cpu_count()} cores)")
    rows = []
    for rank in range(args.world_size):
        seed, ours = (statistics.median(r[0][rank] for r in results[n]) for n in ("seed loop", "trainer"))
        rows.append((f"samples/s rank {rank}", f"{seed:,.0f}", f"{ours:,.0f}", f"{ours / seed:.1f}x"))
    seed_acc, ours_acc = (statistics.median(r[1] for r in results[n]) for n in ("seed loop", "trainer"))
    rows.append(("held-out accuracy (rank 0)", f"{seed_acc:.4f}", f"{ours_acc:.4f}", ""))
    equal = {n: all(len(set(r[2])) == 1 for r in results[n]) for n in results}
    rows.append(("replicas equal", *("yes" if equal[n] else "no" for n in results), ""))
    seed_wall, ours_wall = (statistics.median(r[3] for r in results[n]) for n in results)
    rows.append(("wall s (start to exit)", f"{seed_wall:.1f}", f"{ours_wall:.1f}", ""))
    print(f"{'':28}{'seed loop':>12}{'trainer':>12}{'ratio':>8}")
    for label, *cells in rows:
        print(f"{label:28}" + "".join(f"{c:>12}" for c in cells[:2]) + f"{cells[2]:>8}")
    for name in results:  # the seed is unseeded, so its accuracy varies from run to run
        print(f"{name} accuracy per repeat: " + " ".join(f"{r[1]:.4f}" for r in results[name]))


if __name__ == "__main__":
    main()
