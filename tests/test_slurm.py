"""distctl on a real Slurm cluster (tests/slurm_cluster.py), driven as a user drives it: an
inventory with `slurm:`, the `distctl` command, and a look at Slurm and at the nodes afterwards."""

from __future__ import annotations

import os
import re
import signal
import textwrap
from pathlib import Path

import yaml

from e2e import digests, distctl, kill_tree, start_distctl, wait_for
from support import procfs

# A torch-free rank: says where it runs and what it was given, then exits as told.
PROGRAM = textwrap.dedent("""\
    import os, signal, socket, sys, time
    e = os.environ
    def stopped(*_):  # as the trainer: a moment to save its state, then 143
        print("got SIGTERM", flush=True)
        time.sleep(0.5)
        open("saved-rank" + e["RANK"], "w").close()
        sys.exit(143)

    # Ready for SIGTERM before it says anything: a test that saw the line may stop it.
    signal.signal(signal.SIGTERM, stopped)
    print("env", " ".join(f"{k}={e.get(k)}" for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
          "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK", "MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME",
          "TORCHELASTIC_RUN_ID", "DISTCTL_RUN_ID", "SLURM_RESTART_COUNT")), "host=" + socket.gethostname(),
          flush=True)
    mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
    if mode == "stubborn":  # ignores SIGTERM: only a SIGKILL ends it
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "flaky":  # fails on the first attempt only
        mode = "fail" if e["TORCHELASTIC_RESTART_COUNT"] == "0" else "ok"
    if mode == "fail" and e["RANK"] == "1":
        time.sleep(1)
        sys.exit(7)
    while mode in ("fail", "sleep", "stubborn"):
        time.sleep(0.2)
    print("bye", flush=True)
""")


def write_inventory(path: Path, slurm, *, command: str = "python prog.py", **slurm_keys) -> Path:
    code = path.parent / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "prog.py").write_text(PROGRAM)
    inventory = {
        "slurm": {"login": {"address": slurm.login_address, "user": slurm.user,
                            "identity_file": str(slurm.key_path)},
                  "partition": slurm.partition, "nodes": 2, "slots": 1, **slurm_keys},
        "defaults": {"python": slurm.python, "workdir": str(workdir_of(slurm, path))},
        "job": {"name": "s", "code": "code", "command": command},
        "ssh": {"known_hosts": str(slurm.known_hosts), "config": "/dev/null"},
    }
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def workdir_of(slurm, inventory: Path) -> Path:
    """Each test's own workdir on the shared file system (runs found by glob stay its own)."""
    return slurm.shared / inventory.parent.name


def job_id_of(output: str) -> str:
    match = re.search(r"queued \(job (\d+), partition ", output)
    assert match, output
    return match[1]


def test_up_runs_one_rank_per_node_with_the_ssh_environment(slurm, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", slurm)
    done = distctl("up", str(inv), cwd=tmp_path, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    job = job_id_of(out)
    port = 20000 + int(job) % 20000
    first = slurm.address("cn1")
    for rank, node in ((0, "cn1"), (1, "cn2")):
        line = next(line for line in done.stdout.splitlines() if line.startswith(f"[{node} r{rank}] env "))
        assert f"RANK={rank} LOCAL_RANK=0 WORLD_SIZE=2 LOCAL_WORLD_SIZE=1 GROUP_RANK={rank} GROUP_WORLD_SIZE=2 " \
               f"ROLE_RANK={rank} MASTER_ADDR={first} MASTER_PORT={port} GLOO_SOCKET_IFNAME=eth0" in line, line
        assert line.endswith(f"host={node}")
        assert f"[{node} r{rank}] bye" in done.stdout
    assert "all 2 ranks finished" in done.stderr
    assert slurm.active_jobs() == []
    pulled = distctl("pull", cwd=tmp_path)  # the rank logs, through the login node
    assert pulled.returncode == 0, pulled.stderr
    assert "bye" in next((tmp_path / "runs").glob("*/rank1.log")).read_text()


def test_a_failed_rank_ends_the_job_and_is_named_first(slurm, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", slurm, command="python prog.py fail")
    done = distctl("up", str(inv), cwd=tmp_path, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "rank 1 on cn2 failed first: exited with code 7" in done.stderr
    assert "[cn1 r0] got SIGTERM" in done.stdout  # srun --kill-on-bad-exit ended the other rank
    wait_for(lambda: not any(slurm.node_processes(n) for n in slurm.nodes), 30, "nothing left on the nodes")
    status = distctl("status", cwd=tmp_path)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "[cn2 r1] exited 7" in status.stdout and "[cn1 r0] exited 143" in status.stdout
    assert re.search(r"Slurm job \d+ FAILED on cn\[1-2\]", status.stdout), status.stdout


def test_stop_terminates_the_ranks_and_leaves_nothing_in_the_queue_or_on_a_node(slurm, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", slurm, command="python prog.py sleep")
    up = distctl("up", str(inv), "--detach", cwd=tmp_path, timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    job = job_id_of(up.stderr)
    logs = start_distctl("logs", "-f", cwd=tmp_path)
    try:
        rundir = next(workdir_of(slurm, inv).glob("runs/*/job.sbatch")).parent
        wait_for(lambda: all("env RANK=" in read(rundir / f"rank{r}.log") for r in (0, 1)), 60, "both ranks running")
        stop = distctl("stop", "--grace", "20", cwd=tmp_path, timeout=120)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        out, err = logs.communicate(timeout=60)
    finally:
        if logs.poll() is None:
            logs.kill()
    assert "scancel -s TERM --full" in stop.stderr and "after 20 s: scancel" not in stop.stderr, stop.stderr
    assert job not in slurm.active_jobs()
    # Each rank's own TERM handling ran to its end (srun did not SIGKILL it), and only once.
    assert out.count("[cn1 r0] got SIGTERM") == 1 and out.count("[cn2 r1] got SIGTERM") == 1, out + err
    assert [read(rundir / f"rank{r}.exit") for r in (0, 1)] == ["143\n", "143\n"]
    assert all((rundir / "work" / f"saved-rank{r}").exists() for r in (0, 1))
    # Neither srun's answer to a TERM (SIGKILL) nor its --kill-on-bad-exit (a second TERM) reached them.
    assert "forcing job termination" not in read(rundir / f"slurm-{job}.out")
    assert "Terminating StepId" not in read(rundir / f"slurm-{job}.out")
    run_id = re.search(r"run (\S+) is Slurm job", up.stderr)[1]
    assert not [p for n in slurm.nodes for p in slurm.node_processes(n)  # no rank, at once
                if f"DISTCTL_RUN_ID={run_id}" in procfs.environ(p)]
    # Slurm's own slurmstepd finishes its step's bookkeeping a moment after the job ended.
    wait_for(lambda: not any(slurm.node_processes(n) for n in slurm.nodes), 20, "nothing left on the nodes")
    assert logs.returncode == 0
    status = distctl("status", cwd=tmp_path)
    assert "was stopped" in status.stdout, status.stdout


def test_stop_scancels_after_the_grace_ranks_that_ignore_sigterm(slurm, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", slurm, command="python prog.py stubborn")
    up = distctl("up", str(inv), "--detach", cwd=tmp_path, timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    job = job_id_of(up.stderr)
    rundir = next(workdir_of(slurm, inv).glob("runs/*/job.sbatch")).parent
    wait_for(lambda: all("env RANK=" in read(rundir / f"rank{r}.log") for r in (0, 1)), 60, "both ranks running")
    stop = distctl("stop", "--grace", "1", cwd=tmp_path, timeout=120)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert f"job {job} still RUNNING after 1 s: scancel" in stop.stderr
    assert f"Slurm job {job} is CANCELLED, nothing of it left in the queue" in stop.stderr
    assert job not in slurm.active_jobs()
    wait_for(lambda: not any(slurm.node_processes(n) for n in slurm.nodes), 20, "nothing left on the nodes")
    status = distctl("status", cwd=tmp_path)
    assert "[cn1 r0] killed (no exit code)" in status.stdout and "was stopped (CANCELLED)" in status.stdout


def test_check_refuses_a_bad_partition_and_a_missing_python_before_anything_is_queued(slurm, tmp_path):
    good = write_inventory(tmp_path / "good.yaml", slurm)
    ok = distctl("check", str(good), cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert re.search(r"Slurm 22\.05\.\d+", ok.stdout) and "sbatch --test-only: would start at" in ok.stdout
    bad = write_inventory(tmp_path / "bad.yaml", slurm, partition="nosuch")
    for command in ("check", "up"):
        done = distctl(command, str(bad), cwd=tmp_path)
        assert done.returncode == 5, done.stdout + done.stderr
        assert "partition 'nosuch' does not exist" in done.stderr and "Slurm 22.05" in done.stderr
    data = yaml.safe_load(good.read_text())
    data["defaults"]["python"] = "/nonexistent/bin/python3"
    (tmp_path / "nopy.yaml").write_text(yaml.safe_dump(data))
    done = distctl("up", str(tmp_path / "nopy.yaml"), cwd=tmp_path)
    assert done.returncode == 5, done.stdout + done.stderr
    assert "python /nonexistent/bin/python3 does not exist on the login node" in done.stderr
    assert slurm.active_jobs() == [] and "queued" not in done.stderr


def test_a_python_the_nodes_lack_fails_the_job_within_seconds_naming_the_node(slurm, tmp_path):
    """The login node has it (so check passes), the compute nodes do not: the batch script's first
    step says so before any rank starts."""
    inv = write_inventory(tmp_path / "inv.yaml", slurm)
    data = yaml.safe_load(inv.read_text())
    data["defaults"]["python"] = str(slurm.login_only_python)
    inv.write_text(yaml.safe_dump(data))
    done = distctl("up", str(inv), cwd=tmp_path, timeout=120)
    assert done.returncode == 5, done.stdout + done.stderr
    assert re.search(rf"cn[12]: python {re.escape(str(slurm.login_only_python))} not found", done.stderr), done.stderr
    assert "a node cannot run the job, nothing was started: cn" in done.stderr and done.stdout == ""


def rank_process(slurm, node: str, rank: int, marker: bytes) -> int | None:
    """The program of one rank (not its wrapper) on a compute node, found from the test's side."""
    for pid in slurm.node_processes(node):
        if marker in procfs.cmdline(pid) and f"RANK={rank}" in procfs.environ(pid):
            return pid
    return None


def test_the_bundled_trainer_on_two_nodes_restarts_from_its_checkpoint_with_equal_parameters(
        slurm, tmp_path, small_mnist):
    """A rank killed in training: srun ends the other, the batch script blames the killed one and
    starts both again with --resume; they continue from the checkpoint and end equal."""
    inv = write_inventory(tmp_path / "inv.yaml", slurm)
    data = yaml.safe_load(inv.read_text())
    data["job"] = {"name": "mnist", "data": str(small_mnist), "max_restarts": 1,
                   "train": {"epochs": 4, "batch_size": 64, "lr": 0.05, "timeout": 60}}
    inv.write_text(yaml.safe_dump(data))
    up = start_distctl("up", str(inv), cwd=tmp_path)
    try:
        log = wait_for(lambda: next(workdir_of(slurm, inv).glob("runs/*/rank1.log"), None), 120, "rank 1's log")
        wait_for(lambda: re.search(r"^epoch=1 ", log.read_text(), re.M), 120, "rank 1's first epoch")
        os.kill(wait_for(lambda: rank_process(slurm, "cn2", 1, b"trainer"), 10, "rank 1's trainer"), signal.SIGKILL)
        out, err = up.communicate(timeout=240)
    finally:
        kill_tree(up)
    assert up.returncode == 0, out + err
    assert "distctl: restart 1/1 after cn2 r1 exited 137" in err
    assert re.search(r"^\[cn2 r1\] resume rank=1 checkpoint=\S+ epoch=[1-3] step=0$", out, re.M), out
    found = digests(out)
    assert sorted(found) == [0, 1] and found[0] == found[1], out
    assert re.search(r"^\[cn2 r1\] done rank=1 ", out, re.M)


def test_max_restarts_restarts_every_rank_within_the_allocation_and_names_the_culprit(slurm, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", slurm, command="python prog.py flaky")
    data = yaml.safe_load(inv.read_text())
    data["job"]["max_restarts"] = 1
    inv.write_text(yaml.safe_dump(data))
    done = distctl("up", str(inv), cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "distctl: restart 1/1 after cn2 r1 exited 7" in done.stderr
    assert done.stdout.count("[cn1 r0] env ") == 2 and "[cn1 r0] got SIGTERM" in done.stdout
    assert "[cn2 r1] bye" in done.stdout and "all 2 ranks finished" in done.stderr


def test_a_requeued_job_runs_again_and_a_job_past_its_time_limit_is_timeout_never_finished(slurm, tmp_path):
    """Slurm's own endings, live: a requeue (what preemption with PreemptMode=REQUEUE does) and a
    time limit. The second job runs while the requeued one waits to start again, so it costs
    this test nothing: Slurm's time limits are minutes, and slurmctld checks them every 30 s."""
    inv = write_inventory(tmp_path / "inv.yaml", slurm, command="python prog.py sleep")
    up = distctl("up", str(inv), "--detach", cwd=tmp_path, timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    job, run_id = job_id_of(up.stderr), re.search(r"run (\S+) is Slurm job", up.stderr)[1]
    rundir = next(workdir_of(slurm, inv).glob("runs/*/job.sbatch")).parent
    wait_for(lambda: all("env RANK=" in read(rundir / f"rank{r}.log") for r in (0, 1)), 60, "both ranks running")
    requeued = slurm.client("scontrol", "requeue", job)
    assert requeued.returncode == 0, requeued.stderr
    timed_inv = write_inventory(tmp_path / f"{tmp_path.name}-timed" / "inv.yaml", slurm, time="1",
                                command="python prog.py sleep")
    timed_up = start_distctl("up", str(timed_inv), cwd=tmp_path)
    try:
        timed_rundir = wait_for(lambda: next(workdir_of(slurm, timed_inv).glob("runs/*/rank1.log"), None), 60,
                                "the timed job's ranks").parent
        wait_for(lambda: all("env RANK=" in read(timed_rundir / f"rank{r}.log") for r in (0, 1)), 60,
                 "the timed job's ranks running")
        timed_job = read(timed_rundir / "master").split()[0]
        # Its 1-minute limit, ended now: the end time Slurm computed from it, moved to the present.
        moved = slurm.client("scontrol", "update", f"JobId={timed_job}", "EndTime=now")
        assert moved.returncode == 0, moved.stderr
        out, err = timed_up.communicate(timeout=120)
    finally:
        kill_tree(timed_up)
    assert timed_up.returncode == 16, out + err
    assert f"Slurm ended job {timed_job}: TIMEOUT (reached its time limit (slurm.time)); it did not finish" in err
    status = distctl("status", timed_rundir.name, cwd=tmp_path)
    assert status.returncode == 16, status.stdout + status.stderr
    assert f"Slurm job {timed_job} TIMEOUT on cn[1-2]" in status.stdout and "finished" not in status.stdout

    # A requeued job waits out the credential lifetime (120 s) before it may start again. Moving
    # its start time to now skipped that, but on a loaded machine the early relaunch then failed
    # at once (JobState=FAILED, exit 1, no output) while the first run's steps were still being
    # cleaned up: the test waits as Slurm means it to.
    def ran_again() -> bool:
        return all("SLURM_RESTART_COUNT=1 " in read(rundir / f"rank{r}.log") for r in (0, 1))

    try:
        wait_for(ran_again, 300, "both ranks to run again after the requeue", every=1.0)
    except AssertionError as exc:  # say what Slurm made of it
        raise AssertionError(f"{exc}: {slurm.client('scontrol', 'show', 'job', job).stdout}\n"
                             f"{read(rundir / f'slurm-{job}.out')}\n{read(rundir / 'rank0.log')}") from None
    status = distctl("status", run_id, cwd=tmp_path)
    assert re.search(rf"Slurm job {job} RUNNING on cn\[1-2\]", status.stdout), status.stdout
    assert "[cn1 r0] running" in status.stdout and "[cn2 r1] running" in status.stdout
    assert distctl("stop", run_id, cwd=tmp_path).returncode == 0
    assert job not in slurm.active_jobs()


def test_a_torchrun_script_runs_unchanged_on_two_nodes(slurm, tmp_path):
    """examples/torchrun-ddp/train.py as it is: init_process_group() finds rank 0 from the
    environment the batch job gives every rank."""
    inv = write_inventory(tmp_path / "inv.yaml", slurm)
    data = yaml.safe_load(inv.read_text())
    data["job"] = {"name": "ddp", "code": str(Path(__file__).parent.parent / "examples" / "torchrun-ddp"),
                   "command": "python train.py --epochs 1 --samples 1024"}
    inv.write_text(yaml.safe_dump(data))
    done = distctl("up", str(inv), cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    found = digests(done.stdout)
    assert sorted(found) == [0, 1] and found[0] == found[1], done.stdout
    assert "[cn1 r0] data=generated samples=1024 world_size=2" in done.stdout


def test_a_failed_job_setup_on_the_login_node_queues_nothing(slurm, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", slurm)
    data = yaml.safe_load(inv.read_text())
    data["job"]["setup"] = "echo making the venv; exit 3"
    inv.write_text(yaml.safe_dump(data))
    done = distctl("up", str(inv), cwd=tmp_path, timeout=120)
    assert done.returncode == 10, done.stdout + done.stderr
    assert "job.setup exited with code 3; nothing was queued" in done.stderr and "making the venv" in done.stderr
    assert "queued" not in done.stderr.replace("nothing was queued", "") and slurm.active_jobs() == []
