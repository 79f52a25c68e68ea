"""Time to first step: from `distctl up` to every rank training, split into distctl's part
and the trainer's own start.

Runs `distctl -v up` (attached) on N namespaced hosts, one rank each, and stamps every line
it prints on arrival at the workstation (rank lines arrive through the host's log follower,
which polls every 0.2 s). Milestones, in seconds since `distctl up` started:

  pushed          connect, discovery, preflight, prepare, push (nothing: a warm-up run pushed)
  rank 0 started  rank 0's host launched it
  launched        rank 0's port listened (its python + torch import + init_process_group),
                  then every other host launched its ranks: `up`'s own work ends here
  joined (all)    the last rank's `joined` line: workers import torch only now
  data (all)      the last rank's `data` line: data decoded into tensors
  epoch 1 (all)   the last rank's first `epoch=1` line (the trainer logs no per-step line;
                  on this small set one epoch is a few steps)
  done (all)      every rank printed `done` and the run ended

It also times `import torch` alone on one host, for scale.

Run (root):
    .venv/bin/python bench/bench_first_step.py                 # 2 hosts, 3 runs
    .venv/bin/python bench/bench_first_step.py --hosts 4 --reps 5
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import selectors
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import DISTCTL, ROOT, cluster_of, print_table, write_inventory

MILESTONES = ("pushed", "rank 0 started", "launched", "joined (all)", "data (all)", "epoch 1 (all)",
              "done (all)")
RANK_LINE = re.compile(r"^\[\S+ r(\d+)\] (\S+)")


def timeline(inv: str, cwd: Path, world: int) -> dict[str, float]:
    """Run `distctl -v up` once; the arrival time of each milestone (the last rank's, for ranks)."""
    start = time.perf_counter()
    proc = subprocess.Popen([*DISTCTL, "-v", "up", inv], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={"DISTCTL_STATE_DIR": str(cwd / ".distctl-state"), **os.environ, "NO_COLOR": "1",
                                 "PYTHONPATH": str(ROOT)})
    seen: dict[str, float] = {}
    per_rank: dict[str, dict[int, float]] = {"joined": {}, "data": {}, "epoch=1": {}, "done": {}}
    output: list[str] = []
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        while sel.get_map():
            for key, _ in sel.select():
                line = key.fileobj.readline()
                if not line:
                    sel.unregister(key.fileobj)
                    continue
                now = time.perf_counter() - start
                text = line.decode(errors="replace").rstrip("\n")
                output.append(text)
                stamp(text, now, seen, per_rank)
    if proc.wait() != 0:
        raise RuntimeError(f"distctl up exited {proc.returncode}:\n" + "\n".join(output[-30:]))
    for event, name in (("joined", "joined (all)"), ("data", "data (all)"), ("epoch=1", "epoch 1 (all)"),
                        ("done", "done (all)")):
        if len(per_rank[event]) == world:
            seen[name] = max(per_rank[event].values())
    return seen


def stamp(text: str, now: float, seen: dict[str, float], per_rank: dict[str, dict[int, float]]) -> None:
    match = RANK_LINE.match(text)
    if match:
        rank, first = int(match[1]), match[2]
        if first in per_rank:  # `epoch=1` is the first word of the first epoch's line
            per_rank[first].setdefault(rank, now)
    elif text.startswith("distctl: pushed "):
        seen["pushed"] = now
    elif "rank 0 started; waiting" in text:
        seen["rank 0 started"] = now
    elif re.match(r"distctl: run \S+ started", text):
        seen["launched"] = now


def torch_import_s(cluster) -> float:
    host = cluster.hosts[0]
    done = host.run([cluster.python, "-c", "import time; t = time.perf_counter(); import torch; "
                     "print(time.perf_counter() - t)"], check=True, timeout=300)
    return float(done.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=2000)
    args = parser.parse_args()
    from trainer.generated import write_generated_mnist

    work = Path(tempfile.mkdtemp(prefix="bench-first-step-"))
    atexit.register(shutil.rmtree, work, True)  # data sets and run state
    write_generated_mnist(str(work / "data"), seed=0, n_train=args.n_train, n_test=args.n_train // 4)
    runs = []
    with cluster_of(args.hosts) as cluster:
        inv = str(write_inventory(work / "inv.yaml", cluster, [h.name for h in cluster.hosts],
                                  data=str(work / "data"), epochs=1))
        timeline(inv, work, args.hosts)  # warm-up, untimed: pushes code and data, warms caches
        imports = []
        for _ in range(args.reps):
            imports.append(torch_import_s(cluster))
            runs.append(timeline(inv, work, args.hosts))
            print(f"# run {len(runs)}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[-1].items()), flush=True)
    rows, before = [], 0.0
    for name in MILESTONES:
        values = [r[name] for r in runs if name in r]
        if not values:
            continue
        at = statistics.median(values)
        rows.append((name, f"{at:.2f}", f"+{at - before:.2f}"))
        before = at
    print(f"\n{args.hosts} hosts x 1 rank, {args.n_train} digits, 1 epoch; median of {args.reps} runs; "
          f"`import torch` alone on one host: {statistics.median(imports):.2f} s\n")
    print_table(("milestone", "s since `distctl up`", "step"), rows)


if __name__ == "__main__":
    main()
