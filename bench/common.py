"""Shared helpers for the benches: a namespaced cluster of N hosts, pdsh against the same
hosts and keys, interleaved timing, and a plain-text table.

The benches drive distctl exactly as a user does (the `distctl` command in a subprocess),
so every figure includes interpreter start-up and imports. Timings on a shared machine
drift: compare columns measured in the same run (ratios), not absolute numbers across runs.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from cluster import Cluster, HostSpec, cluster_unavailable, close_on_exit, start_cluster  # noqa: E402
from e2e import DISTCTL, write_inventory  # noqa: E402

__all__ = ["Cluster", "DISTCTL", "ROOT", "cluster_of", "distctl", "distctl_env", "interleaved", "median_ms",
           "pdsh_argv", "print_table", "timed", "write_inventory", "blocked_run"]


@contextmanager
def cluster_of(n: int) -> Iterator[Cluster]:
    """n hosts h01..hNN, one interface each; torn down on exit, on SIGTERM and at exit."""
    reason = cluster_unavailable()
    if reason:
        sys.exit(f"cannot start a test cluster here: {reason}")
    cluster = start_cluster([HostSpec(f"h{i:02d}") for i in range(1, n + 1)])
    close_on_exit(cluster)
    try:
        yield cluster
    finally:
        cluster.close()


# One rank per host, blocked in a socket read (C code) in its main thread and in a thread of its own.
BLOCKED = """import socket, threading
peer, us = socket.socketpair()
def reader():
    us.recv(1)
threading.Thread(target=reader, daemon=True).start()
print("ready", flush=True)
us.recv(1)
"""


@contextmanager
def blocked_run(work: Path, hosts: int) -> Iterator[tuple[Cluster, str]]:
    """(cluster, inventory path) with a detached run of BLOCKED on every one of `hosts` hosts,
    stopped on exit (`--grace 0`); its records stay in `work`."""
    (work / "prog").mkdir()
    (work / "prog" / "blocked.py").write_text(BLOCKED)
    with cluster_of(hosts) as cluster:
        inv = str(write_inventory(work / "inv.yaml", cluster, [h.name for h in cluster.hosts], code="prog",
                                  command="python blocked.py", wait_for_rank0=False))
        distctl("up", inv, "--detach", cwd=work)
        try:
            yield cluster, inv
        finally:
            distctl("stop", "--grace", "0", cwd=work)


def pdsh_argv(cluster: Cluster, hosts: Sequence[str], *command: str) -> tuple[list[str], dict[str, str]]:
    """Debian's pdsh over OpenSSH with the cluster's key, known_hosts and strict checking.

    The cluster's ssh_config names every host (HostName, Port), so `-w h01,h02` works in both
    the namespaced and the loopback mode. `-f` lifts pdsh's fan-out to distctl's default (32).
    """
    if shutil.which("pdsh") is None:
        sys.exit("pdsh is not installed (apt-get install pdsh)")
    env = {**os.environ, "PDSH_RCMD_TYPE": "ssh", "PDSH_SSH_ARGS_APPEND": f"-F {cluster.ssh_config}"}
    return ["pdsh", "-R", "ssh", "-f", "32", "-w", ",".join(hosts), *command], env


def distctl_env(cwd: Path) -> dict[str, str]:
    """The environment of a bench's `distctl`: its run records stay in the bench's folder."""
    return {"DISTCTL_STATE_DIR": str(cwd / ".distctl-state"), **os.environ, "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}


def distctl(*args: str, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """`distctl ARGS` as a user runs it (with `env` added); raises with its output when it fails."""
    done = subprocess.run([*DISTCTL, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**distctl_env(cwd), **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"distctl {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of fn takes (wall clock)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(cases: dict[str, Callable[[], object]], reps: int,
                after: dict[str, Callable[[], object]] | None = None) -> dict[str, list[float]]:
    """Run every case once per round, `reps` rounds, so that load from other users of the
    machine hits all cases alike. `after[name]` (untimed) runs after each timed call."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            times[name].append(timed(fn))
            if after and name in after:
                after[name]()
    return times


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A GitHub-flavoured Markdown table on stdout (pastes into the README as it is)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        print(line(r))
    sys.stdout.flush()
