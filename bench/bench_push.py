"""Push: bytes, time and remote commands of a first push, an unchanged re-push and a one-file
change; then one tar stream over SSH against per-file SFTP `put` (Fabric's), side by side.

Part 1 drives distctl's own steps in-process (connect, discover, plan, prepare, push) against
N namespaced hosts, with a copy of the trainer package as the code artifact (so a one-file
change touches no real file) and a generated MNIST-format data folder. Before each round the
hosts' code/ and data/ folders are removed inside the hosts (untimed), so the first push is
a real one. "commands/host" counts the remote commands distctl ran on each host: prepare is
the one round trip that finds out an artifact is already there.

Part 2 sends the same trees to one host both ways into fresh folders: tar (the workstation
builds it, one exec channel unpacks it: what distctl does) and SFTP (one `mkdir` per folder,
`put` + `chmod` per file as Fabric's `Connection.put` does: ~6 round trips each). Loopback RTTs here are ~0.05 ms,
so the per-file cost shown is a lower bound: on a real network add files x 6 x RTT.

Run (root):
    .venv/bin/python bench/bench_push.py                       # 2 hosts, 5 rounds, 12000 digits
    .venv/bin/python bench/bench_push.py --hosts 4 --n-train 60000
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import cluster_of, print_table, write_inventory

from orchestrator.launch import execute
from orchestrator.ssh import group
from orchestrator.launch.discover import discover
from orchestrator.cli.commands import new_run_id
from orchestrator.inventory.model import load_inventory
from orchestrator.plan.model import plan_launch, push_script
from orchestrator.launch.artifacts import TREE, folder_artifact, pack_folder, select_files, trainer_root


class Counting:
    """A Connection that counts the remote commands run through it."""

    def __init__(self, conn):
        self._conn, self.name, self.peer, self.commands = conn, conn.name, conn.peer, 0

    def run(self, command, stdin=b"", timeout=None):
        self.commands += 1
        return self._conn.run(command, stdin=stdin, timeout=timeout)

    def open_stream(self, command):
        self.commands += 1
        return self._conn.open_stream(command)

    def close(self):
        self._conn.close()


def tree_size(root: Path) -> tuple[int, int]:
    files = [Path(e.path) for e in select_files(root, TREE).entries]
    return len(files), sum(p.stat().st_size for p in files)


def part1(cluster, n: int, work: Path, code_root: Path, data_root: Path, reps: int) -> list[tuple]:
    hosts = cluster.hosts[:n]
    inv = load_inventory(str(write_inventory(work / "inv.yaml", cluster, [h.name for h in hosts],
                                             data=str(data_root))))
    raw = group.connect_all(inv.hosts, inv.ssh, 32)
    conns = {name: Counting(c) for name, c in raw.items()}
    stages: dict[str, list[tuple[int, float, float]]] = {}
    try:
        facts, network = discover(inv, raw, 32)

        def push_all(stage: str) -> None:
            pack_folder.cache_clear()  # a one-file change must be seen; each `distctl up` builds afresh
            start = time.perf_counter()
            artifacts = (folder_artifact("code", code_root, "trainer", TREE),
                         folder_artifact("data", data_root, ".", TREE))
            built = time.perf_counter()
            plan = plan_launch(inv, new_run_id("bench"), artifacts, facts, network)
            for c in conns.values():
                c.commands = 0
            sent = execute.push(plan, conns, execute.prepare(plan, conns, 32), 32)
            done = time.perf_counter()
            per_host = max(c.commands for c in conns.values())
            stages.setdefault(stage, []).append((sent, built - start, done - built, per_host))

        for rep in range(reps):
            for h in hosts:  # inside each host, untimed: the next push finds nothing there
                h.run(f"rm -rf {h.workdir}/code {h.workdir}/data {h.workdir}/runs", check=True)
            push_all("first push (code + data)")
            push_all("unchanged re-push")
            edited = code_root / "log.py"
            edited.write_text(edited.read_text() + f"\n# bench edit {rep} {time.time()}\n")
            push_all("one file of the code changed")
    finally:
        group.close_all(raw)
    rows = []
    for stage, runs in stages.items():
        med = lambda i: statistics.median(r[i] for r in runs)  # noqa: E731
        rows.append((stage, f"{int(med(0)):,}", f"{med(1):.3f}", f"{med(2):.3f}", int(med(3))))
    return rows


def sftp_put_tree(client, root: Path, target: str) -> None:
    """What per-file copying costs (Fabric's `put` = paramiko's `put` + `chmod`): an SFTP
    session (the subsystem starts through the login shell, like an exec), `mkdir` per
    folder, and per file open, pipelined writes, close, stat (confirm) and chmod."""
    sftp = client.open_sftp()
    try:
        sftp.mkdir(target)
        made = {target}
        for arcname, path in ((e.arcname, Path(e.path)) for e in select_files(root, TREE).entries):
            remote = str(Path(target, arcname))
            for folder in reversed([str(p) for p in Path(remote).parents]):
                if folder.startswith(target + "/") and folder not in made:
                    sftp.mkdir(folder)
                    made.add(folder)
            sftp.put(str(path), remote)
            sftp.chmod(remote, path.stat().st_mode & 0o7777)
    finally:
        sftp.close()


def fabric_connection(cluster, host):
    from fabric import Connection

    conn = Connection(host.address, user=cluster.user, port=host.port,
                      connect_kwargs={"key_filename": [str(cluster.key_path)], "look_for_keys": False})
    conn.client.load_host_keys(str(cluster.known_hosts))
    conn.open()
    return conn


def part2(cluster, work: Path, trees: dict[str, Path], reps: int) -> list[tuple]:
    host = cluster.hosts[0]
    inv = load_inventory(str(write_inventory(work / "inv1.yaml", cluster, [host.name])))
    ours = group.connect_all(inv.hosts, inv.ssh, 1)[host.name]
    fab = fabric_connection(cluster, host)
    rows = []
    try:
        for label, root in trees.items():
            times: dict[str, list[float]] = {"tar over one exec channel": [], "SFTP put per file": []}
            for rep in range(-1, reps):  # rep -1 warms caches, untimed
                base = f"{host.workdir}/bench-{label.split()[0]}-{rep + 1}"
                start = time.perf_counter()
                pack_folder.cache_clear()
                group.check(ours, push_script(base + "-tar"), "tar push", stdin=pack_folder(str(root), ".", TREE).tar)
                tar_s = time.perf_counter() - start
                start = time.perf_counter()
                sftp_put_tree(fab.client, root, base + "-sftp")
                sftp_s = time.perf_counter() - start
                if rep >= 0:
                    times["tar over one exec channel"].append(tar_s)
                    times["SFTP put per file"].append(sftp_s)
                host.run(f"rm -rf {base}-tar {base}-sftp", check=True)
            files, size = tree_size(root)
            tar_med = statistics.median(times["tar over one exec channel"])
            for how, values in times.items():
                med = statistics.median(values)
                rows.append((label, files, f"{size:,}", how, f"{med:.3f}", f"{med / tar_med:.2f}x"))
    finally:
        ours.close()
        fab.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--n-train", type=int, default=12000, help="digits in the data folder (MNIST: 60000)")
    args = parser.parse_args()
    from trainer.generated import write_generated_mnist

    work = Path(tempfile.mkdtemp(prefix="bench-push-"))
    atexit.register(shutil.rmtree, work, True)  # data sets and run state
    code_root = work / "trainer"
    shutil.copytree(trainer_root(), code_root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    data_root = work / "data"
    write_generated_mnist(str(data_root), seed=0, n_train=args.n_train, n_test=args.n_train // 6)
    with cluster_of(max(2, args.hosts)) as cluster:
        rows1 = part1(cluster, args.hosts, work, code_root, data_root, args.reps)
        rows2 = part2(cluster, work, {"trainer package": code_root, "data folder": data_root}, args.reps)
    files, size = tree_size(code_root)
    dfiles, dsize = tree_size(data_root)
    print(f"\n{args.hosts} hosts; code: {files} files, {size:,} bytes; data: {dfiles} files, {dsize:,} bytes; "
          f"median of {args.reps} rounds\n")
    print_table(("push", "bytes sent (all hosts)", "build + hash s", "prepare + push s", "commands/host"), rows1)
    print()
    print_table(("tree", "files", "bytes", "how", "s", "vs tar"), rows2)


if __name__ == "__main__":
    main()
