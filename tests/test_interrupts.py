"""Interruptions and partial availability, as a new user meets them (real cluster, torch-free)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from e2e import distctl, run_pids, start_distctl, wait_for, write_inventory
from support import procfs

pytestmark = pytest.mark.cluster

# Rank 0 opens MASTER_PORT after DELAY seconds (like a program loading data first), every rank
# then holds until stopped.
LISTENER = """
import os, socket, time
time.sleep(float(os.environ.get("DELAY", "0")))
if os.environ["RANK"] == "0":
    server = socket.create_server((os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])))
print("up rank", os.environ["RANK"], flush=True)
os.makedirs("out", exist_ok=True)
open("out/r%s.txt" % os.environ["RANK"], "w").write("result\\n")
time.sleep(float(os.environ.get("HOLD", "300")))
"""


def project(cluster, tmp_path, **job):
    code = tmp_path / "project"
    code.mkdir(exist_ok=True)
    (code / "prog.py").write_text(LISTENER)
    return write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], code="project",
                           command="python prog.py", **job)


SETUP_S = 15  # Ctrl-C during job.setup returns once the setup command has ended (measured: 60 s took 66)


def setup_sleeping(cluster, host: str) -> bool:
    return any(procfs.cmdline(pid) == b"sleep\x00%d\x00" % SETUP_S for pid in cluster.host(host).processes())


def interrupt(proc: subprocess.Popen) -> tuple[str, str]:
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    return out, err


def test_ctrl_c_while_waiting_for_rank_0_leaves_nothing_running(cluster, tmp_path):
    inv = project(cluster, tmp_path, env={"DELAY": "60"})
    proc = start_distctl("up", str(inv), cwd=tmp_path)
    wait_for(lambda: cluster.host("node1").pids_with_env("RANK=0"), 60, "rank 0 to start")
    run_id = next(iter({e.split("=", 1)[1] for pid in cluster.host("node1").pids_with_env("RANK=0")
                        for e in procfs.environ(pid)
                        if e.startswith("DISTCTL_RUN_ID=")}))
    _, err = interrupt(proc)
    assert f"interrupted while starting run {run_id}: stopped what had started; nothing runs" in err
    assert not any(run_pids(cluster, run_id).values())


def test_ctrl_c_during_setup_launches_nothing(cluster, tmp_path):
    inv = project(cluster, tmp_path, setup=f"echo preparing; sleep {SETUP_S}")
    before = {h: cluster.host(h).run(f"ls {cluster.host(h).workdir}/runs/*/rank*.pid 2>/dev/null | wc -l").stdout
              for h in ("node1", "node2")}
    proc = start_distctl("up", str(inv), cwd=tmp_path)
    wait_for(lambda: setup_sleeping(cluster, "node2"), 60, "setup to run on node2")
    interrupt(proc)
    for h in ("node1", "node2"):
        assert cluster.host(h).run(f"ls {cluster.host(h).workdir}/runs/*/rank*.pid 2>/dev/null | wc -l").stdout \
            == before[h]


def test_a_second_up_names_the_run_still_running_and_how_to_stop_it(cluster, tmp_path):
    inv = project(cluster, tmp_path)
    started = distctl("up", str(inv), "--detach", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    run_id = re.search(r"run (\S+) started", started.stderr)[1]
    try:
        follower = start_distctl("logs", "-f", run_id, cwd=tmp_path)
        assert follower.stdout is not None and " up rank " in follower.stdout.readline()  # it follows
        _, err = interrupt(follower)  # Ctrl-C on `logs -f`: 130, and the run goes on
        assert f"stopped following; run {run_id} goes on" in err
        again = distctl("up", str(inv), cwd=tmp_path)
        assert again.returncode == 5, again.stderr
        assert (f"run {run_id} of {inv} may still be running (its port") in again.stderr
        assert f"See: distctl status {run_id}   Stop it: distctl stop {run_id}" in again.stderr
    finally:
        assert distctl("stop", run_id, "--grace", "1", cwd=tmp_path).returncode == 0
    # a stopped run can be resumed: the dry run shows that run, not a fresh id
    dry = distctl("up", str(inv), "--resume", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0 and dry.stdout.startswith(f"run {run_id}: 2 rank(s)"), dry.stderr


def test_logs_and_pull_with_a_host_cut_off_show_and_fetch_what_they_can(isolated, tmp_path):
    inv = project(isolated, tmp_path, outputs=["out/*.txt"], wait_for_rank0=False)
    started = distctl("up", str(inv), "--detach", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    run_id = re.search(r"run (\S+) started", started.stderr)[1]
    node2 = isolated.host("node2")
    seen: list = []
    try:
        wait_for(lambda: seen.append(distctl("logs", run_id, cwd=tmp_path)) or "up rank 1" in seen[-1].stdout, 20,
                 "both ranks up", every=1)
    except AssertionError:
        raise AssertionError(seen[-1]) from None
    subprocess.run(["ip", "route", "add", "unreachable", f"{node2.address}/32"], check=True)
    try:
        logs = distctl("logs", run_id, cwd=tmp_path)
        assert logs.returncode == 12, logs.stderr
        assert "[node1 r0] up rank 0" in logs.stdout
        assert "node2: unreachable, its ranks' logs are not shown:" in logs.stderr
        pulled = distctl("pull", run_id, cwd=tmp_path)
        assert pulled.returncode == 12, pulled.stderr
        assert (tmp_path / "runs" / run_id / "out" / "r0.txt").read_text() == "result\n"
        assert not (tmp_path / "runs" / run_id / "out" / "r1.txt").exists()
        assert "pull incomplete: node2: unreachable" in pulled.stderr
    finally:
        subprocess.run(["ip", "route", "del", "unreachable", f"{node2.address}/32"], check=True)
        distctl("stop", run_id, "--grace", "1", cwd=tmp_path)


def test_resume_of_a_finished_run_is_refused_and_a_dry_run_shows_the_run_it_would_resume(cluster, tmp_path):
    inv = project(cluster, tmp_path, env={"HOLD": "0"}, wait_for_rank0=False)
    done = distctl("up", str(inv), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_id = re.search(r"run (\S+) started", done.stderr)[1]
    dry = distctl("up", str(inv), "--resume", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 2 and f"run {run_id} of {inv} finished: nothing to resume" in dry.stderr
    resumed = distctl("up", str(inv), "--resume", cwd=tmp_path)
    assert resumed.returncode == 2, resumed.stderr


def test_a_full_disk_during_the_push_names_host_step_and_cause_and_launches_nothing(isolated, tmp_path):
    """node2's workdir is a 1 MB tmpfs: the data push fails there (exit 9, the OS's reason shown);
    once there is room again, the same `up` pushes afresh (no half-written folder is taken for done)."""
    node2 = isolated.host("node2")
    full = f"{node2.workdir}/small-{os.getpid()}"
    data = tmp_path / "data"
    data.mkdir()
    (data / "shard.bin").write_bytes(os.urandom(3 << 20))
    inv = project(isolated, tmp_path, data=str(data), wait_for_rank0=False, env={"HOLD": "0"})
    text = inv.read_text().replace(f"workdir: {node2.workdir}\n", f"workdir: {full}\n")
    inv.write_text(text)
    node2.run(["mkdir", "-p", full], check=True)
    node2.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", full], check=True)
    try:
        done = distctl("up", str(inv), cwd=tmp_path)
        assert done.returncode == 9, done.stderr
        assert "push failed on 1 host(s):" in done.stderr
        assert "node2: push of data failed (exit " in done.stderr and "No space left on device" in done.stderr
        assert "up rank" not in done.stdout
        assert node2.run(f"ls {full}/runs/*/rank*.pid 2>/dev/null | wc -l").stdout.strip() == "0"
    finally:
        node2.run(["umount", full], check=True)
    again = distctl("up", str(inv), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "[node2 r1] up rank 1" in again.stdout
    listing = node2.run(f"ls {full}/data/*/", check=True).stdout
    assert listing.split() == ["shard.bin"]


def test_ctrl_c_while_connecting_leaves_nothing_on_any_host(cluster, tmp_path):
    """node2 never answers (its ProxyCommand only sleeps): Ctrl-C during the connect is 130,
    and node1, already connected, got no run directory and runs nothing."""
    node2 = cluster.host("node2")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host {node2.address}\n  ProxyCommand sleep 120\n")
    inv = project(cluster, tmp_path, wait_for_rank0=False)
    inv.write_text(inv.read_text().replace("config: /dev/null", f"config: {config}"))
    node1 = cluster.host("node1")
    before = node1.run(f"ls {node1.workdir}/runs 2>/dev/null").stdout
    proc = start_distctl("up", str(inv), cwd=tmp_path)
    wait_for(lambda: any(b"sleep\x00120" in Path(f"/proc/{pid}/cmdline").read_bytes()
                         for pid in _children(proc.pid)), 30, "the connect to node2 to hang")
    _, err = interrupt(proc)
    assert "interrupted" in err
    assert node1.run(f"ls {node1.workdir}/runs 2>/dev/null").stdout == before
    assert not node1.pids_with_env("RANK=0")


def _children(pid: int) -> list[int]:
    """Every process below `pid` (the ProxyCommand runs under distctl's ssh -G helpers or paramiko)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = []
        for task in Path(f"/proc/{parent}/task").glob("*"):  # a thread's children are listed under it
            try:
                kids += (task / "children").read_text().split()
            except OSError:
                continue
        found += map(int, kids)
        todo += map(int, kids)
    return found
