"""Bad moments on a host, on the real cluster: its disk fills while rank 0 writes a checkpoint,
it reboots mid-run. Each ends with a message naming the host and the cause, and no run state
lost or corrupted."""

from __future__ import annotations

import json
import re

import pytest

from e2e import distctl, kill_tree, last_run_id, run_pids, start_distctl, wait_for, write_inventory
from test_lifecycle import epochs_done, rank_log

pytestmark = pytest.mark.cluster


def test_a_full_disk_while_rank_0_checkpoints_names_host_and_cause_and_keeps_the_last_checkpoint(
        isolated, small_mnist, tmp_path):
    # A stopped run has checkpoints; node1's checkpoint folder then gets a disk with room for
    # them and 300 KB more (a checkpoint is ~830 KB), and the run is resumed into it.
    node1 = isolated.host("node1")
    inv = write_inventory(tmp_path / "inv.yaml", isolated, ["node1", "node2"], data=str(small_mnist), epochs=50)
    assert distctl("up", str(inv), "--detach", cwd=tmp_path).returncode == 0
    run_id = last_run_id(tmp_path)
    wait_for(lambda: epochs_done(isolated, "node1", run_id, 0) >= 1, 120, "the first epoch")
    assert distctl("stop", "--grace", "30", cwd=tmp_path).returncode == 0
    ckpt = f"{node1.workdir}/runs/{run_id}/ckpt"
    before = node1.run(f"ls -i {ckpt}", check=True).stdout
    used_kb = int(node1.run(["du", "-sk", ckpt], check=True).stdout.split()[0])
    node1.run(f"mv {ckpt} {ckpt}.was && mkdir {ckpt} && mount -t tmpfs -o size={used_kb + 300}k,mode=0700 tmpfs {ckpt}"
              f" && cp -a {ckpt}.was/. {ckpt}/ && rm -rf {ckpt}.was", check=True)
    try:
        assert node1.run(f"ls -i {ckpt}", check=True).stdout.split()[1::2] == before.split()[1::2]
        resumed = distctl("up", str(inv), "--resume", cwd=tmp_path)
        assert resumed.returncode == 1, resumed.stderr
        assert "rank 0 on node1 failed first: exited with code 1" in resumed.stderr
        assert re.search(r"error rank=0 message=\"cannot write a checkpoint in \S+/ckpt: \[Errno 28\] "
                         r"No space left on device\"", resumed.stderr), resumed.stderr
        assert "Traceback" not in resumed.stderr + resumed.stdout
        # nothing half-written, latest.pt still the stop's checkpoint, and it loads
        assert node1.run(f"ls {ckpt}", check=True).stdout.split() == before.split()[1::2]
        latest = node1.run([isolated.python, "-c", "import sys, torch; s = torch.load(sys.argv[1], weights_only=True); "
                            "print(s['epoch'], s['step'])", f"{ckpt}/latest.pt"], check=True).stdout.split()
        stopped = re.search(r"^stopped rank=0 epoch=\d+ step=\d+ checkpoint=\S+ckpt-(\d+)-(\d+)\.pt",
                            rank_log(isolated, "node1", run_id, 0), re.M)
        assert stopped and [int(x) for x in latest] == [int(stopped[1]), int(stopped[2])]
    finally:
        node1.run(["umount", ckpt])


def test_check_shows_each_hosts_clock_offset_and_names_a_host_5_s_ahead(isolated, tmp_path):
    # The hosts share this machine's kernel clock, so node2's python is told its clock is 5 s ahead
    # (time.time shifted at start-up): that clock is all the discovery probe reads.
    ahead = tmp_path / "ahead"
    ahead.mkdir()
    (ahead / "sitecustomize.py").write_text("import time\n_now = time.time\ntime.time = lambda: _now() + 5.0\n")
    python = tmp_path / "python-ahead"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={ahead} exec {isolated.python} "$@"\n')
    python.chmod(0o755)
    inv = write_inventory(tmp_path / "inv.yaml", isolated, ["node1", "node2"],
                          host_extra={"node2": {"python": str(python)}})
    done = distctl("check", str(inv), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    clocks = {host: (float(offset), float(error)) for host, offset, error in
              re.findall(r"^(node\d): hostname .*, clock ([+-]\d+\.\d+) s \(±(\d+\.\d+)\)", done.stdout, re.M)}
    assert sorted(clocks) == ["node1", "node2"], done.stdout
    assert abs(clocks["node1"][0]) <= clocks["node1"][1] + 0.01
    assert abs(clocks["node2"][0] - 5.0) <= clocks["node2"][1] + 0.01
    warnings = [line for line in done.stderr.splitlines() if "clock" in line]
    assert len(warnings) == 1 and re.match(r"distctl: node2: its clock is \d+\.\d s ahead of this workstation's "
                                           r"\(±\d+\.\d\d s\); .* sync the clocks", warnings[0]), done.stderr
    hosts = json.loads(distctl("check", "--json", str(inv), cwd=tmp_path).stdout)["hosts"]
    assert abs(hosts[1]["clock_offset_s"] - 5.0) <= hosts[1]["clock_error_s"] + 0.01


def test_a_host_that_reboots_mid_run_is_named_with_its_ranks_gone_and_the_run_stopped(isolated, tmp_path):
    # A reboot, as the hosts can have one: node2's sshd goes down, every process in it is killed
    # (the rank with its wrapper: no exit code is written), then sshd comes back. Torch-free ranks.
    node2 = isolated.host("node2")
    inv = write_inventory(tmp_path / "inv.yaml", isolated, ["node1", "node2"], wait_for_rank0=False,
                          command=["sh", "-c", 'echo "up rank $RANK"; exec sleep 300'])
    up = start_distctl("up", str(inv), cwd=tmp_path)
    try:
        run_id = wait_for(lambda: last_run_id(tmp_path), 60, "the run to start")
        wait_for(lambda: all(run_pids(isolated, run_id)[h] for h in ("node1", "node2")), 60, "both ranks to run")
        wait_for(lambda: "up rank 1" in rank_log(isolated, "node2", run_id, 1), 30, "rank 1 to say it is up")
        # The launch step on node2 is over once the host's agent (started last) runs: the reboot
        # is mid-run, not mid-launch.
        state = f"{node2.workdir}/runs/{run_id}/agent.state"
        wait_for(lambda: node2.run(f"cat {state} 2>/dev/null").stdout, 30, "node2's agent to run")
        try:
            isolated.crash(node2)
            assert not node2.processes()
        finally:
            isolated.start_sshd(node2)
        out, err = up.communicate(timeout=120)
    finally:
        kill_tree(up)
    assert up.returncode == 1, err
    assert "node2: rank 1's processes are gone without an exit code (host rebooted or processes killed); " \
           "stopping the run on every host" in err
    assert "error: node2: rank 1 failed first: its processes are gone without an exit code (host rebooted or " \
           "processes killed); last lines of its log:\n    up rank 1" in err
    assert "Traceback" not in err
    assert not any(run_pids(isolated, run_id).values())  # rank 0 on node1 was stopped
    status = distctl("status", cwd=tmp_path)
    assert re.search(r"\[node2 r1\] killed\s+\(gone without an exit code: host rebooted or processes killed\)",
                     status.stdout), status.stdout
