"""The run lifecycle on the real cluster: detach, logs, status, stop, failure teardown,
the hang watchdog and resume. The bundled trainer here is the torch-free stand-in (its lines and
exit codes are the trainer's: test_contract.py); resume's numerics are test_trainer.py's."""

from __future__ import annotations

import json
import os
import re
import signal
import stat

import pytest

from e2e import digests, distctl, kill_tree, last_run_id, run_pids, start_distctl, wait_for, write_inventory
from support import procfs

pytestmark = pytest.mark.cluster
# The stand-in's epochs last 0.5 s; a test that must act while a short run still trains slows them.
SLOW_EPOCHS = {"DISTCTL_STANDIN_EPOCH_S": "1.5"}


def rank_log(cluster, host: str, run_id: str, rank: int) -> str:
    h = cluster.host(host)
    return h.run(f"cat {h.workdir}/runs/{run_id}/rank{rank}.log 2>/dev/null").stdout


def epochs_done(cluster, host: str, run_id: str, rank: int) -> int:
    return len(re.findall(r"^epoch=\d+ ", rank_log(cluster, host, run_id, rank), re.M))


def trainer_pid(cluster, host: str, run_id: str, rank: int) -> int | None:
    """The trainer process (not its sh wrapper) of one rank."""
    for pid in cluster.host(host).pids_with_env(f"DISTCTL_RUN_ID={run_id}"):
        if b"trainer" in procfs.cmdline(pid).split(b"\0") and f"RANK={rank}" in procfs.environ(pid):
            return pid
    return None


def all_gone(cluster, run_id: str) -> bool:
    return not any(run_pids(cluster, run_id).values())


def start_training(cluster, standin_mnist, tmp_path, epochs: int, **job):
    """`distctl up` attached, in the background, once rank 1 on node2 has finished an epoch."""
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], data=str(standin_mnist), epochs=epochs,
                          **job)
    up = start_distctl("up", str(inv), cwd=tmp_path)
    try:
        run_id = wait_for(lambda: last_run_id(tmp_path), 60,
                          "the run to start")
        wait_for(lambda: epochs_done(cluster, "node2", run_id, 1) >= 1, 120, "rank 1 to train")
    except BaseException:
        kill_tree(up)
        raise
    return up, run_id


def test_a_rank_killed_on_host_2_tears_down_every_host(cluster, standin_mnist, tmp_path):
    up, run_id = start_training(cluster, standin_mnist, tmp_path, epochs=200)
    try:
        os.kill(trainer_pid(cluster, "node2", run_id, 1), signal.SIGKILL)
        wait_for(lambda: all_gone(cluster, run_id), 5, "every rank on every host to be gone")
        out, err = up.communicate(timeout=60)
        assert up.returncode == 1, err
        assert "rank 1 on node2 failed first: exited with code 137 (signal 9)" in err
        status = distctl("status", cwd=tmp_path)
        assert status.returncode == 1, status.stderr  # a failed run: status says so in its exit code too
        assert "first failure: rank 1 on node2 exited with code 137; last lines of its log:" in status.stdout
    finally:
        kill_tree(up)


def test_sigkill_of_distctl_never_stops_training_and_logs_has_every_line(cluster, standin_mnist, tmp_path):
    up, run_id = start_training(cluster, standin_mnist, tmp_path, epochs=8, env=SLOW_EPOCHS)
    assert up.poll() is None, "the run ended before distctl could be killed mid-run"
    kill_tree(up)  # SIGKILL: no chance to clean up anything
    wait_for(lambda: all_gone(cluster, run_id), 180, "the run to finish on its own")
    status = distctl("status", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    found = json.loads(status.stdout)
    assert [(r["host"], r["rank"], r["state"], r["exit_code"], r["epoch"]) for r in found["ranks"]] == [
        ("node1", 0, "exited", 0, 8), ("node2", 1, "exited", 0, 8)]
    assert {k: found[k] for k in ("format", "run_id", "state", "unreachable", "stopped_epoch", "first_failure")} == {
        "format": 1, "run_id": run_id, "state": "finished", "unreachable": [], "stopped_epoch": None,
        "first_failure": None}
    assert found["started"] and 0 < found["elapsed_s"] < 600
    logs = distctl("logs", cwd=tmp_path)
    assert logs.returncode == 0, logs.stderr
    for host, rank in (("node1", 0), ("node2", 1)):
        seen = re.findall(rf"^\[{host} r{rank}\] epoch=(\d+) ", logs.stdout, re.M)
        assert seen == [str(e) for e in range(1, 9)], logs.stdout
    assert len(digests(logs.stdout)) == 2
    tail = distctl("logs", "--host", "node2", "--tail", "1", cwd=tmp_path)
    assert tail.stdout.startswith("[node2 r1] done rank=1") and tail.stdout.count("\n") == 1


def test_stop_leaves_nothing_of_the_run_and_spares_another_run(cluster, standin_mnist, tmp_path):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir(), b_dir.mkdir()
    inv_a = write_inventory(a_dir / "inv.yaml", cluster, ["node3", "node4"], data=str(standin_mnist), epochs=500)
    inv_b = write_inventory(b_dir / "inv.yaml", cluster, ["node3", "node4"], data=str(standin_mnist), epochs=500)
    try:
        assert distctl("up", str(inv_a), "--detach", cwd=a_dir).returncode == 0
        assert distctl("up", str(inv_b), "--detach", cwd=b_dir).returncode == 0
        run_a, run_b = last_run_id(a_dir), last_run_id(b_dir)
        wait_for(lambda: all(run_pids(cluster, run_b)[h] for h in ("node3", "node4")), 30, "run b to run")
        # the run directory is private, the env file too
        node3 = cluster.host("node3")
        mode = os.stat(f"/proc/{node3.anchor_pid}/root{node3.workdir}/runs/{run_a}").st_mode \
            if node3.anchor_pid else os.stat(f"{node3.workdir}/runs/{run_a}").st_mode
        assert stat.S_IMODE(mode) == 0o700
        stop = distctl("stop", "--grace", "10", cwd=a_dir)
        assert stop.returncode == 0, stop.stderr
        assert "no process of it is left on any host" in stop.stderr
        assert all_gone(cluster, run_a)  # checked inside each host
        assert all(run_pids(cluster, run_b)[h] for h in ("node3", "node4")), "run b must survive"
        again = distctl("stop", cwd=a_dir)  # idempotent
        assert again.returncode == 0, again.stderr
    finally:
        distctl("stop", "--grace", "0", cwd=b_dir)
        distctl("stop", "--grace", "0", cwd=a_dir)
    assert all_gone(cluster, run_b)


def test_sshd_down_on_host_2_training_goes_on_and_status_says_unreachable(cluster, standin_mnist, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], data=str(standin_mnist), epochs=500)
    try:
        assert distctl("up", str(inv), "--detach", cwd=tmp_path).returncode == 0
        run_id = last_run_id(tmp_path)
        cluster.stop_sshd("node2")
        before = epochs_done(cluster, "node2", run_id, 1)
        wait_for(lambda: epochs_done(cluster, "node2", run_id, 1) > before, 60, "training to go on")
        wait_for(lambda: epochs_done(cluster, "node1", run_id, 0) > 0, 60, "rank 0 to log an epoch")
        status = distctl("status", cwd=tmp_path)
        assert status.returncode == 3, status.stderr  # the table is still shown for the others
        header, node1, node2 = status.stdout.splitlines()
        assert header.startswith(f"run {run_id}: started ")
        assert re.fullmatch(r"  \[node1 r0\] running, epoch \d+(, step \d+/\d+.*)?", node1), status.stdout
        assert node2.startswith("  [node2 r1] unreachable  ("), status.stdout
        assert status.stderr.splitlines()[-1] == (f"distctl: error: status of run {run_id} is incomplete: "
                                                  "node2 could not be reached")
        stop = distctl("stop", "--grace", "0", cwd=tmp_path)
        assert stop.returncode == 8 and "node2: unreachable" in stop.stderr
    finally:
        cluster.start_sshd("node2")
        distctl("stop", "--grace", "0", cwd=tmp_path)
    assert all_gone(cluster, run_id)


def test_ranks_that_never_join_are_named_and_the_run_is_stopped(cluster, standin_mnist, tmp_path):
    # node2's "python" stalls before starting the trainer, as a wedged host would (only the trainer:
    # distctl's own host-side programs, e.g. the one that detaches ranks, run with it too)
    stall = tmp_path / "stalling-python"
    stall.write_text(f'#!/bin/sh\ncase "$1 $2" in "-m trainer") sleep 600;; esac\nexec {cluster.python} "$@"\n')
    stall.chmod(0o755)
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], data=str(standin_mnist),
                          host_extra={"node2": {"python": str(stall)}}, join_timeout=15)
    done = distctl("up", str(inv), cwd=tmp_path)
    assert done.returncode == 6, done.stderr
    assert "ranks never joined: node2 r1" in done.stderr
    assert all_gone(cluster, last_run_id(tmp_path))


def test_resume_after_stop_finishes_like_an_uninterrupted_run(cluster, standin_mnist, tmp_path):
    whole_dir, cut_dir = tmp_path / "whole", tmp_path / "cut"
    whole_dir.mkdir(), cut_dir.mkdir()
    args = dict(data=str(standin_mnist), epochs=12)
    whole = distctl("up", str(write_inventory(whole_dir / "inv.yaml", cluster, ["node1", "node2"], **args)),
                    cwd=whole_dir)
    assert whole.returncode == 0, whole.stderr
    inv = write_inventory(cut_dir / "inv.yaml", cluster, ["node1", "node2"], env=SLOW_EPOCHS, **args)
    assert distctl("up", str(inv), "--detach", cwd=cut_dir).returncode == 0
    run_id = last_run_id(cut_dir)
    wait_for(lambda: epochs_done(cluster, "node1", run_id, 0) >= 1, 120, "the first epoch")
    assert distctl("stop", "--grace", "30", cwd=cut_dir).returncode == 0
    assert "stopped rank=0" in rank_log(cluster, "node1", run_id, 0)
    # every rank checkpointed and stopped: status says where the run stopped, instead of blaming a rank for its exit 143
    stopped_at = re.findall(r"^stopped rank=0 epoch=(\d+) ", rank_log(cluster, "node1", run_id, 0), re.M)[-1]
    status = distctl("status", cwd=cut_dir)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[1:] == [
        f"  [node1 r0] exited 143, epoch {epochs_done(cluster, 'node1', run_id, 0)}",
        f"  [node2 r1] exited 143, epoch {epochs_done(cluster, 'node2', run_id, 1)}",
        f"stopped (checkpointed at epoch {stopped_at})",
        f"continue it with: distctl up {inv.resolve()} --resume"]
    stopped = re.search(r"^stopped rank=0 .*checkpoint=(\S+)", rank_log(cluster, "node1", run_id, 0), re.M)
    assert stopped and cluster.host("node1").run(["test", "-f", stopped[1]]).returncode == 0
    resumed = distctl("up", str(inv), "--resume", cwd=cut_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert last_run_id(cut_dir) == run_id
    acc = lambda out: float(re.findall(r"\] done rank=0 .*test_accuracy=([0-9.]+)", out)[-1])  # noqa: E731
    assert acc(resumed.stdout) == pytest.approx(acc(whole.stdout), abs=0.02)
    assert digests(resumed.stdout)[0] == digests(resumed.stdout)[1]


def test_ctrl_c_while_streaming_detaches_and_the_run_goes_on(cluster, standin_mnist, tmp_path):
    up, run_id = start_training(cluster, standin_mnist, tmp_path, epochs=500)
    try:
        up.send_signal(signal.SIGINT)
        out, err = up.communicate(timeout=30)
        assert up.returncode == 130, err
        assert (f"detached; run {run_id} goes on. Follow it: distctl logs -f {run_id}   "
                f"Stop it: distctl stop {run_id}") in err
        before = epochs_done(cluster, "node2", run_id, 1)
        wait_for(lambda: epochs_done(cluster, "node2", run_id, 1) > before, 60, "training to go on")
        assert all(run_pids(cluster, run_id)[h] for h in ("node1", "node2"))
    finally:
        kill_tree(up)
        distctl("stop", "--grace", "0", cwd=tmp_path)
    assert all_gone(cluster, run_id)
