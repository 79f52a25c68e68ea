"""Driving distctl against the test cluster exactly as a user would: an inventory file,
the real `distctl` command in a subprocess, and a look inside the hosts afterwards."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml

from cluster import Cluster

DISTCTL = [sys.executable, "-m", "orchestrator"]
# Each pytest-xdist worker (gw0, gw1...) counts through a range of its own: runs on this machine
# (`connection: local`) of two workers never share a port either.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
_port = iter(range(29600 + 400 * _WORKER, 29999 + 400 * _WORKER))


def free_port() -> int:
    """A fresh rendezvous port per run: no run ever waits on a previous one's sockets."""
    return next(_port)


def write_inventory(path: Path, cluster: Cluster, hosts: Iterable[str], *, slots: int = 1,
                    data: str | None = None, epochs: int = 1, host_extra: dict | None = None,
                    **job) -> Path:
    """An inventory for `hosts` of the cluster; job keys pass through."""
    entries = []
    for name in hosts:
        h = cluster.host(name)
        entry = {"name": h.name, "address": h.address, "port": h.port, "slots": slots, "workdir": h.workdir}
        entry.update((host_extra or {}).get(name, {}))
        entries.append(entry)
    train = {"epochs": epochs, "batch_size": 64, "lr": 0.05, "timeout": 60}
    train.update(job.pop("train", {}))
    inventory = {
        "defaults": {"user": cluster.user, "identity_file": str(cluster.key_path), "python": cluster.python},
        "hosts": entries,
        # a user program (job.command) takes no trainer settings
        "job": {"name": "t", "port": free_port(), "join_timeout": 120,
                **({} if "command" in job else {"train": train}), **job},
        # -F /dev/null: the machine's own ~/.ssh/config and /etc/ssh/ssh_config must not matter
        "ssh": {"known_hosts": str(cluster.known_hosts), "config": "/dev/null"},
    }
    if data:
        inventory["job"]["data"] = data
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def distctl(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*DISTCTL, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "NO_COLOR": "1", **(env or {})})


def start_distctl(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([*DISTCTL, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "NO_COLOR": "1"}, start_new_session=True)


def digests(output: str) -> dict[int, str]:
    """rank → param_sha256 from the `done` lines of every rank."""
    return {int(r): d for r, d in re.findall(r"\] done rank=(\d+) param_sha256=([0-9a-f]{64})", output)}


def wait_for(condition: Callable[[], object], timeout: float, what: str, every: float = 0.1):
    """Poll until `condition()` is truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def run_pids(cluster: Cluster, run_id: str) -> dict[str, list[int]]:
    """Every process of a run on every host, found by its exact marker inside each host."""
    return {h.name: h.pids_with_env(f"DISTCTL_RUN_ID={run_id}") for h in cluster.hosts}


def recorded_runs() -> list[dict]:
    """Every run file in this test's state directory (conftest points DISTCTL_STATE_DIR at it)."""
    runs = Path(os.environ["DISTCTL_STATE_DIR"]) / "runs"
    return [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))] if runs.is_dir() else []


def last_run_id(cwd: Path) -> str | None:
    """The newest run started from `cwd`: what a bare `distctl status` there acts on."""
    here = os.path.realpath(cwd)
    mine = [r for r in recorded_runs() if r.get("cwd") == here]
    return max(mine, key=lambda r: r["started"])["run_id"] if mine else None


def kill_tree(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
