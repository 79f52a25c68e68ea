"""Link faults between the workstation and a host never fail a healthy run (real cluster).

Each test runs a torch-free program that prints numbered lines for a while on two hosts, breaks
the workstation's link to node2 while it runs (the follower killed, the SSH session killed, or
the route cut with training traffic between the hosts unaffected), and asserts that `up` exits 0
with every line shown exactly once, in order, and says it reconnected. The link timers are the
tests' short ones (conftest.fast_timers): a stalled link is noticed after 2 s, not 20.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from e2e import distctl, start_distctl, wait_for, write_inventory
from support import procfs

pytestmark = pytest.mark.usefixtures("fast_timers")

# Prints `line N of rank R` every 50 ms for SECONDS, then a last line.
TICKER = """
import os, sys, time
rank, end = os.environ["RANK"], time.time() + float(os.environ["SECONDS_TO_RUN"])
n = 0
while time.time() < end:
    n += 1
    print("line %d of rank %s" % (n, rank), flush=True)
    time.sleep(0.05)
print("last line of rank %s after %d" % (rank, n), flush=True)
"""


def start_ticker(cluster, tmp_path, seconds: float) -> subprocess.Popen:
    code = tmp_path / "project"
    code.mkdir()
    (code / "ticker.py").write_text(TICKER)
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], code="project",
                          command="python ticker.py", wait_for_rank0=False, env={"SECONDS_TO_RUN": str(seconds)})
    return start_distctl("up", str(inv), cwd=tmp_path)


def assert_every_line_once(stdout: str) -> None:
    for host, rank in (("node1", 0), ("node2", 1)):
        numbers = [int(n) for n in re.findall(rf"^\[{host} r{rank}\] line (\d+) of rank {rank}$", stdout, re.M)]
        last = re.search(rf"^\[{host} r{rank}\] last line of rank {rank} after (\d+)$", stdout, re.M)
        assert last, f"rank {rank}'s last line is missing"
        assert numbers == list(range(1, int(last[1]) + 1)), f"rank {rank}: lines lost, repeated or reordered"


def host_pids(cluster, host: str, needle: bytes) -> list[int]:
    """Processes inside `host` whose command line holds `needle` (distctl's own, over SSH)."""
    return [pid for pid in cluster.host(host).processes() if needle in procfs.cmdline(pid)]


def wait_until_streaming(proc: subprocess.Popen, cluster) -> None:
    """distctl runs both ranks (node2's follower is up once its ranks are)."""
    wait_for(lambda: host_pids(cluster, "node2", b"ticker.py") and host_pids(cluster, "node2", b"class RankLog"),
             60, "node2's rank and its follower")


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"distctl did not end: {err[-2000:]}") from None
    assert proc.returncode == 0, err
    return out, err


def test_a_killed_follower_is_reopened_from_the_line_it_reached(cluster, tmp_path):
    proc = start_ticker(cluster, tmp_path, seconds=12)
    wait_until_streaming(proc, cluster)
    time.sleep(1)  # some lines through first
    for pid in host_pids(cluster, "node2", b"class RankLog"):
        os.kill(pid, signal.SIGKILL)
    out, err = finish(proc)
    assert "distctl: node2: connection lost, reconnecting" in err
    assert "distctl: node2: reconnected" in err
    assert_every_line_once(out)


def test_a_killed_ssh_session_is_reconnected(cluster, tmp_path):
    proc = start_ticker(cluster, tmp_path, seconds=12)
    wait_until_streaming(proc, cluster)
    time.sleep(1)
    sessions = host_pids(cluster, "node2", b"@notty")  # sshd's per-connection process
    assert sessions
    for pid in sessions:
        os.kill(pid, signal.SIGKILL)
    out, err = finish(proc)
    assert "distctl: node2: reconnected" in err
    assert_every_line_once(out)


def test_a_partition_between_workstation_and_host_is_healed(isolated, fast_timers, tmp_path):
    """The workstation loses its route to node2 for three stall limits; node1 and node2 still
    talk (the namespaces share a bridge). The stalled link is noticed by the missing heartbeats."""
    node2 = isolated.host("node2")
    partition_s = 3 * fast_timers["stall"]
    proc = start_ticker(isolated, tmp_path, seconds=partition_s + 12)
    wait_until_streaming(proc, isolated)
    time.sleep(1)
    route = ["ip", "route", "add", "unreachable", f"{node2.address}/32"]
    subprocess.run(route, check=True)
    try:
        time.sleep(partition_s)  # the fault itself, not a wait for a condition
    finally:
        subprocess.run(["ip", "route", "del", "unreachable", f"{node2.address}/32"], check=True)
    out, err = finish(proc)
    assert "distctl: node2: connection lost, reconnecting" in err
    assert "distctl: node2: reconnected" in err
    assert_every_line_once(out)


def test_a_host_unreachable_past_the_bound_is_reported_as_unknown_not_failed(isolated, tmp_path):
    node2 = isolated.host("node2")
    code = tmp_path / "project"
    code.mkdir()
    (code / "ticker.py").write_text(TICKER)
    inv = write_inventory(tmp_path / "inv.yaml", isolated, ["node1", "node2"], code="project",
                          command="python ticker.py", wait_for_rank0=False, env={"SECONDS_TO_RUN": "15"})
    text = inv.read_text().replace("ssh:\n", "ssh:\n  reconnect_timeout: 5\n", 1)
    inv.write_text(text)
    proc = start_distctl("up", str(inv), cwd=tmp_path)
    wait_until_streaming(proc, isolated)
    subprocess.run(["ip", "route", "add", "unreachable", f"{node2.address}/32"], check=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        subprocess.run(["ip", "route", "del", "unreachable", f"{node2.address}/32"], check=True)
    assert proc.returncode == 3, err
    run_id = re.search(r"run (\S+) started", err)[1]
    assert ("node2 unreachable (rank(s) 1): run state unknown") in err
    assert f"Re-attach: distctl logs -f {run_id}" in err
    assert "failed" not in err.splitlines()[-1]
    # the run itself went on: node2's rank finished its work
    wait_for(lambda: distctl("status", run_id, cwd=tmp_path).stdout.count("exited 0") == 2, 60,
             "both ranks to have exited 0")
