"""job.hang_timeout: the agents judge a run hung from the rank logs on the hosts, take every
rank's stacks, then end the run (exit 15) or restart it (orchestrator/hostside/agent.py). The
decision is tested with a clock in tests/test_agent_policy.py; here, on the cluster, with a
torch-free program whose rank 1 stops printing (it sleeps in `stuck`) while rank 0 waits."""

from __future__ import annotations

import json
import re

import pytest

from e2e import distctl, last_run_id, run_pids, wait_for, write_inventory
from orchestrator.plan.model import AGENT_TEST_VARIABLE

HANGS = """
import os, sys, time
rank, attempt = int(os.environ["RANK"]), int(os.environ["TORCHELASTIC_RESTART_COUNT"])
print("attempt=%d rank=%d" % (attempt, rank), flush=True)


def stuck():
    time.sleep(600)


def wait_for_the_others():
    time.sleep(600)


if attempt >= int(os.environ.get("HANG_UNTIL", "99")):
    sys.exit(0)
stuck() if rank == 1 else wait_for_the_others()
"""
TIMERS = json.dumps({"heartbeat": 0.5, "silent": 5.0, "settle": 0.5})


def hanging(cluster, tmp_path, monkeypatch, **job):
    monkeypatch.setenv(AGENT_TEST_VARIABLE, TIMERS)
    code = tmp_path / "project"
    code.mkdir(exist_ok=True)
    (code / "prog.py").write_text(HANGS)
    return write_inventory(tmp_path / "inv.yaml", cluster, ("node1", "node2"), code="project",
                           command="python prog.py", wait_for_rank0=False, hang_timeout=3, **job)


def host_file(cluster, host: str, run_id: str, name: str) -> str:
    h = cluster.host(host)
    return h.run(f"cat {h.workdir}/runs/{run_id}/{name} 2>/dev/null").stdout


def plan_with(job: str):
    from test_plan import ARTIFACTS, INVENTORY, facts

    from orchestrator.inventory.model import parse_inventory
    from orchestrator.plan.model import Network, plan_launch

    inv = parse_inventory(INVENTORY.replace("train: {epochs: 2}", job), "inv.yaml", environ={"MY_TOKEN": "x"})
    return inv, plan_launch(inv, "run-1", ARTIFACTS, facts(), Network("10.213.0.11", {"node1": "eth0", "node2": "e"}))


def test_hang_timeout_alone_starts_a_watching_agent_and_no_restart_step():
    from orchestrator.plan.model import StepKind, agent_config

    inv, plan = plan_with("command: python prog.py, hang_timeout: 30")
    assert plan.coordinated and plan.hang_timeout == 30 and not plan.max_restarts
    assert not [s for s in plan.steps if s.kind is StepKind.RESTART]
    cfg = agent_config(inv, plan.run_id, list(plan.hosts), 1, plan.master_addr)
    assert (cfg["max_restarts"], cfg["hang_timeout"], cfg["join_line"]) == (0, 30, None)
    assert cfg["stacks"][1] == "0 2.0 1 0.1 2"  # node2's rank, dumped as `distctl stacks` does
    assert all("distctl-agent" in s.command for s in plan.steps if s.kind is StepKind.LAUNCH)
    trainer_inv, trainer = plan_with("train: {epochs: 2}, hang_timeout: 600")
    cfg = agent_config(trainer_inv, trainer.run_id, list(trainer.hosts), 0, trainer.master_addr)
    assert cfg["join_line"] == "joined "  # the trainer's line right after init_process_group
    neither_inv, neither = plan_with("command: python prog.py")
    # Neither: every host's agent only watches its own ranks, with no port and no secret.
    assert not neither.coordinated
    cfg = agent_config(neither_inv, neither.run_id, list(neither.hosts), 1, neither.master_addr)
    assert cfg["watch"] and "coord" not in cfg and "restart" not in cfg and cfg["max_restarts"] == 0
    assert all("distctl-agent" in s.command and ": >agent.watch" in s.command
               for s in neither.steps if s.kind is StepKind.LAUNCH)


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_a_bad_hang_timeout_is_one_clear_line(value):
    from orchestrator.errors import DistctlError

    with pytest.raises(DistctlError) as err:
        plan_with(f"command: python prog.py, hang_timeout: {value}")
    assert "hang_timeout" in str(err.value) and "a positive number of seconds" in str(err.value)


@pytest.mark.cluster
def test_a_hung_run_attached_takes_every_ranks_stacks_and_exits_15(cluster, tmp_path, monkeypatch):
    inv = hanging(cluster, tmp_path, monkeypatch)
    up = distctl("up", str(inv), cwd=tmp_path, timeout=180)
    assert up.returncode == 15, up.stderr
    assert "hung: no rank made progress for 3s (job.hang_timeout); taking the stacks of every rank" in up.stderr
    assert re.search(r"run \S+ hung: no rank made progress for 3s \(job.hang_timeout\); the run was stopped",
                     up.stderr), up.stderr
    rollcall = next(line for line in up.stderr.splitlines() if "roll-call when it hung:" in line)
    assert "rank 1 on node2 is in stuck (prog.py:" in rollcall, rollcall
    assert "wait_for_the_others (prog.py:" in rollcall, rollcall
    run_id = last_run_id(tmp_path)
    assert not any(run_pids(cluster, run_id).values())
    stamp = host_file(cluster, "node2", run_id, "hung").strip()
    assert "in stuck" in host_file(cluster, "node2", run_id, f"stacks/{stamp}/rank1.txt")


@pytest.mark.cluster
def test_a_hung_run_detached_shows_hung_in_status_exit_15(cluster, tmp_path, monkeypatch):
    inv = hanging(cluster, tmp_path, monkeypatch)
    assert distctl("up", str(inv), "--detach", cwd=tmp_path).returncode == 0
    run_id = last_run_id(tmp_path)
    wait_for(lambda: not any(run_pids(cluster, run_id).values())
             and "hung" in host_file(cluster, "node1", run_id, "agent.state"), 120, "the agents to end the run")
    status = distctl("status", cwd=tmp_path)
    assert status.returncode == 15, status.stderr
    assert f"run {run_id} is hung" in status.stderr
    assert "hung: no rank made progress for 3s (job.hang_timeout)" in status.stdout
    assert "roll-call when it hung: " in status.stdout and "rank 1 on node2 is in stuck" in status.stdout


@pytest.mark.cluster
def test_a_hang_with_a_restart_left_restarts_once(cluster, tmp_path, monkeypatch):
    inv = hanging(cluster, tmp_path, monkeypatch, max_restarts=1, env={"HANG_UNTIL": "1"})
    up = distctl("up", str(inv), cwd=tmp_path, timeout=180)
    assert up.returncode == 0, up.stderr
    assert "restart 1/1 after hung: no rank made progress for 3s (job.hang_timeout)" in up.stderr
    assert re.search(r"run \S+ finished: 2 rank\(s\) exited 0, after 1 restart\(s\)", up.stderr), up.stderr
    run_id = last_run_id(tmp_path)
    assert "attempt=1 rank=1" in host_file(cluster, "node2", run_id, "rank1.log")


@pytest.mark.cluster
def test_stop_ends_a_watched_run_and_its_agents_and_is_never_a_hang(cluster, tmp_path, monkeypatch):
    inv = hanging(cluster, tmp_path, monkeypatch)
    inv.write_text(inv.read_text().replace("hang_timeout: 3", "hang_timeout: 300"))
    assert distctl("up", str(inv), "--detach", cwd=tmp_path).returncode == 0
    run_id = last_run_id(tmp_path)
    wait_for(lambda: "attempt=0 rank=1" in host_file(cluster, "node2", run_id, "rank1.log"), 60, "rank 1 to start")
    stop = distctl("stop", cwd=tmp_path)
    assert stop.returncode == 0, stop.stderr
    assert not any(run_pids(cluster, run_id).values())  # the agents carry the run's marker too
    status = distctl("status", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "hung" not in status.stdout and not host_file(cluster, "node1", run_id, "hung")


@pytest.mark.cluster
def test_a_watching_agent_ends_a_failed_run_and_stops_the_others_without_a_restart(cluster, tmp_path, monkeypatch):
    inv = hanging(cluster, tmp_path, monkeypatch)
    inv.write_text(inv.read_text().replace("hang_timeout: 3", "hang_timeout: 300"))
    (tmp_path / "project" / "prog.py").write_text(HANGS.replace("stuck() if", "sys.exit(7) if"))
    up = distctl("up", str(inv), cwd=tmp_path, timeout=180)
    assert up.returncode == 1, up.stderr
    assert "rank 1 on node2 failed first: exited with code 7" in up.stderr, up.stderr
    assert "restart" not in up.stderr
    run_id = last_run_id(tmp_path)
    assert not any(run_pids(cluster, run_id).values())
