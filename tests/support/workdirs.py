"""Inventories whose hosts each get a fresh workdir on the test cluster, so that a test can tell
that distctl created nothing there."""

from __future__ import annotations

import uuid
from pathlib import Path

import yaml
from cluster import Cluster
from e2e import write_inventory


def inventory(tmp_path: Path, cluster: Cluster, hosts: list[str], *, ssh: dict | None = None,
              host_extra: dict | None = None, env: dict | None = None) -> Path:
    """An inventory with a fresh workdir per host (so a test can tell nothing was created)."""
    extra = {n: {"workdir": fresh_workdir(cluster, n), **(host_extra or {}).get(n, {})} for n in hosts}
    path = write_inventory(tmp_path / "inv.yaml", cluster, hosts, host_extra=extra, fallback="generated")
    data = yaml.safe_load(path.read_text())
    data["ssh"].update(ssh or {})
    data["ssh"] = {k: v for k, v in data["ssh"].items() if v is not None}
    if env:
        data["job"]["env"] = env
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def fresh_workdir(cluster: Cluster, name: str) -> str:
    return f"{cluster.host(name).workdir}/sec-{uuid.uuid4().hex[:8]}"


def workdir_of(inv: Path, name: str) -> str:
    return next(h for h in yaml.safe_load(inv.read_text())["hosts"] if h["name"] == name)["workdir"]


def exists_on(cluster: Cluster, name: str, path: str) -> bool:
    return cluster.host(name).run(["test", "-e", path]).returncode == 0
