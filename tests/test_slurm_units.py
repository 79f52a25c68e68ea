"""The Slurm target's pure parts: the inventory section, the batch script (golden), the rank
environment against the SSH one, Slurm's output (recorded), the verdicts, and the login node's
follower on a run directory of files."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from orchestrator.errors import InventoryError
from orchestrator.hostside import source
from orchestrator.inventory.model import parse_inventory
from orchestrator.plan.model import Artifact, host_env, rank_env
from orchestrator.slurm import queue
from orchestrator.slurm.report import JobReport, first_failure, outcome, parse_files, rank_state, status_verdict
from orchestrator.slurm.submit import judge_preflight, plan_job
from orchestrator.slurm.script import (batch_script, derived_port, policy_config, render_dry_run, run_env,
                                       sbatch_argv)
from test_plan import check_golden

INVENTORY = """\
slurm:
  login: {address: hpc-login, user: me}
  partition: gpu
  nodes: 2
  slots: 8
  gpus_per_node: 8
  preamble: ["module load cuda/12"]
  time: "04:00:00"
  sbatch: ["--account=proj"]
defaults: {python: /shared/venv/bin/python, workdir: /shared/me/distctl, env: {NCCL_DEBUG: WARN}}
job: {name: mnist, train: {epochs: 2}, env: {TOKEN: {from_env: MY_TOKEN}}}
"""
ARTIFACTS = (Artifact("code", "c0de" * 16, "/src/trainer", "trainer"),)


def inventory(text: str = INVENTORY):
    return parse_inventory(text, "inv.yaml", environ={"MY_TOKEN": "s3cret"})


# ------------------------------------------------------------------ the inventory


def test_the_slurm_section_is_read_into_a_target_with_the_login_node_from_defaults():
    inv = inventory()
    t = inv.slurm
    assert inv.hosts == () and (t.nodes, t.slots, t.partition, t.gpus_per_node) == (2, 8, "gpu", 8)
    assert (t.preamble, t.time, t.sbatch, t.port) == (("module load cuda/12",), "04:00:00", ("--account=proj",), None)
    assert (t.login.address, t.login.user, t.login.python, t.login.workdir) == (
        "hpc-login", "me", "/shared/venv/bin/python", "/shared/me/distctl")
    assert inv.secrets == ("s3cret",)
    assert inventory(INVENTORY.replace("name: mnist,", "name: mnist, port: 29500,")).slurm.port == 29500


@pytest.mark.parametrize("change, message", [
    (("  nodes: 2\n", ""), "inv.yaml:2: slurm: 'nodes' is missing"),
    (("  nodes: 2\n", "  nodes: two\n"), "slurm: 'nodes' must be a positive integer, got 'two'"),
    (('"04:00:00"', '"4 hours"'), "slurm: 'time' must be a time limit like 04:00:00"),
    (('["--account=proj"]', '["account=proj"]'), "'sbatch' entries are sbatch options like --account=proj"),
    (("  slots: 8\n", "  slot: 8\n"), "inv.yaml:5: slurm: unknown key 'slot'"),
    (("job: {", "hosts: [{name: a, address: b}]\njob: {"), "'hosts' and 'slurm' exclude each other"),
    (("job: {", "job: {max_restarts: 1, min_hosts: 1, "), "'min_hosts' does not apply on Slurm"),
])
def test_a_bad_slurm_section_is_one_line_naming_file_line_and_field(change, message):
    with pytest.raises(InventoryError) as err:
        inventory(INVENTORY.replace(*change))
    assert message in str(err.value)


# ------------------------------------------------------------------ the batch job


def test_dry_run_prints_the_exact_script_and_sbatch_command():
    job, artifacts = plan_job(inventory(), "mnist-1", "/shared/me/distctl", ARTIFACTS)
    check_golden("slurm-dry-run.txt", render_dry_run(job, artifacts))
    assert sbatch_argv(job) == ("sbatch", "--parsable", "--account=proj",
                                "/shared/me/distctl/runs/mnist-1/job.sbatch")
    assert "s3cret" not in render_dry_run(job, artifacts)


def test_the_script_runs_in_bash_and_starts_ranks_with_srun_kill_on_bad_exit():
    job, _ = plan_job(inventory(), "mnist-1", "/shared/me/distctl", ARTIFACTS)
    script = batch_script(job)
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # it parses
    assert "srun --kill-on-bad-exit=1 --nodes=2 --ntasks-per-node=8 sh -c " in script
    assert "#SBATCH --gpus-per-node=8" in script and "\nmodule load cuda/12\n" in script
    assert "MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))" in script
    assert derived_port(4242) == 24242 and derived_port(123456) == 23456


def test_every_rank_gets_the_variables_it_gets_over_ssh():
    """The static part (the env file) plus what the script and wrapper set from Slurm's
    variables is exactly the SSH rank's environment."""
    inv = inventory()
    slurm_names = {v.name for v in run_env(inv, inv.slurm, "r", "/code", "/data")}
    at_run_time = {"MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "ROLE_RANK", "GROUP_RANK",
                   "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"}
    ssh = parse_inventory("hosts: [{name: a, address: b}]\njob: {env: {TOKEN: x}}\n"
                          "defaults: {env: {NCCL_DEBUG: WARN}}")
    ssh_names = {v.name for v in host_env("r", ssh, ssh.hosts[0], "eth0", "1.2.3.4", 2, 0, 1, "/data", "/code")}
    ssh_names |= {v.name for v in rank_env(0, 0)}
    assert slurm_names | at_run_time == ssh_names
    script = batch_script(plan_job(inv, "r", "/w", ARTIFACTS)[0])
    assert all(name in script for name in at_run_time)


def test_dry_run_connects_to_nothing(tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text(INVENTORY.replace("hpc-login", "login.invalid").replace(", env: {TOKEN: {from_env: MY_TOKEN}}", ""))
    done = subprocess.run([sys.executable, "-m", "orchestrator", "up", str(inv), "--dry-run"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "  sbatch --parsable --account=proj /shared/me/distctl/runs/mnist-" in done.stdout


# ------------------------------------------------------------------ Slurm's output (recorded on 22.05.8)

SQUEUE = """\
4242|RUNNING|gpu|cn[1-2]|2026-12-06T09:38:48|None
4243|PENDING|gpu||N/A|Priority
4244|TIMEOUT|gpu|cn1|2026-12-06T08:00:00|TimeLimit
4245|PREEMPTED|gpu|cn2|2026-12-06T08:00:00|None
4246|NODE_FAIL|gpu|cn[1-2]|2026-12-06T08:00:00|NodeDown
4247|OUT_OF_MEMORY|gpu|cn1|2026-12-06T08:00:00|OutOfMemory
4248|CANCELLED by 0|gpu|cn1|2026-12-06T08:00:00|None
garbage line
"""
SCONTROL = """\
JobId=2 JobName=s-20261206-093846-d7e8
   UserId=root(0) GroupId=root(0) MCS_label=N/A
   JobState=FAILED Reason=NonZeroExitCode Dependency=(null)
   Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=7:0
   NodeList=cn[1-2]
   BatchHost=cn1
   Command=/tmp/dsl12715-yy627vqf/shared/me/runs/s-20261206-093846-d7e8/job.sbatch
"""


def test_squeue_lines_become_entries_with_slurm_endings_their_own_states():
    found = queue.parse_squeue(SQUEUE)
    assert found["4242"] == queue.QueueEntry("4242", "RUNNING", "gpu", "cn[1-2]", "2026-12-06T09:38:48", "None")
    assert found["4243"].active and found["4243"].start == "N/A"
    for job, state in (("4244", "TIMEOUT"), ("4245", "PREEMPTED"), ("4246", "NODE_FAIL"), ("4247", "OUT_OF_MEMORY")):
        assert found[job].state == state and found[job].ended_by_slurm and not found[job].active
    assert found["4248"].state == "CANCELLED" and not found["4248"].ended_by_slurm
    assert len(found) == 7


def test_scontrol_show_job_gives_state_exit_code_and_nodes():
    record = queue.job_record(SCONTROL)
    assert record == queue.JobRecord("FAILED", 7, 0, "NonZeroExitCode", 0, "cn[1-2]", "cn1")
    assert queue.job_record("slurm_load_jobs error: Invalid job id specified\n") is None


def test_sbatch_answers_are_read():
    assert queue.parse_submitted("4242\n") == "4242" and queue.parse_submitted("4242;cluster\n") == "4242"
    assert queue.parse_submitted("") is None
    assert queue.parse_version("slurm-wlm 22.05.8\n") == "22.05.8" and queue.parse_version("slurm 23.11.1") == "23.11.1"
    found = queue.parse_test_only("sbatch: Job 3 to start at 2026-12-06T09:45:01 using 2 processors on nodes "
                                  "cn[1-2] in partition batch\n")
    assert found == queue.TestOnly("2026-12-06T09:45:01", "cn[1-2]", "batch")
    assert queue.slurm_error("sbatch: error: invalid partition specified: nosuch\nsbatch: error: Batch job "
                             "submission failed: Invalid partition name specified\n") == \
        "Batch job submission failed: Invalid partition name specified"


# ------------------------------------------------------------------ verdicts


def ended(exits, state="FAILED", why="failed", nodes=None):
    return JobReport(exits, nodes or {0: "cn1", 1: "cn2"}, state, None, why)


@pytest.mark.parametrize("found, code, message", [
    (ended({0: (0, 1.0), 1: (0, 1.0)}, "COMPLETED", "done"), 0, "all 2 ranks finished (Slurm job 9)"),
    (ended({0: (143, 2.0), 1: (7, 1.5)}), 1, "rank 1 on cn2 failed first: exited with code 7 (Slurm job 9)"),
    (ended({0: (143, 1.0), 1: (None, None)}), 1, "rank 1 on cn2 failed first: was killed (no exit code)"),
    (ended({0: (143, 2.0), 1: (143, 2.0)}, "FAILED", "stopped"), 1, "job 9 was stopped"),
    (ended({}, "TIMEOUT", ""), 16, "Slurm ended job 9: TIMEOUT (reached its time limit (slurm.time))"),
    (ended({0: (143, 1.0)}, "PREEMPTED", ""), 16, "Slurm ended job 9: PREEMPTED"),
    (ended({}, "NODE_FAIL", ""), 16, "NODE_FAIL (a node of the allocation failed)"),
    (ended({0: (137, 1.0)}, "OUT_OF_MEMORY", ""), 16, "OUT_OF_MEMORY"),
    (ended({}, "FAILED", "node-check"), 5, "a node cannot run the job"),
])
def test_outcome_names_slurm_endings_stops_and_the_first_failed_rank(found, code, message):
    got_code, got = outcome(found, "9", trainer=False, max_restarts=0)
    assert (int(got_code), message in got) == (code, True), got


def test_the_trainer_peer_lost_code_is_never_blamed_while_a_cause_exists():
    found = ended({0: (4, 1.0), 1: (1, 2.0)})
    assert first_failure(found, trainer=True) == (1, 1)
    assert first_failure(found, trainer=False) == (0, 4)
    code, message = outcome(ended({0: (1, 1.0), 1: (143, 2.0)}, why="exhausted"), "9", trainer=True, max_restarts=2)
    assert int(code) == 13 and "2 restart(s) used up" in message
    code, message = outcome(ended({0: (2, 1.0), 1: (143, 2.0)}), "9", trainer=True, max_restarts=2)
    assert int(code) == 1 and "used up" not in message  # a final code: not restarted, nothing used up


def test_rank_states_come_from_files_and_the_queue():
    found = parse_files("rank 0 cn1 0 1765000000\nrank 1 cn2 - -\nrank 2 - - -\nend - -\n", "RUNNING")
    assert found.exits == {0: (0, 1765000000.0)} and found.nodes == {0: "cn1", 1: "cn2"}
    assert [rank_state(r, found, "RUNNING") for r in range(3)] == ["exited 0", "running", "starting"]
    assert [rank_state(r, found, "TIMEOUT") for r in range(3)] == ["exited 0", "killed (no exit code)",
                                                                   "never started"]
    assert rank_state(2, found, "PENDING") == "pending (queued)"
    assert parse_files("end 143 stopped\n", "").end_why == "stopped"


def test_status_reads_a_job_slurm_no_longer_lists_from_the_run_files():
    assert status_verdict(parse_files("rank 0 cn1 0 1\nend 0 done\n", "RUNNING"), "9", False, 0) == (0, "")
    code, line = status_verdict(parse_files("rank 0 cn1 0 1\nrank 1 cn2 0 2\nend 0 done\n", ""), "9", False, 0)
    assert (int(code), line) == (0, "Slurm no longer lists job 9; from the run's files: all 2 ranks finished "
                                     "(Slurm job 9)")
    code, line = status_verdict(parse_files("rank 0 cn1 7 1\nrank 1 cn2 143 2\nend 7 failed\n", ""), "9", False, 0)
    assert int(code) == 1 and line.endswith("rank 0 on cn1 failed first: exited with code 7 (Slurm job 9)")
    assert status_verdict(parse_files("rank 0 - - -\nend - -\n", ""), "9", False, 0)[1] == \
        "Slurm no longer lists job 9, and the run left no exit codes"
    assert int(status_verdict(parse_files("end - -\n", "TIMEOUT"), "9", False, 0)[0]) == 16


def test_preflight_refuses_missing_tools_partition_and_python_and_warns_on_local_file_systems():
    t = inventory().slurm
    pre = judge_preflight("missing squeue\nversion slurm-wlm 22.05.8\nfs workdir ext2/ext3\n"
                          "partition Partition gpu not found\npython missing\n", t, "/shared/venv/bin/python",
                          "/shared/me")
    assert pre.version == "22.05.8"
    assert pre.problems == ("squeue is not installed on the login node (or not on its PATH)",
                            "partition 'gpu' does not exist (Partition gpu not found)",
                            "python /shared/venv/bin/python does not exist on the login node (defaults.python: "
                            "it must lie on the shared file system)")
    assert pre.warnings[0].startswith("workdir /shared/me is on a local file system (ext2/ext3)")
    assert judge_preflight("version slurm 22.05.8\nfs workdir nfs4\nfs python lustre\n", t, "p", "/w").warnings == ()


# ------------------------------------------------------------------ the login node's follower


def follower(rundir, *args, env=None):
    return subprocess.run([sys.executable, "-c", source("slurm_follow"), *args], cwd=rundir, capture_output=True,
                          text=True, timeout=30, env={**os.environ, "PATH": "/nonexistent", **(env or {})})


def test_the_follower_reports_nodes_lines_exits_and_the_end_from_files_alone(tmp_path):
    (tmp_path / "rank0.node").write_text("cn1\n")
    (tmp_path / "rank0.log").write_text("a\nb\nunfinished")
    (tmp_path / "rank0.exit").write_text("0\n")
    (tmp_path / "rank1.log").write_text("x\n")
    (tmp_path / "events").write_text("distctl: a rank failed; restart 1 of 1\n")
    (tmp_path / "job.end").write_text("7 failed\n")
    done = follower(tmp_path, "follow", "-1", "42", "2")  # no squeue on PATH: job.end alone ends it
    lines = done.stdout.splitlines()
    assert lines[0] == "ev distctl: a rank failed; restart 1 of 1"
    assert lines[1:6] == ["node 0 cn1", "0 a", "0 b", "0 unfinished", "1 x"]
    assert lines[6].startswith("exit 0 0 ") and lines[7] == "exit 1 - -"
    assert lines[8] == "end - 7 failed"
    replay = follower(tmp_path, "replay", "1", "42", "2").stdout.splitlines()
    assert replay == ["node 0 cn1", "0 b", "1 x", "ev distctl: a rank failed; restart 1 of 1", "0 unfinished"]


def test_the_follower_is_python_38_text_with_double_quotes_only():
    text = source("slurm_follow")
    assert "'" not in text
    ast.parse(text, feature_version=(3, 8))


# ------------------------------------------------------------------ the restart policy in the batch script


def policy(rundir, exits, attempt=0, max_restarts=1, trainer=False, nodes=("cn1", "cn2"), slots=1, stopping=False):
    """slurm_policy.py, as the batch script runs it, on a run directory of recorded exit files
    (rank -> (code, mtime); None: no file, the wrapper was killed)."""
    (rundir / "nodes").write_text("".join(f"{n}\n" for n in nodes))
    for rank, (code, at) in exits.items():
        (rundir / f"rank{rank}.node").write_text(f"{nodes[rank // slots]}\n")
        if code is not None:
            (rundir / f"rank{rank}.exit").write_text(f"{code}\n")
            os.utime(rundir / f"rank{rank}.exit", (at, at))
    if stopping:
        (rundir / "stopping").touch()
    program = "train: {epochs: 2}" if trainer else "command: python x.py"
    text = INVENTORY.replace("slots: 8", f"slots: {slots}").replace(
        "job: {name: mnist, train: {epochs: 2},", f"job: {{name: mnist, max_restarts: {max_restarts}, {program},")
    job, _ = plan_job(inventory(text), "r", "/w", ARTIFACTS)
    done = subprocess.run([sys.executable, "-c", source("slurm_policy"), policy_config(job), str(attempt)],
                          cwd=rundir, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    events = (rundir / "events").read_text() if (rundir / "events").exists() else ""
    for name in ("events", "stopping", *(f"rank{r}.exit" for r in exits)):
        (rundir / name).unlink(missing_ok=True)
    return done.stdout.strip(), events.strip()


def test_the_batch_scripts_restart_policy_blames_as_over_ssh_from_the_exit_files(tmp_path):
    # rank 1 failed; srun's --kill-on-bad-exit then terminated rank 0 (143): restart, blaming rank 1
    assert policy(tmp_path, {0: (143, 20.0), 1: (7, 10.0)}) == ("restart", "restart 1/1 after cn2 r1 exited 7")
    # 143 is never blamed while a cause exists, even when its file is older (clocks, coarse mtimes)
    assert policy(tmp_path, {0: (143, 5.0), 1: (137, 10.0)}) == ("restart", "restart 1/1 after cn2 r1 exited 137")
    # the earliest of two causes; a rank without an exit file was killed (no code)
    assert policy(tmp_path, {0: (1, 11.0), 1: (7, 10.0)})[1] == "restart 1/1 after cn2 r1 exited 7"
    assert policy(tmp_path, {0: (143, 5.0), 1: (None, None)}, attempt=0)[0] == "restart"
    assert policy(tmp_path, {0: (0, 5.0), 1: (0, 6.0)}) == ("done", "")
    assert policy(tmp_path, {0: (7, 5.0), 1: (143, 6.0)}, attempt=1) == (
        "exhausted", "end exhausted: restarts exhausted (1/1): cn1 r0 exited 7")
    assert policy(tmp_path, {0: (7, 5.0), 1: (143, 6.0)}, max_restarts=0) == ("failed", "end failed: cn1 r0 exited 7")
    assert policy(tmp_path, {0: (143, 5.0), 1: (143, 6.0)}, stopping=True) == ("stopped", "")


def test_the_trainers_usage_and_divergence_codes_end_the_run_and_its_peer_lost_code_is_never_blamed(tmp_path):
    assert policy(tmp_path, {0: (143, 5.0), 1: (3, 6.0)}, trainer=True) == (
        "failed", "end failed: cn2 r1 exited 3: not restarted (a restart would fail the same way)")
    assert policy(tmp_path, {0: (4, 5.0), 1: (1, 6.0)}, trainer=True) == (
        "restart", "restart 1/1 after cn2 r1 exited 1")
    # a user program's 3 or 4 means nothing special
    assert policy(tmp_path, {0: (4, 5.0), 1: (3, 6.0)}) == ("restart", "restart 1/1 after cn1 r0 exited 4")


def test_ranks_are_placed_on_nodes_in_blocks_of_slots(tmp_path):
    exits = {0: (143, 9.0), 1: (143, 9.0), 2: (143, 9.0), 3: (9, 8.0)}
    assert policy(tmp_path, exits, slots=2) == ("restart", "restart 1/1 after cn2 r3 exited 9")
