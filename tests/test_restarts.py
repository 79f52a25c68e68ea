"""job.max_restarts and job.min_hosts: the per-host restart agents (orchestrator/hostside/agent.py).

The decision is a pure function, tested here case by case (the agents around it in
tests/test_agent_policy.py); the rest runs on the real cluster:
torch-free programs for the lifecycle, the bundled trainer where exactness is the point."""

from __future__ import annotations

import json
import os
import re
import signal
import socket

import pytest
import yaml

from e2e import digests, distctl, last_run_id, run_pids, start_distctl, kill_tree, wait_for, write_inventory
from orchestrator.hostside import agent, agent_policy

# Each rank says which attempt it is; rank 1 fails (exit 7) until attempt FAIL_UNTIL.
FLAKY = """
import os, sys, time
rank, attempt = int(os.environ["RANK"]), int(os.environ["TORCHELASTIC_RESTART_COUNT"])
print("attempt=%d rank=%d world=%s" % (attempt, rank, os.environ["WORLD_SIZE"]), flush=True)
if rank == 1 and attempt < int(os.environ.get("FAIL_UNTIL", "1")):
    time.sleep(1)
    sys.exit(7)
time.sleep(float(os.environ.get("HOLD", "2")))
"""


# ------------------------------------------------------------------ decide(), pure

def cfg(**over):
    base = {"hosts": [{"name": "a", "ranks": [0, 1]}, {"name": "b", "ranks": [2]}, {"name": "c", "ranks": [3]}],
            "max_restarts": 2, "min_hosts": 2, "lost_after": 30.0, "final_codes": [2, 3], "peer_lost": [4]}
    return {**base, **over}


ALL = [0, 1, 2]


def test_every_rank_exited_0_is_done_and_a_missing_exit_waits():
    assert agent_policy.decide(cfg(), 0, ALL, {r: (0, 1.0) for r in range(4)}, {}, False, None) == ("done",)
    assert agent_policy.decide(cfg(), 0, ALL, {r: (0, 1.0) for r in range(3)}, {}, False, None) == ("wait",)


def test_a_stop_wins_over_any_failure():
    assert agent_policy.decide(cfg(), 0, ALL, {2: (137, 1.0)}, {}, True, 9.0)[:2] == ("end", "stopped")


def test_a_failure_waits_to_settle_then_restarts_blaming_the_root_cause_not_the_peer_lost_exit():
    exits = {0: (4, 1.0), 1: (4, 1.5), 2: (137, 2.0)}
    assert agent_policy.decide(cfg(), 0, ALL, exits, {}, False, 0.5) == ("wait",)
    assert agent_policy.decide(cfg(), 0, ALL, exits, {}, False, 5.0) == ("restart", ALL, "b r2 exited 137")


def test_restarts_exhausted_and_final_codes_end_the_run():
    exits = {2: (137, 1.0)}
    assert agent_policy.decide(cfg(), 2, ALL, exits, {}, False, 5.0) == (
        "end", "exhausted", "restarts exhausted (2/2): b r2 exited 137")
    assert agent_policy.decide(cfg(), 0, ALL, {3: (2, 1.0)}, {}, False, 0.0) == (
        "end", "failed", "c r3 exited 2: not restarted (a restart would fail the same way)")


def test_a_silent_host_is_a_link_fault_until_lost_after_then_dropped():
    exits = {0: (4, 1.0), 1: (4, 1.0)}
    assert agent_policy.decide(cfg(), 0, ALL, exits, {1: 10.0}, False, 5.0) == ("wait",)
    assert agent_policy.decide(cfg(), 0, ALL, exits, {1: 31.0}, False, 5.0) == (
        "restart", [0, 2], "a r0 exited 4; lost b (silent for 30s)")
    # without a failure, silence alone drops nobody
    assert agent_policy.decide(cfg(), 0, ALL, {}, {1: 99.0}, False, None) == ("wait",)


def test_a_host_whose_agent_is_gone_ends_the_run_once_every_other_rank_exited_0_and_lost_after_passed():
    # b's agent was killed: its rank's exit never arrives. Waiting for it would wait forever.
    exits = {0: (0, 1.0), 1: (0, 1.0), 3: (0, 1.0)}
    assert agent_policy.decide(cfg(), 0, ALL, exits, {1: 29.0}, False, None) == ("wait",)
    assert agent_policy.decide(cfg(), 0, ALL, exits, {1: 30.0}, False, None) == (
        "end", "ended", "every rank heard of exited 0; no word from the agent on b for 30s")
    # ranks still running on a host that is heard from: they are not cut short
    assert agent_policy.decide(cfg(), 0, ALL, {0: (0, 1.0), 1: (0, 1.0)}, {1: 99.0}, False, None) == ("wait",)


def test_status_names_an_agent_that_died_before_it_recorded_an_outcome():
    from orchestrator.run.lifecycle import parse_agent

    running = 'agent {"attempt": 0, "outcome": null}\n'
    assert parse_agent(running + "agent-alive=0\n")["gone"] is True
    assert parse_agent(running + "agent-alive=1\n")["gone"] is False
    assert parse_agent('agent {"attempt": 0, "outcome": "finished"}\nagent-alive=0\n')["gone"] is False


def test_fewer_hosts_than_min_hosts_ends_the_run():
    exits = {0: (4, 1.0), 1: (4, 1.0)}
    assert agent_policy.decide(cfg(min_hosts=3), 0, ALL, exits, {1: 31.0}, False, 5.0) == (
        "end", "exhausted", "a r0 exited 4; lost b (silent for 30s); 2 host(s) left, job.min_hosts is 3")


def test_placement_renumbers_the_survivors_in_host_order():
    assert agent_policy.placement(cfg(), [0, 2], 2) == {3: {
        "RANK": 2, "ROLE_RANK": 2, "WORLD_SIZE": 3, "ROLE_WORLD_SIZE": 3, "GROUP_RANK": 1, "GROUP_WORLD_SIZE": 2}}
    assert agent_policy.placement(cfg(), [0, 1, 2], 0)[1]["RANK"] == 1


def test_the_agent_starts_an_attempt_by_running_the_plans_restart_step(tmp_path, monkeypatch):
    """Ranks.start writes each rank's placement, then runs the RESTART step's command exactly:
    the ranks come up detached with the new placement and --resume, and their pgids are adopted."""
    import sys
    import time

    from orchestrator.plan.model import RankPlan
    from orchestrator.plan.scripts import restart_script

    monkeypatch.chdir(tmp_path)
    (tmp_path / "env").write_text("export WORLD_SIZE=9\n")  # the launch-time env: the attempt's wins
    (tmp_path / "work").mkdir()
    argv = ("sh", "-c", 'echo "rank=$RANK world=$WORLD_SIZE attempt=$TORCHELASTIC_RESTART_COUNT args=$*"', "prog")
    ranks = [RankPlan(rank=r, local_rank=r, argv=argv) for r in (0, 1)]
    ranks_here = agent.Ranks({"ranks": [{"rank": 0}, {"rank": 1}],
                              "restart": restart_script(str(tmp_path), ranks, sys.executable, ["--resume"])})
    ranks_here.start(1, {0: {"RANK": 0, "WORLD_SIZE": 2}, 1: {"RANK": 1, "WORLD_SIZE": 2}}, "restart 1/2 after x")
    assert all(isinstance(ranks_here.pgid[r], int) for r in (0, 1))
    assert ranks_here.pgid[0] == int((tmp_path / "rank0.pid").read_text())
    deadline = time.monotonic() + 30
    while len(ranks_here.exits) < 2 and time.monotonic() < deadline:
        ranks_here.poll()
        time.sleep(0.05)
    assert {r: code for r, (code, _) in ranks_here.exits.items()} == {0: 0, 1: 0}
    assert (tmp_path / "rank1.log").read_text() == ("--- distctl: restart 1/2 after x ---\n"
                                                    "rank=1 world=2 attempt=1 args=--resume\n")


def test_launched_reads_the_pgids_a_launch_or_restart_step_printed():
    text = "launched rank=0 pgid=41\nnoise\nlaunched rank=3 pgid=57\nlaunched agent pgid=60\nlaunched rank=x pgid=1\n"
    assert agent.launched(text) == [(0, 41), (3, 57)]


# ------------------------------------------------------------------ on the cluster

def flaky(cluster, tmp_path, hosts=("node1", "node2"), **job):
    code = tmp_path / "project"
    code.mkdir(exist_ok=True)
    (code / "prog.py").write_text(FLAKY)
    return write_inventory(tmp_path / "inv.yaml", cluster, hosts, code="project", command="python prog.py",
                           wait_for_rank0=False, **job)


def host_file(cluster, host: str, run_id: str, name: str) -> str:
    h = cluster.host(host)
    return h.run(f"cat {h.workdir}/runs/{run_id}/{name} 2>/dev/null").stdout


@pytest.mark.cluster
def test_a_failed_rank_restarts_every_rank_and_the_run_succeeds(cluster, tmp_path):
    inv = flaky(cluster, tmp_path, max_restarts=2)
    up = distctl("up", str(inv), cwd=tmp_path, timeout=180)
    assert up.returncode == 0, up.stderr
    assert "restart 1/2 after node2 r1 exited 7" in up.stderr
    assert re.search(r"run \S+ finished: 2 rank\(s\) exited 0, after 1 restart\(s\)", up.stderr), up.stderr
    run_id = last_run_id(tmp_path)
    log = host_file(cluster, "node2", run_id, "rank1.log")
    assert log.splitlines() == ["attempt=0 rank=1 world=2", "--- distctl: restart 1/2 after node2 r1 exited 7 ---",
                                "attempt=1 rank=1 world=2"]
    assert not any(run_pids(cluster, run_id).values())
    status = distctl("status", "--json", cwd=tmp_path)
    restarts = json.loads(status.stdout)["restarts"]
    assert restarts == {"attempt": 1, "max_restarts": 2, "restarts": ["node2 r1 exited 7"], "dropped": [],
                        "outcome": "finished", "agents_gone": []}


@pytest.mark.cluster
def test_restarts_exhausted_exit_13_naming_the_failure(cluster, tmp_path):
    inv = flaky(cluster, tmp_path, max_restarts=1, env={"FAIL_UNTIL": "9"})
    up = distctl("up", str(inv), cwd=tmp_path, timeout=180)
    assert up.returncode == 13, up.stderr
    assert "restarts exhausted (1/1): node2 r1 exited 7" in up.stderr
    run_id = last_run_id(tmp_path)
    assert not any(run_pids(cluster, run_id).values())


@pytest.mark.cluster
def test_stop_wins_over_restarts_detached(cluster, tmp_path):
    inv = flaky(cluster, tmp_path, max_restarts=5, env={"HOLD": "300"})
    assert distctl("up", str(inv), "--detach", cwd=tmp_path).returncode == 0
    run_id = last_run_id(tmp_path)
    wait_for(lambda: "restart 1/5" in host_file(cluster, "node1", run_id, "agent.events"), 60, "the first restart")
    wait_for(lambda: "attempt=1" in host_file(cluster, "node2", run_id, "rank1.log"), 60, "attempt 1 to run")
    stop = distctl("stop", cwd=tmp_path)
    assert stop.returncode == 0, stop.stderr
    # The agents carry the run's marker: none left means nothing can restart.
    assert not any(run_pids(cluster, run_id).values())
    assert "restart 2/5" not in host_file(cluster, "node1", run_id, "agent.events")


# ------------------------------------------------------------------ the bundled trainer

TRAIN = dict(epochs=6)  # about 3 s an epoch here: time to kill a rank after its second


def trainer_pid(cluster, host: str, run_id: str, rank: int) -> int | None:
    """The trainer process (not its sh wrapper) of one rank."""
    for pid in cluster.host(host).pids_with_env(f"DISTCTL_RUN_ID={run_id}"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if b"trainer" in argv and f"RANK={rank}".encode() in env:
            return pid
    return None


def kill_rank1_after_an_epoch(cluster, run_id: str) -> None:
    wait_for(lambda: re.search(r"^epoch=2 ", host_file(cluster, "node2", run_id, "rank1.log"), re.M), 120,
             "rank 1 to finish its second epoch")
    os.kill(trainer_pid(cluster, "node2", run_id, 1), signal.SIGKILL)


@pytest.fixture(scope="module")
def uninterrupted(cluster, small_mnist, tmp_path_factory) -> str:
    where = tmp_path_factory.mktemp("uninterrupted")
    inv = write_inventory(where / "inv.yaml", cluster, ["node1", "node2"], data=str(small_mnist), **TRAIN)
    up = distctl("up", str(inv), cwd=where)
    assert up.returncode == 0, up.stderr
    found = digests(up.stdout)
    assert found[0] == found[1]
    return found[0]


@pytest.mark.cluster
def test_trainer_rank_killed_attached_restarts_from_the_checkpoint_exactly(cluster, small_mnist, tmp_path,
                                                                           uninterrupted):
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], data=str(small_mnist),
                          max_restarts=2, **TRAIN)
    up = start_distctl("up", str(inv), cwd=tmp_path)
    try:
        run_id = wait_for(lambda: last_run_id(tmp_path), 60, "the run to start")
        kill_rank1_after_an_epoch(cluster, run_id)
        out, err = up.communicate(timeout=240)
    finally:
        kill_tree(up)
    assert up.returncode == 0, err
    assert "restart 1/2 after node2 r1 exited 137" in err
    assert re.search(r"^\[node2 r1\] resume rank=1 checkpoint=\S+/latest\.pt epoch=[2-5] step=0$", out, re.M), out
    assert digests(out) == {0: uninterrupted, 1: uninterrupted}
    # the checkpoint is kept on every host
    for host in ("node1", "node2"):
        assert "latest.pt" in cluster.host(host).run(
            f"ls {cluster.host(host).workdir}/runs/{run_id}/ckpt").stdout


@pytest.mark.cluster
def test_trainer_rank_killed_detached_restarts_without_the_workstation(cluster, small_mnist, tmp_path,
                                                                       uninterrupted):
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], data=str(small_mnist),
                          max_restarts=2, **TRAIN)
    assert distctl("up", str(inv), "--detach", cwd=tmp_path).returncode == 0
    run_id = last_run_id(tmp_path)
    kill_rank1_after_an_epoch(cluster, run_id)
    wait_for(lambda: not any(run_pids(cluster, run_id).values()), 240, "the run to end")
    logs = distctl("logs", cwd=tmp_path)
    assert "[node2 r1] --- distctl: restart 1/2 after node2 r1 exited 137 ---" in logs.stdout
    assert digests(logs.stdout) == {0: uninterrupted, 1: uninterrupted}
    status = json.loads(distctl("status", "--json", cwd=tmp_path).stdout)
    assert [r["exit_code"] for r in status["ranks"]] == [0, 0]
    assert status["restarts"]["attempt"] == 1 and status["restarts"]["outcome"] == "finished"


@pytest.mark.cluster
def test_a_host_lost_for_good_is_dropped_and_the_run_finishes_on_the_others(cluster, small_mnist, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2", "node3"], data=str(small_mnist),
                          max_restarts=1, min_hosts=2, lost_host_timeout=5, **TRAIN)
    up = start_distctl("up", str(inv), cwd=tmp_path)
    try:
        run_id = wait_for(lambda: last_run_id(tmp_path), 60, "the run to start")
        wait_for(lambda: re.search(r"^epoch=2 ", host_file(cluster, "node3", run_id, "rank2.log"), re.M), 120,
                 "rank 2 to finish its second epoch")
        cluster.crash("node3")  # the host is gone: no sshd, none of its processes
        out, err = up.communicate(timeout=300)
    finally:
        kill_tree(up)
        cluster.start_sshd("node3")
    assert up.returncode == 0, err
    assert "node3: dropped from the run; it goes on without it" in err
    assert re.search(r"restart 1/1 after node\d r\d exited 4; lost node3 \(silent for 5s\)", err), err
    assert re.search(r"finished: 2 rank\(s\) exited 0, after 1 restart\(s\); without node3 \(dropped\)", err), err
    assert "[node2 r1] joined rank=1 local_rank=0 world_size=2" in out
    found = digests(out)
    assert set(found) == {0, 1} and found[0] == found[1]
    assert not any(pids for host, pids in run_pids(cluster, run_id).items() if host != "node3")


# ------------------------------------------------------------------ an agent that dies

# Each rank says which attempt it is, then waits for the test to release it (a `go` file in the
# run directory): the test kills an agent while ranks are certainly still running.
GATED = """
import os, sys, time
rank, attempt = int(os.environ["RANK"]), int(os.environ["TORCHELASTIC_RESTART_COUNT"])
print("attempt=%d rank=%d" % (attempt, rank), flush=True)
if rank == 1 and attempt < int(os.environ.get("FAIL_UNTIL", "0")):
    sys.exit(7)
while not os.path.exists("../go"):
    time.sleep(0.1)
"""
LOST_AFTER = 3


def gated(cluster, tmp_path, monkeypatch, pause: dict[str, list[str]] | None = None, **env):
    """Two hosts, restarts left, small agent timers; `pause`: where an agent waits to be killed."""
    code = tmp_path / "project"
    code.mkdir(exist_ok=True)
    (code / "prog.py").write_text(GATED)
    monkeypatch.setenv("DISTCTL_TEST_AGENT", json.dumps({"heartbeat": 0.5, "silent": 3, "settle": 0.5,
                                                          "pause": pause or {}}))
    return write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], code="project",
                           command="python prog.py", wait_for_rank0=False, max_restarts=2,
                           lost_host_timeout=LOST_AFTER, env=env)


def kill_agent(cluster, host: str, run_id: str) -> None:
    """SIGKILL the host's agent (it leads its own process group); its ranks are left running."""
    os.kill(int(host_file(cluster, host, run_id, "agent.pid")), signal.SIGKILL)


def release(cluster, run_id: str) -> None:
    for host in ("node1", "node2"):
        h = cluster.host(host)
        h.run(f"touch {h.workdir}/runs/{run_id}/go", check=True)


def paused(cluster, host: str, run_id: str, moment: str) -> None:
    wait_for(lambda: moment in host_file(cluster, host, run_id, "agent.paused").split(), 120,
             f"{host}'s agent to pause at {moment}")


def ranks_started(cluster, run_id: str, attempt: int = 0) -> None:
    for host, rank in (("node1", 0), ("node2", 1)):
        line = f"attempt={attempt} rank={rank}"
        wait_for(lambda h=host, r=rank, t=line: t in host_file(cluster, h, run_id, f"rank{r}.log"),
                 120, f"rank {rank} to start")


def run_with_a_dead_agent(cluster, tmp_path, monkeypatch, kill: str, pause: str | None = None, **env):
    """up attached; `kill`'s agent is killed (at `pause`, or while both ranks run), then the ranks
    are released. Returns (up, stdout, stderr, run id) once up has ended, which it must."""
    inv = gated(cluster, tmp_path, monkeypatch, {kill: [pause]} if pause else None, **env)
    up = start_distctl("up", str(inv), cwd=tmp_path)
    try:
        run_id = wait_for(lambda: last_run_id(tmp_path), 60, "the run to start")
        if pause:
            paused(cluster, kill, run_id, pause)
        else:
            ranks_started(cluster, run_id)
            wait_for(lambda: "node2 connected" in host_file(cluster, "node1", run_id, "agent.log"), 60,
                     "node2's agent to reach the coordinator")
        kill_agent(cluster, kill, run_id)
        if not pause:  # the other agent saw it go, and the agent's death stopped nothing
            other = "node1" if kill == "node2" else "node2"
            wait_for(lambda: "lost contact with" in host_file(cluster, other, run_id, "agent.events"), 60,
                     f"{other}'s agent to miss {kill}'s")
            assert not host_file(cluster, "node1", run_id, "rank0.exit")
            assert not host_file(cluster, "node2", run_id, "rank1.exit")
        release(cluster, run_id)
        out, err = up.communicate(timeout=LOST_AFTER + 120)
    finally:
        kill_tree(up)
    assert not any(run_pids(cluster, run_id).values())
    return up, out, err, run_id


@pytest.mark.cluster
def test_a_member_agent_killed_while_ranks_train_the_run_ends_with_their_exit_codes(cluster, tmp_path,
                                                                                     monkeypatch):
    up, out, err, run_id = run_with_a_dead_agent(cluster, tmp_path, monkeypatch, "node2")
    assert up.returncode == 0, err
    assert (f"lost contact with the agent on node2: its ranks run on; the run waits up to {LOST_AFTER}s "
            "(job.lost_host_timeout) for it, then goes on without it") in err
    assert re.search(r"run \S+ finished: 2 rank\(s\) exited 0", err), err
    # status reports the dead agent and changes nothing
    status = json.loads(distctl("status", "--json", cwd=tmp_path).stdout)
    assert [r["exit_code"] for r in status["ranks"]] == [0, 0]
    assert status["restarts"]["agents_gone"] == ["node2"]
    text = distctl("status", cwd=tmp_path).stdout
    assert "node2: its restart agent is gone (killed?): its ranks run on, nothing restarts them there" in text
    assert not any(run_pids(cluster, run_id).values())


@pytest.mark.cluster
def test_the_coordinator_agent_killed_while_ranks_train_the_run_ends_with_their_exit_codes(cluster, tmp_path,
                                                                                          monkeypatch):
    up, out, err, _ = run_with_a_dead_agent(cluster, tmp_path, monkeypatch, "node1")
    assert up.returncode == 0, err
    assert ("lost contact with the coordinator agent on node1: the ranks on node2 run on; once they have exited, "
            f"the agent on node2 waits up to {LOST_AFTER}s (job.lost_host_timeout) for it, then ends") in err
    assert re.search(r"run \S+ finished: 2 rank\(s\) exited 0", err), err


@pytest.mark.cluster
@pytest.mark.parametrize("kill", ["node1", "node2"])
def test_an_agent_killed_during_a_restart_the_run_ends_with_the_ranks_exit_codes(cluster, tmp_path, monkeypatch,
                                                                                kill):
    up, out, err, _ = run_with_a_dead_agent(cluster, tmp_path, monkeypatch, kill, "restarting", FAIL_UNTIL="1")
    # up's teardown on the failure it now sees, or the coordinator giving up on the lost host first
    assert up.returncode in (1, 13), err
    assert "node2 r1 exited 7" in err
    assert "attempt=1" not in out


@pytest.mark.cluster
@pytest.mark.parametrize("kill", ["node1", "node2"])
def test_an_agent_killed_after_a_rank_failed_the_run_ends_with_the_ranks_exit_codes(cluster, tmp_path, monkeypatch,
                                                                                   kill):
    up, out, err, _ = run_with_a_dead_agent(cluster, tmp_path, monkeypatch, kill, "failed", FAIL_UNTIL="1")
    assert up.returncode == 1, err
    assert "rank 1 on node2 failed first: exited with code 7" in err
    assert "attempt=1" not in out


@pytest.mark.cluster
def test_a_stranger_on_the_network_cannot_stop_restart_or_crash_the_run(cluster, tmp_path, monkeypatch):
    """Issue 24: plain sockets from the workstation's network to the agents' port: a forged stop,
    a lying hello, junk. None is heard; the run ends on its own, unrestarted."""
    from test_agent_channel import ATTACKS

    inv = gated(cluster, tmp_path, monkeypatch)
    up = start_distctl("up", str(inv), cwd=tmp_path)
    try:
        run_id = wait_for(lambda: last_run_id(tmp_path), 60, "the run to start")
        ranks_started(cluster, run_id)
        wait_for(lambda: "node2 connected" in host_file(cluster, "node1", run_id, "agent.log"), 60,
                 "node2's agent to reach the coordinator")
        port = yaml.safe_load(inv.read_text())["job"]["port"]
        for data in ATTACKS:
            s = socket.create_connection((cluster.host("node1").address, port + 1), timeout=10)
            try:
                s.sendall(data)
            except OSError:
                pass
            s.close()
        wait_for(lambda: host_file(cluster, "node1", run_id, "agent.log").count("dropped a connection from") >= 5,
                 60, "the coordinator to drop the strangers")
        release(cluster, run_id)
        out, err = up.communicate(timeout=120)
    finally:
        kill_tree(up)
    assert up.returncode == 0, err
    assert "restart" not in err and "stopped" not in err and "dropped from the run" not in err  # nor a host lost
    assert "bad or missing MAC" in host_file(cluster, "node1", run_id, "agent.log")
    # the secret is in the 0600 env file on the hosts, and nowhere in the workstation's record
    key = re.search(r"^distctl_agent_key=(\w+)$", host_file(cluster, "node1", run_id, "env"), re.M)
    assert key and key.group(1) == re.search(r"^distctl_agent_key=(\w+)$",
                                             host_file(cluster, "node2", run_id, "env"), re.M).group(1)
    state_dir = os.environ["DISTCTL_STATE_DIR"]
    for root, _, files in os.walk(state_dir):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                assert key.group(1).encode() not in f.read()
