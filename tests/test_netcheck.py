"""`distctl check --net`: the pure verdict, and on the cluster a host whose link is throttled
with `tc qdisc ... tbf` on its veth is named and the check exits 5."""

from __future__ import annotations

import json
import subprocess

import pytest

from orchestrator.launch.netcheck import Link, parse_measure, slow_links

from e2e import distctl, write_inventory


def test_a_host_below_half_the_others_median_or_the_floor_is_named():
    links = [Link("node2", 1.2, 0.1), Link("node3", 0.01, 0.1), Link("node4", 1.0, 0.1)]
    assert slow_links(links, "node1", 0.1) == ["node3: 0.01 GB/s to node1, median 1.1 GB/s, floor 0.1 GB/s"]
    assert slow_links([Link("node2", 0.05, 1.0)], "node1", 0.1) == ["node2: 0.05 GB/s to node1, floor 0.1 GB/s"]
    assert slow_links([Link("node2", 0.5, 1.0)], "node1", 0.1) == []  # one worker: only the floor applies
    assert slow_links([Link("node2", error="Connection refused")], "node1", 0.1) == [
        "node2: not measured to node1: Connection refused"]


def test_parse_measure_reads_the_hosts_line():
    assert parse_measure("n", "net rtt_ms=0.120 gbps=1.5000 bytes=3 seconds=1.0\n") == Link("n", 1.5, 0.12)
    assert parse_measure("n", "net error No route to host\n") == Link("n", error="No route to host")


@pytest.mark.cluster
def test_check_net_names_the_throttled_host(isolated, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", isolated, ["node1", "node2", "node3", "node4"])
    # tbf shapes what leaves an interface: node3's own end of its veth pair throttles what node3
    # sends (the root-side end, isolated.veth("node3"), would throttle what it receives).
    h = isolated.host("node3")
    tc = ["ip", "netns", "exec", h.netns, "tc", "qdisc"]
    subprocess.run([*tc, "add", "dev", h.iface, "root", "tbf", "rate", "5mbit", "burst", "32kbit",
                    "latency", "400ms"], check=True)
    try:
        done = distctl("check", str(inv), "--net", cwd=tmp_path)
    finally:
        subprocess.run([*tc, "del", "dev", h.iface, "root"], check=True)
    assert done.returncode == 5, done.stdout + done.stderr
    assert "slow network: node3: " in done.stderr and " GB/s to node1, median " in done.stderr
    assert "node2" not in done.stderr.split("slow network:")[1] and "node4" not in done.stderr.split("slow network:")[1]
    assert sorted(line.split(":")[0] for line in done.stdout.splitlines() if "round trip to node1" in line) == [
        "node2", "node3", "node4"]
    healthy = distctl("check", str(inv), "--net", "--json", cwd=tmp_path)  # the link restored
    assert healthy.returncode == 0, healthy.stderr
    as_json = json.loads(healthy.stdout)
    assert [(x["host"], x["gbps"] > 0.1, x["error"]) for x in as_json["net"]] == [
        ("node2", True, None), ("node3", True, None), ("node4", True, None)]
