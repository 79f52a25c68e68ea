"""`distctl check --net`: the pure verdict, and on the cluster a host whose link is throttled
with `tc qdisc ... tbf` on its veth is named and the check exits 5. `--collective`: the bus
bandwidth arithmetic, the report and the host a failure names, then one run on 2 hosts with torch."""

from __future__ import annotations

import json
import subprocess

import pytest

from orchestrator.launch.collcheck import Outcome, as_json, bandwidth, failure, parse_outcome, report_lines
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


# ------------------------------------------------------------------ --collective


def test_bus_bandwidth_is_nccl_tests_algbw_times_2_n_minus_1_over_n():
    assert bandwidth(2 * 10**9, 1.0, 2) == (2.0, 2.0)
    assert bandwidth(10**9, 0.5, 4) == (2.0, 3.0)
    assert bandwidth(10**9, 1.0, 16) == (1.0, 1.875)


def test_the_report_gives_the_slowest_hosts_bandwidth_then_each_hosts_time():
    out = [parse_outcome("node1", 0, "coll ok backend=gloo bytes=67108864 iters=5 seconds=0.067108864\n"),
           parse_outcome("node2", 1, "noise\ncoll ok backend=gloo bytes=67108864 iters=5 seconds=0.134217728\n")]
    assert report_lines(out) == [
        "all_reduce of 64 MiB over 2 hosts (gloo, 5 timed after 1 warm-up): algbw 0.5 GB/s, busbw 0.5 GB/s",
        "node1 (rank 0): 0.0671 s per all_reduce", "node2 (rank 1): 0.134 s per all_reduce"]
    assert failure(out, "10.0.0.1", 29500, 120) is None
    assert as_json(out) == {
        "algbw_gbps": pytest.approx(0.5), "busbw_gbps": pytest.approx(0.5), "backend": "gloo", "bytes": 67108864,
        "hosts": [
        {"host": "node1", "rank": 0, "seconds": 0.067108864, "error": None},
        {"host": "node2", "rank": 1, "seconds": 0.134217728, "error": None}]}


def test_a_rank_the_others_waited_for_in_vain_is_named():
    out = [parse_outcome("node1", 0, "coll missing 2\n"), parse_outcome("node2", 1, "coll missing 2\n"),
           parse_outcome("node3", 2, "coll error timeout store\n")]
    assert out[0] == Outcome("node1", 0, error="waited for rank(s) 2, which never arrived", missing=(2,))
    assert failure(out, "10.0.0.1", 29500, 120) == (
        "collective all_reduce failed: node3 (rank 2): never arrived at rank 0's store (10.0.0.1:29500) within "
        "120 s (timeout store); node1, node2: waited for rank(s) 2, which never arrived")


def test_a_rank_that_failed_on_its_own_is_named_not_its_peers():
    out = [parse_outcome("node1", 0, "coll error peer 1 init\n"),
           parse_outcome("node2", 1, "coll error init Unable to find address for: nosuch\n"),
           parse_outcome("node3", 2, "coll error warmup Connection closed by peer [10.0.0.2]:4242\n")]
    assert failure(out, "a", 1, 120) == ("collective all_reduce failed: node2 (rank 1): init Unable to find address "
                                         "for: nosuch; node1: peer 1 init; node3: warmup Connection closed by peer "
                                         "[10.0.0.2]:4242")


def test_when_time_ran_out_everywhere_the_rank_furthest_behind_is_named():
    out = [parse_outcome("node1", 0, "coll error timeout timed\n"), parse_outcome("node2", 1, "coll error timeout "
                                                                                  "warmup\n"),
           parse_outcome("node3", 2, "")]
    assert out[2].error == "no result (no output)"
    assert failure(out[:2], "a", 1, 120) == ("collective all_reduce failed: node2 (rank 1): still in warmup after "
                                             "120 s; node1: timeout timed")
    assert failure(out, "a", 1, 120).startswith("collective all_reduce failed: node3 (rank 2): no result (no output);")


@pytest.mark.cluster
def test_check_collective_times_an_all_reduce_and_names_a_host_that_fails(cluster, real_trainer, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"])
    done = distctl("check", str(inv), "--net", "--collective", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    head = next(line for line in done.stdout.splitlines() if line.startswith("collective: all_reduce"))
    assert head.startswith("collective: all_reduce of 64 MiB over 2 hosts (gloo, 5 timed after 1 warm-up): algbw ")
    algbw, busbw = (float(head.split(f"{k} ")[1].split(" GB/s")[0]) for k in ("algbw", "busbw"))
    assert algbw > 0 and busbw == algbw  # 2(n-1)/n = 1 for two hosts
    assert [line.split(" (rank")[0] for line in done.stdout.splitlines() if line.endswith(" s per all_reduce")] == [
        "collective: node1", "collective: node2"]
    # node2's ranks would look for an interface it does not have: node2 is named, node1 is not
    # left waiting, and no rank is left on either host.
    bad = write_inventory(tmp_path / "bad.yaml", cluster, ["node1", "node2"],
                          host_extra={"node2": {"env": {"GLOO_SOCKET_IFNAME": "nosuch0"}}})
    failed = distctl("check", str(bad), "--collective", cwd=tmp_path)
    assert failed.returncode == 5, failed.stdout + failed.stderr
    error = failed.stderr.strip().splitlines()[-1]
    assert error == ("distctl: error: collective all_reduce failed: node2 (rank 1): init Unable to find address "
                     "for: nosuch0; node1: peer 1 init")
    for name in ("node1", "node2"):
        left = cluster.host(name).run(["pgrep", "-f", "usage: collective.py"])
        assert left.stdout == "", (name, left.stdout)
