"""Scale: bounded fan-out, one connection and few commands per host, and a 16-host run.

Every remote command costs a round trip plus the login shell's start-up on the host (a conda
or pyenv block in ~/.bashrc: ~0.25 s of CPU on this machine's test hosts), so the number of
commands per host is what separates distctl from pdsh (bench/bench_fanout.py). The pure
counting tests use fake connections; the rest run on the real namespaced cluster.
"""

from __future__ import annotations

import re
import shlex
import threading
import time
from pathlib import Path

import pytest

from cluster import HostSpec
from e2e import digests, distctl, write_inventory
from support.fakes import Call, FakeConnection
from orchestrator.ssh import group
from orchestrator.launch.discover import discover
from orchestrator.inventory.model import parse_inventory
from orchestrator.ssh.remote import Result

# ------------------------------------------------------------ fan-out bound


def test_fan_out_never_runs_more_than_fanout_at_once():
    running, peak, lock = [0], [0], threading.Lock()

    def work(item: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return item * 2

    results = group.fan_out("step", range(20), work, 3, str)
    assert results.ok == {str(i): i * 2 for i in range(20)} and results.failed == {}
    assert peak[0] == 3


def test_connect_all_opens_one_connection_per_host_within_the_fanout(monkeypatch):
    inv = _inventory(12)
    opened, running, peak, lock = [], [0], [0], threading.Lock()

    def fake_connect(host, ssh):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            opened.append(host.name)
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return _FakeHost(host.name, "10.0.0.11", {})

    monkeypatch.setattr(group, "connect", fake_connect)
    conns = group.connect_all(inv.hosts, inv.ssh, 4)
    assert sorted(opened) == sorted(conns) == sorted(h.name for h in inv.hosts)
    assert peak[0] == 4


# ------------------------------------------------- commands per host (pure)


class _FakeHost(FakeConnection):
    """A connection that answers discovery and route lookups from a routing table."""

    def __init__(self, name: str, address: str, routes: dict[str, str]):
        super().__init__(name, peer=address, default=self._discovery)
        self.address, self.routes = address, routes

    def _discovery(self, call: Call) -> Result:
        command = call.command
        out = [] if command.startswith("for d in") else [
            f"home=/root\nhostname={self.name}\nhas_ip=1",
            f"addr=2: eth0    inet {self.address}/24 brd 10.0.0.255 scope global eth0",
            "python=3.11.7\ntorch=2.14.1\ntorchvision=0.29.1\ngpus=0"]
        match = re.search(r"for d in (.*?); do", command)
        for dest in shlex.split(match[1]) if match else []:
            out.append(f"route {dest} {dest} {self.routes.get(dest, 'dev eth0')} src {self.address} uid 0")
        return Result(0, "\n".join(out) + "\n", "")


def _inventory(n: int):
    hosts = "\n".join(f"  - {{name: h{i:02d}, address: 10.0.0.{10 + i}}}" for i in range(1, n + 1))
    return parse_inventory(f"hosts:\n{hosts}\njob: {{name: t, port: 29500}}\n", "inv.yaml")


def test_discovery_is_one_command_per_host_when_rank0_is_directly_reachable():
    inv = _inventory(16)
    conns = {h.name: _FakeHost(h.name, h.address, {}) for h in inv.hosts}
    facts, network = discover(inv, conns, 32)
    assert network.master_addr == "10.0.0.11"
    assert {name: len(c.commands) for name, c in conns.items()} == {h.name: 1 for h in inv.hosts}


def test_discovery_looks_further_when_a_worker_reaches_rank0_only_through_a_gateway():
    """rank 0 has a second address that every worker reaches directly: it wins, as before."""
    inv = _inventory(3)
    conns = {h.name: _FakeHost(h.name, h.address, {"10.0.0.11": "via 10.0.0.254 dev eth0"})
             for h in inv.hosts}
    rank0 = conns["h01"]
    original = rank0.run

    def rank0_with_two_addresses(command, stdin=b"", timeout=None):
        result = original(command, stdin, timeout)
        extra = "addr=3: eth1    inet 10.1.0.11/24 brd 10.1.0.255 scope global eth1\n"
        return Result(0, result.stdout + extra, "")

    rank0.run = rank0_with_two_addresses
    facts, network = discover(inv, conns, 32)
    assert network.master_addr == "10.1.0.11"
    assert [len(conns[n].commands) for n in ("h01", "h02", "h03")] == [1, 2, 2]


# ------------------------------------------------------ on the real cluster


def test_discovery_does_not_import_torch_on_the_hosts(cluster, tmp_path):
    """Every python distctl starts on a host logs its imports; torch is not among them."""
    log = tmp_path / "imports.log"
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(cluster.python)} -X importtime \"$@\" 2>>{log}\n")
    wrapper.chmod(0o755)
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"],
                          host_extra={n: {"python": str(wrapper)} for n in ("node1", "node2")})
    done = distctl("check", str(inv), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in log.read_text().splitlines() if "|" in line}
    assert "importlib.metadata" in imported  # the log is real: the probe read package metadata
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}


def test_a_large_stdin_arrives_intact(cluster, tmp_path):
    """A data push is one command with the tar on stdin (sent as a memoryview: paramiko's
    sendall copies the rest of a bytes object after every packet, quadratic in the size;
    bench/bench_push.py measures it)."""
    import hashlib
    import os

    from orchestrator.inventory.model import load_inventory

    inv = load_inventory(str(write_inventory(tmp_path / "inv.yaml", cluster, ["node1"])))
    conn = group.connect_all(inv.hosts, inv.ssh, 1)["node1"]
    try:
        data = os.urandom(48 << 20)
        out = group.check(conn, "sha256sum", "digest", stdin=data).stdout
    finally:
        conn.close()
    assert out.split()[0] == hashlib.sha256(data).hexdigest()


HOSTS = 16


@pytest.fixture(scope="module")
def sixteen(cluster_server) -> object:
    """Sixteen namespaced hosts h01..h16 of their own, for this module only."""
    yield from cluster_server([HostSpec(f"h{i:02d}") for i in range(1, HOSTS + 1)])


def _accepted(cluster) -> dict[str, int]:
    """Public-key logins each host's sshd has accepted so far (sshd logs each at INFO)."""
    return {h.name: (Path(cluster.tmpdir) / h.name / "sshd.log").read_text().count("Accepted publickey")
            for h in cluster.hosts}


def test_sixteen_hosts_train_to_equal_parameters_over_one_connection_each(sixteen, standin_mnist, tmp_path):
    """The stand-in trainer (sixteen torch imports would take minutes on a small machine); the real
    trainer's numerics across hosts are test_up's."""
    names = [h.name for h in sixteen.hosts]
    inv = write_inventory(tmp_path / "inv.yaml", sixteen, names, data=str(standin_mnist), epochs=1,
                          train={"timeout": 180}, join_timeout=240)
    before = _accepted(sixteen)
    start = time.monotonic()
    done = distctl("up", str(inv), cwd=tmp_path, timeout=600)
    took = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-3000:]
    found = digests(done.stdout)
    assert sorted(found) == list(range(HOSTS)), done.stdout[-3000:]
    assert len(set(found.values())) == 1, found
    after = _accepted(sixteen)
    assert {n: after[n] - before[n] for n in names} == {n: 1 for n in names}
    print(f"16-host distctl up: {took:.1f} s")
