"""Shared pytest fixtures, and the test lanes.

The lanes come first (tests/support/lanes.py: a test's lanes follow from its fixtures), then the
multi-host test cluster, whose logic lives in tests/cluster.py. Add other fixtures below the
marked section.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

import pytest

from cluster import BACK, FRONT, Cluster, HostSpec, Nic, cluster_unavailable, close_on_exit, start_cluster
from support import lanes

# ==== test lanes (tests/support/lanes.py) =======================================================


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--lane", action="append", default=[], metavar="LANES",
                     help="test lanes to run, comma-separated: fast (the default), cluster, torch, or all")


def pytest_configure(config: pytest.Config) -> None:
    try:
        config.distctl_lanes = lanes.parse_lanes(config.getoption("--lane"))  # type: ignore[attr-defined]
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    if "torch" not in config.distctl_lanes:  # type: ignore[attr-defined]
        lanes.block_torch()


@pytest.hookimpl(tryfirst=True)  # before -m reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its lanes, from the fixtures it uses; keep those of the chosen lanes."""
    chosen, kept, left = config.distctl_lanes, [], []  # type: ignore[attr-defined]
    for item in items:
        mine = lanes.lanes_of(getattr(item, "fixturenames", ()))
        for lane in mine:
            item.add_marker(lane)
        (kept if mine <= chosen else left).append(item)
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = kept
    config.distctl_left = left  # type: ignore[attr-defined]


def pytest_report_header(config: pytest.Config) -> str:
    return f"lanes: {', '.join(sorted(config.distctl_lanes))} (--lane all runs every lane)"  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    left = getattr(config, "distctl_left", [])
    if left:
        count = {lane: sum(lane in lanes.lanes_of(item.fixturenames) for item in left) for lane in lanes.LANES}
        text = ", ".join(f"{n} {lane}" for lane, n in count.items() if n)
        terminalreporter.write_line(f"lanes not run: {len(left)} test(s) ({text}); `pytest --lane all` runs them")


@pytest.fixture(scope="session")
def torch():
    """The torch module, for a test that computes with it: asking for it puts the test in the torch lane."""
    import torch

    return torch


@pytest.fixture(autouse=True)
def bundled_trainer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which trainer package a distctl started by this test pushes as the bundled trainer: the
    real one for a test that asks for ``real_trainer``, else the torch-free stand-in (put first on
    PYTHONPATH, where distctl finds the package it pushes)."""
    if "real_trainer" in request.fixturenames:
        return "real"
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([lanes.STANDIN, path] if path else [lanes.STANDIN]))
    return "standin"


@pytest.fixture(scope="session")
def real_trainer() -> None:
    """For a test that runs torch outside pytest, here or on the test hosts: the bundled trainer, a
    torch program, torchrun. Asking for it puts the test in the torch lane; tests of mechanisms
    run the torch-free stand-in (tests/support/standin.py) instead."""

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


@pytest.fixture(scope="session")
def make_cluster() -> Callable[[Sequence[HostSpec]], Cluster]:
    """``start_cluster``, for a test that builds and closes a cluster of its own (skips, or fails
    under CI=true, where none can run)."""
    reason = cluster_unavailable()
    if reason:
        cannot_run(reason)
    return start_cluster


@pytest.fixture(scope="session")
def cluster_server() -> Callable[[Sequence[HostSpec]], Iterator[Cluster]]:
    """``serve_cluster``, for a fixture that serves a cluster of other hosts (``yield from``)."""
    return serve_cluster


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
def small_mnist(tmp_path_factory, real_trainer):
    """A small data set in torchvision's MNIST layout (`<dir>/MNIST/raw/*-ubyte`), made here, for
    the real trainer (so a test that asks for it is in the torch lane)."""
    from trainer.generated import write_generated_mnist

    root = tmp_path_factory.mktemp("small-mnist")
    write_generated_mnist(str(root), seed=0, n_train=2000, n_test=500)
    return root


FAST_TIMERS = {"heartbeat": 0.5, "stall": 2.0, "first_retry": 0.2, "max_retry": 1.0}


@pytest.fixture
def fast_timers(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """Link timers for a test of link faults, in seconds (orchestrator/timers.py): every distctl it
    starts notices a stalled link after 2 s instead of 20, and retries it within 1 s."""
    from orchestrator.timers import TEST_TIMERS

    monkeypatch.setenv(TEST_TIMERS, ",".join(f"{name}={value:g}" for name, value in FAST_TIMERS.items()))
    return FAST_TIMERS


@pytest.fixture(scope="session")
def standin_mnist(tmp_path_factory):
    """MNIST's four files in torchvision's layout, a few bytes each: all the stand-in trainer
    (tests/support/standin) looks for, and still a data set that distctl pushes."""
    raw = tmp_path_factory.mktemp("standin-mnist") / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(name.encode())
    return raw.parent.parent


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
