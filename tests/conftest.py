"""Shared pytest fixtures.

The multi-host test cluster comes first; its logic lives in tests/cluster.py. Add other fixtures
below the marked section.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import NoReturn

import pytest

from cluster import BACK, FRONT, Cluster, HostSpec, Nic, cluster_unavailable, close_on_exit, start_cluster

# ==== multi-host test cluster (tests/cluster.py) ================================================

# node2 names its interface ens5 and node3 has a second one, as real fleets differ per host.
CLUSTER_HOSTS = (
    HostSpec("node1"),
    HostSpec("node2", nics=(Nic(FRONT, "ens5"),)),
    HostSpec("node3", nics=(Nic(FRONT, "eth0"), Nic(BACK, "eth1"))),
    HostSpec("node4"),
)
# node5 sits only on the back net: the sole way in is SSH through bastion.
JUMP_HOSTS = (
    HostSpec("bastion", nics=(Nic(FRONT, "eth0"), Nic(BACK, "eth1"))),
    HostSpec("node5", nics=(Nic(BACK, "eth0"),), via="bastion"),
)


def cannot_run(reason: str) -> NoReturn:
    """Skip a test that cannot run here; under CI=true a missing cluster fails the build."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def serve_cluster(specs: Sequence[HostSpec]) -> Iterator[Cluster]:
    """Bring a cluster up for a fixture's scope; closed by the fixture, at exit, or on SIGTERM/SIGHUP."""
    reason = cluster_unavailable()
    if reason:
        cannot_run(reason)
    cluster = start_cluster(specs)  # a failed bring-up on a capable machine is an error
    close_on_exit(cluster)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """Four SSH hosts node1..node4 (node2: ens5; node3: eth0 + eth1 on the back net)."""
    yield from serve_cluster(CLUSTER_HOSTS)


@pytest.fixture(scope="session")
def jump_cluster() -> Iterator[Cluster]:
    """bastion (front + back net) and node5 (back net only, reachable via bastion); built lazily."""
    yield from serve_cluster(JUMP_HOSTS)


def _require_isolation(cluster: Cluster) -> Cluster:
    """``cluster`` if it runs in namespaces; otherwise skip (fail under CI=true)."""
    if not cluster.isolated:
        cannot_run("needs network namespaces (root and `ip netns`); this is the loopback fallback")
    return cluster


@pytest.fixture
def isolated(cluster: Cluster) -> Cluster:
    """``cluster``, for tests that need real namespaces (hostnames, interfaces, routes)."""
    return _require_isolation(cluster)


@pytest.fixture
def isolated_jump(jump_cluster: Cluster) -> Cluster:
    """``jump_cluster``, for tests that need node5 to be truly unreachable but through bastion."""
    return _require_isolation(jump_cluster)


# ==== other fixtures below ======================================================================


@pytest.fixture(scope="session")
def small_mnist(tmp_path_factory):
    """A small data set in torchvision's MNIST layout (`<dir>/MNIST/raw/*-ubyte`), made here."""
    from trainer.generated import write_generated_mnist

    root = tmp_path_factory.mktemp("small-mnist")
    write_generated_mnist(str(root), seed=0, n_train=2000, n_test=500)
    return root


@pytest.fixture(autouse=True)
def state_dir(tmp_path_factory, monkeypatch):
    """distctl's run records go to a fresh directory per test, never into the real home."""
    path = tmp_path_factory.mktemp("distctl-state")
    monkeypatch.setenv("DISTCTL_STATE_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def slurm():
    """A real Slurm cluster (tests/slurm_cluster.py): slurmctld, slurmd on cn1 and cn2, munge, and a
    login node reached over SSH; built once per session, torn down at its end (or at exit)."""
    import atexit

    from slurm_cluster import slurm_unavailable, start_slurm

    reason = slurm_unavailable()
    if reason:
        cannot_run(reason)
    cluster = start_slurm()
    atexit.register(cluster.close)
    try:
        yield cluster
    finally:
        cluster.close()
