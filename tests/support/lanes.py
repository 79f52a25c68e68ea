"""The test lanes: which tests run by default, and the guard that keeps torch out of the fast lane.

Each test gets its lanes from the fixtures it uses (``conftest.pytest_collection_modifyitems``),
never by hand:

- ``cluster``: it uses a namespaced test cluster, SSH or Slurm (``CLUSTER_FIXTURES``);
- ``torch``: it starts torch, in pytest or in a child (the ``torch`` or ``real_trainer`` fixture);
- ``fast``: neither. ``pytest`` with no arguments runs only this lane.

``pytest --lane all`` (what ``./scripts/test`` runs) runs every lane; ``--lane cluster`` or
``--lane fast,torch`` pick some. A test in two lanes (a cluster test that runs the real trainer)
runs when both are picked: the torch lane is the only one in which torch can be imported.

While the torch lane is not picked, torch cannot be imported, by pytest or by any Python it starts
(``TORCH_BLOCKED`` in the environment, read by ``notorch/sitecustomize.py``): a test that starts
torch without asking for the fixture fails with an error that says so, instead of silently
making the fast lane slow.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

LANES = ("fast", "cluster", "torch")
CLUSTER_FIXTURES = frozenset({"cluster", "jump_cluster", "isolated", "isolated_jump", "make_cluster", "cluster_server",
                              "slurm"})  # slurm: the Slurm test cluster (tests/slurm_cluster.py)
TORCH_FIXTURES = frozenset({"torch", "real_trainer"})
TORCH_BLOCKED = "DISTCTL_TEST_TORCH_BLOCKED"
_NOTORCH = str(Path(__file__).resolve().parent / "notorch")
STANDIN = str(Path(__file__).resolve().parent / "standin")  # holds the stand-in `trainer` package


def parse_lanes(values: Iterable[str]) -> frozenset[str]:
    """``--lane`` values (repeatable, comma-separated) as a set of lane names; ``all`` is every lane."""
    chosen = {part.strip() for value in values for part in value.split(",") if part.strip()}
    if "all" in chosen:
        return frozenset(LANES)
    unknown = chosen - set(LANES)
    if unknown:
        raise ValueError(f"unknown lane(s) {', '.join(sorted(unknown))}: choose from {', '.join(LANES)}, all")
    return frozenset(chosen or {"fast"})


def lanes_of(fixturenames: Iterable[str]) -> frozenset[str]:
    """The lanes of a test that uses these fixtures (their closure: what the fixtures use counts)."""
    names = set(fixturenames)
    lanes = {lane for lane, fixtures in (("cluster", CLUSTER_FIXTURES), ("torch", TORCH_FIXTURES))
             if names & fixtures}
    return frozenset(lanes or {"fast"})


def block_torch() -> None:
    """Make ``import torch`` fail here and in every Python started from here (via PYTHONPATH)."""
    os.environ[TORCH_BLOCKED] = "1"
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([_NOTORCH, path] if path else [_NOTORCH])
    if _NOTORCH not in sys.path:
        sys.path.insert(0, _NOTORCH)
    from notorch_guard import install  # lives in notorch/, on the path only from now

    install()
