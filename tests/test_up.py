"""`distctl up` and `check` on the real SSH test cluster."""

from __future__ import annotations

import re

import pytest

from e2e import digests, distctl, recorded_runs, wait_for, write_inventory

pytestmark = pytest.mark.cluster


def test_two_hosts_train_to_equal_parameters(cluster, small_mnist, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], data=str(small_mnist))
    done = distctl("up", str(inv), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = digests(done.stdout)
    assert sorted(found) == [0, 1]
    assert len(set(found.values())) == 1, found
    assert "[node1 r0] epoch=1" in done.stdout and "[node2 r1] epoch=1" in done.stdout
    assert "test_accuracy=" in done.stdout
    # the data really was pushed: node2's private workdir has it, the workstation's view doesn't
    node2 = cluster.host("node2")
    listing = node2.run(f"ls {node2.workdir}/data/*/MNIST/raw", check=True).stdout
    assert "train-images-idx3-ubyte" in listing


def test_an_unchanged_re_up_pushes_nothing(cluster, standin_mnist, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], data=str(standin_mnist),
                          train={"epochs": 1})
    first = distctl("up", str(inv), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = distctl("up", str(inv), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "pushed 0 bytes (every host was up to date)" in second.stderr


def test_two_hosts_two_slots_and_host_order_is_rank_order(cluster, standin_mnist, tmp_path):
    # node3 listed first: it holds ranks 0 and 1, node4 ranks 2 and 3 (the stand-in trainer: the
    # real one's numerics on two hosts are the test above's)
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node3", "node4"], slots=2, data=str(standin_mnist))
    done = distctl("up", str(inv), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = digests(done.stdout)
    assert sorted(found) == [0, 1, 2, 3] and len(set(found.values())) == 1, found
    for prefix in ("[node3 r0] done", "[node3 r1] done", "[node4 r2] done", "[node4 r3] done"):
        assert prefix in done.stdout


def test_check_names_the_discovered_address_and_interfaces(isolated, tmp_path):
    # node2's interface is called ens5, node1's eth0: each host gets its own name
    inv = write_inventory(tmp_path / "inv.yaml", isolated, ["node1", "node2"])
    done = distctl("check", "--show-plan", "--full", str(inv), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    node1 = isolated.host("node1")
    assert f"rank 0 address: {node1.address}" in done.stdout
    assert "node1: hostname node1" in done.stdout and "interface eth0" in done.stdout
    assert "node2: hostname node2" in done.stdout and "interface ens5" in done.stdout
    assert "GLOO_SOCKET_IFNAME=ens5" in done.stdout
    assert not recorded_runs()  # check starts nothing and records nothing
    readable = distctl("check", "--show-plan", str(inv), cwd=tmp_path)  # alike hosts: one template
    assert readable.returncode == 0 and "GLOO_SOCKET_IFNAME={{iface}}" in readable.stdout, readable.stderr
    assert re.search(r"^#   node2 .*\bens5\b", readable.stdout, re.M), readable.stdout
    short = distctl("check", str(inv), cwd=tmp_path)  # without --show-plan: the verdict only
    assert short.returncode == 0 and "GLOO_SOCKET_IFNAME" not in short.stdout
    assert len(short.stdout.splitlines()) <= 6 and short.stderr.endswith(
        "check passed: 'distctl up' would start (the commands it would run: --show-plan)\n")


def test_check_fails_and_launches_nothing_when_the_port_is_taken(isolated, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", isolated, ["node1", "node2"])
    import yaml

    port = yaml.safe_load(inv.read_text())["job"]["port"]
    node1 = isolated.host("node1")
    holder = node1.run(f"python3 -c 'import socket,time; s=socket.socket(); s.bind((\"{node1.address}\", {port})); "
                       f"s.listen(); time.sleep(60)' >/dev/null 2>&1 & echo $!", check=True)
    pid = int(holder.stdout.split()[-1])
    wait_for(lambda: f":{port} " in node1.run("ss -ltnH").stdout, 10, "the port holder to listen")
    try:
        done = distctl("up", str(inv), cwd=tmp_path)
        assert done.returncode == 5, done.stderr
        assert f"node1: port {port} on {node1.address} is not free" in done.stderr
        assert "Traceback" not in done.stderr
        assert not recorded_runs()
    finally:
        node1.run(f"kill {pid}")
