"""Restart overhead: from a rank's death to training again under job.max_restarts, next to
a fresh start (`distctl up --detach`) of the same job, in the same runs.

Each round is one run of the bundled trainer on 2 hosts (one rank each, job.max_restarts: 1):
`distctl up --detach` (the fresh start, timed from the command's start), then, after rank 1's
`epoch=K` line, a SIGKILL of rank 1's trainer process on h02 (the restart, timed from the
kill), then an untimed `distctl stop --grace 0` once the restarted rank logged its next epoch.
The bench polls the run's files on the hosts every POLL_S (read in place; the hosts share
this machine's clock) and stamps each milestone when it first appears:

  rank 1's exit     restart: rank1.exit on h02 (its wrapper's last act: the trainer is dead)
  rank 0 exited     restart: rank0.exit on h01 (rank 0 lost its peer and ended by itself)
  group gone        restart: the process group of rank 0 or rank 1, whichever first, no longer
                    exists: what the agents poll for (every agent.TICK_S) to see a rank's exit
  restart decided   restart: `restart 1/1 after ...` in h01's agent.events (the coordinator
                    waits agent.SETTLE_S after the first failure it hears of, for the peers' exits)
  rank 0 started    fresh: rank0.pid written by the launch; restart: the `--- distctl: restart`
                    marker in rank0.log (every host stopped its ranks; h01 starts rank 0 first)
  rank 1 started    the same for rank 1 on h02 (restart: after rank 0's port listened)
  rendezvous        rank 1's `rendezvous` line: python and torch imported
  joined            rank 1's `joined` line: init_process_group returned
  data              rank 1's `data` line: data decoded into tensors
  training          fresh: the `data` line (the first step comes next); restart: rank 1's
                    `resume` line (rank 0 read the checkpoint and broadcast it; the next step
                    comes next). Both are the point right before DDP wraps the model.
  next epoch        rank 1's `epoch=1` line (fresh) or `epoch=K+1` (restart)

Run (root, for network namespaces):
    .venv/bin/python bench/bench_restart.py                         # 8000 generated digits
    .venv/bin/python bench/bench_restart.py --data /work/shared/data/mnist-mini --reps 3
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import DISTCTL, cluster_of, distctl, distctl_env, print_table, write_inventory

POLL_S = 0.05
TIMEOUT_S = 180.0
MARKER = r"^--- distctl: restart "
# The milestones in the order they come; a fresh start has only the second group.
RESTART_ONLY = ("rank 1's exit recorded", "rank 0 exited (peer lost)", "a failed rank's group gone",
                "restart decided (h01's agent)")
BOTH = ("rank 0 started", "rank 1 started", "rank 1: rendezvous (torch imported)", "rank 1: joined", "rank 1: data",
        "rank 1: training (`resume` / first step)", "rank 1: next epoch line")

Probe = Callable[[], object]


class HostFiles:
    """The files of one run on each host, read in place: a namespaced host's work directory is
    a tmpfs in its own mount namespace, seen from here as /proc/ANCHOR/root/WORKDIR."""

    def __init__(self, cluster) -> None:
        self.roots = [Path(f"/proc/{h.anchor_pid}/root{h.workdir}" if h.anchor_pid else h.workdir) / "runs"
                      for h in cluster.hosts]
        self.before = self.runs()
        self.run_id: str | None = None

    def runs(self) -> set[str]:
        return set(os.listdir(self.roots[0])) if self.roots[0].is_dir() else set()

    def path(self, host: int, name: str) -> Path | None:
        """The file of this run on host `host`; None until the run's folder exists on h01."""
        if self.run_id is None:
            new = self.runs() - self.before
            self.run_id = new.pop() if len(new) == 1 else None
        return None if self.run_id is None else self.roots[host] / self.run_id / name

    def size(self, host: int, name: str) -> int:
        path = self.path(host, name)
        return path.stat().st_size if path and path.exists() else 0

    def text(self, host: int, name: str, offset: int = 0) -> str:
        path = self.path(host, name)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except (OSError, TypeError):
            return ""


def exists(files: HostFiles, host: int, name: str) -> Probe:
    return lambda: (path := files.path(host, name)) is not None and path.exists()


def logged(files: HostFiles, host: int, name: str, pattern: str, offset: int = 0) -> Probe:
    """Whether a line matching `pattern` was written to the file past `offset`; the match."""
    return lambda: re.search(pattern, files.text(host, name, offset), re.M)


def watch(probes: dict[str, Probe], t0: float, optional: tuple[str, ...] = ()) -> dict[str, float]:
    """Poll every POLL_S until every probe not in `optional` held once; seconds since t0 of each."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + TIMEOUT_S
    while any(name not in seen for name in probes if name not in optional):
        for name, probe in probes.items():
            if name not in seen and probe():
                seen[name] = time.monotonic() - t0
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {[n for n in probes if n not in seen]}")
        time.sleep(POLL_S)
    return seen


def rank1_probes(files: HostFiles, training: str, epoch: int, offset: int = 0) -> dict[str, Probe]:
    log = lambda pattern: logged(files, 1, "rank1.log", pattern, offset)  # noqa: E731
    return {"rank 1: rendezvous (torch imported)": log(r"^rendezvous "), "rank 1: joined": log(r"^joined "),
            "rank 1: data": log(r"^data "), "rank 1: training (`resume` / first step)": log(training),
            "rank 1: next epoch line": log(rf"^epoch={epoch} ")}


def fresh_start(cluster, inv: Path, work: Path) -> tuple[HostFiles, dict[str, float]]:
    """`distctl up --detach`, timed until rank 1 logged its first epoch."""
    files = HostFiles(cluster)
    t0 = time.monotonic()
    up = subprocess.Popen([*DISTCTL, "up", str(inv), "--detach"], cwd=work, env=distctl_env(work),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def returned() -> bool:
        if up.poll():
            raise RuntimeError(f"distctl up --detach exited {up.returncode}")
        return up.returncode == 0

    probes = {"rank 0 started": exists(files, 0, "rank0.pid"), "rank 1 started": exists(files, 1, "rank1.pid"),
              "up returned": returned, **rank1_probes(files, r"^data ", 1)}
    try:
        marks = watch(probes, t0)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; its output:\n{up.communicate()[0]}") from None
    up.communicate()
    return files, marks


def restart(cluster, files: HostFiles, kill_after: int) -> tuple[dict[str, float], str]:
    """SIGKILL rank 1's trainer after its epoch `kill_after`, timed until the restarted rank 1
    logged its next epoch; also what the agent decided and the epoch rank 1 resumed from."""
    watch({"epoch K": logged(files, 1, "rank1.log", rf"^epoch={kill_after} ")}, time.monotonic())
    at = {name: files.size(host, name) for host, name in ((0, "rank0.log"), (0, "agent.events"), (1, "rank1.log"))}
    pid = trainer_pid(cluster.hosts[1], files.run_id, rank=1)
    groups = [int(files.text(host, f"rank{host}.pid")) for host in (0, 1)]  # one rank per host: rank = host
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    probes = {"rank 1's exit recorded": exists(files, 1, "rank1.exit"),
              "rank 0 exited (peer lost)": exists(files, 0, "rank0.exit"),
              "a failed rank's group gone": lambda: not all(map(group_alive, groups)),
              "restart decided (h01's agent)": logged(files, 0, "agent.events", r"^restart \d+/",
                                                      at["agent.events"]),
              "rank 0 started": logged(files, 0, "rank0.log", MARKER, at["rank0.log"]),
              "rank 1 started": logged(files, 1, "rank1.log", MARKER, at["rank1.log"]),
              **rank1_probes(files, r"^resume ", kill_after + 1, at["rank1.log"])}
    # an exit file lives until the restart removes it: a poll may miss it
    marks = watch(probes, t0, optional=("rank 1's exit recorded", "rank 0 exited (peer lost)"))
    decided = re.search(r"^restart .*", files.text(0, "agent.events", at["agent.events"]), re.M)
    rank0 = re.search(r"^error .*", files.text(0, "rank0.log", at["rank0.log"]), re.M)
    resumed = re.search(r"^resume .*\bepoch=(\d+)", files.text(1, "rank1.log", at["rank1.log"]), re.M)
    return marks, f"{decided[0]}; rank 0: {rank0[0] if rank0 else 'no error line'}; resumed from epoch {resumed[1]}"


def group_alive(pgid: int) -> bool:
    """As the agent sees a rank (agent.group_alive): a group of zombies not yet reaped still exists."""
    try:
        os.killpg(pgid, 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def trainer_pid(host, run_id: str, rank: int) -> int:
    """The trainer process of one rank (not its sh wrapper), by the run's marker in its environment."""
    for pid in host.pids_with_env(f"DISTCTL_RUN_ID={run_id}"):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"trainer" in argv and f"RANK={rank}".encode() in env:
            return pid
    raise RuntimeError(f"no trainer process of rank {rank} in run {run_id} on {host.name}")


def job(cluster, work: Path, data: str, kill_after: int) -> Path:
    """The job's inventory, with a new port: no run waits on the previous one's sockets."""
    return write_inventory(work / "inv.yaml", cluster, [h.name for h in cluster.hosts], data=data,
                           epochs=kill_after + 2, max_restarts=1)


def one_round(cluster, work: Path, data: str, kill_after: int) -> tuple[dict, dict, str]:
    """One run: its fresh start, then its restart."""
    try:
        files, fresh = fresh_start(cluster, job(cluster, work, data, kill_after), work)
        again, what = restart(cluster, files, kill_after)
    finally:
        distctl("stop", "--grace", "0", cwd=work)
    return fresh, again, what


def column(runs: list[dict[str, float]], name: str) -> float | None:
    values = [r[name] for r in runs if name in r]
    return statistics.median(values) if values else None


def report(fresh: list[dict], again: list[dict]) -> None:
    rows, before = [], [0.0, 0.0]
    for name in RESTART_ONLY + BOTH:
        ats, cells = [column(again, name), column(fresh, name) if name in BOTH else None], []
        for i, at in enumerate(ats):
            cells += ["–", "–"] if at is None else [f"{at:.2f}", f"+{at - before[i]:.2f}"]
            before[i] = before[i] if at is None else at
        rows.append((name, *cells, "–" if None in ats else f"{ats[0] / ats[1]:.2f}x"))
    print_table(("milestone", "restart: s since kill", "step", "fresh: s since `up`", "step",
                 "restart / fresh"), rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="rounds: one run, one fresh start and one restart each")
    parser.add_argument("--kill-after", type=int, default=1, metavar="K", help="kill rank 1 after its epoch K")
    parser.add_argument("--data", help="a folder holding MNIST/raw (default: generated digits)")
    parser.add_argument("--n-train", type=int, default=8000, help="generated digits, without --data")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-restart-"))
    atexit.register(shutil.rmtree, work, True)
    data = args.data
    if data is None:
        from trainer.generated import write_generated_mnist
        data = str(work / "data")
        write_generated_mnist(data, seed=0, n_train=args.n_train, n_test=args.n_train // 4)
    fresh, again = [], []
    with cluster_of(2) as cluster:
        distctl("up", str(job(cluster, work, data, args.kill_after)), "--detach", cwd=work)  # warm-up, untimed:
        distctl("stop", "--grace", "0", cwd=work)  # it pushes the code and the data
        for n in range(1, args.reps + 1):
            f, a, what = one_round(cluster, work, data, args.kill_after)
            fresh.append(f)
            again.append(a)
            print(f"# round {n}: {what}; fresh " + ", ".join(f"{k} {v:.2f}" for k, v in f.items())
                  + "; restart " + ", ".join(f"{k} {v:.2f}" for k, v in a.items()), flush=True)
    print(f"\n2 hosts x 1 rank, {'data ' + args.data if args.data else f'{args.n_train} generated digits'}, "
          f"rank 1 killed after epoch {args.kill_after}; median of {args.reps} rounds; "
          f"`up --detach` returned after {column(fresh, 'up returned'):.2f} s\n")
    report(fresh, again)


if __name__ == "__main__":
    main()
