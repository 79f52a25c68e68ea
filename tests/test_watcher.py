"""The agent of a run without restarts or a hang timeout: a watcher of its own host's ranks
(hostside/agent_policy.py, Watcher). Its decisions are tested with a clock in
tests/test_agent_policy.py; here, on the cluster, with a torch-free program: what it does for a
detached run, and that its death, at any moment, neither stops a rank nor holds a run open."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest

from e2e import distctl, kill_tree, last_run_id, run_pids, start_distctl, wait_for, write_inventory
from orchestrator.plan.model import AGENT_TEST_VARIABLE

# Each rank says it started, then waits for the test: rank FAIL (if any) exits 7 once a `fail`
# file is in the run directory, the others end once a `go` file is.
GATED = """
import os, sys, time
rank = int(os.environ["RANK"])
print("started rank=%d" % rank, flush=True)
failing = rank == int(os.environ.get("FAIL", "-1"))
while not os.path.exists("../fail" if failing else "../go"):
    time.sleep(0.1)
sys.exit(7 if failing else 0)
"""


def gated(cluster, tmp_path, monkeypatch, hosts=("node1", "node2"), slots=1, pause=None, **env):
    monkeypatch.setenv(AGENT_TEST_VARIABLE, json.dumps({"teardown": 1.0, "pause": pause or {}}))
    code = tmp_path / "project"
    code.mkdir(exist_ok=True)
    (code / "prog.py").write_text(GATED)
    return write_inventory(tmp_path / "inv.yaml", cluster, hosts, slots=slots, code="project",
                           command="python prog.py", wait_for_rank0=False, env=env)


def host_file(cluster, host: str, run_id: str, name: str) -> str:
    h = cluster.host(host)
    return h.run(f"cat {h.workdir}/runs/{run_id}/{name} 2>/dev/null").stdout


def release(cluster, run_id: str, hosts=("node1", "node2"), what: str = "go") -> None:
    for host in hosts:
        h = cluster.host(host)
        h.run(f"touch {h.workdir}/runs/{run_id}/{what}", check=True)


@pytest.mark.cluster
def test_a_detached_runs_watcher_stops_its_hosts_other_ranks_after_one_failed(cluster, tmp_path, monkeypatch):
    inv = gated(cluster, tmp_path, monkeypatch, hosts=("node1",), slots=2, FAIL="1")
    assert distctl("up", str(inv), "--detach", cwd=tmp_path).returncode == 0
    run_id = last_run_id(tmp_path)
    release(cluster, run_id, ("node1",), "fail")
    # rank 0 would wait for `go` forever; the watcher ends it 1 s (teardown) after rank 1 failed
    assert wait_for(lambda: host_file(cluster, "node1", run_id, "rank0.exit"), 60, "rank 0 stopped") == "143\n"
    state = wait_for(lambda: json.loads(host_file(cluster, "node1", run_id, "agent.state") or "{}").get("outcome"),
                     30, "the watcher's outcome")
    assert state == "failed: node1 r1 exited 7"
    assert "node1 r1 exited 7: stopping the other ranks here: r0" in host_file(cluster, "node1", run_id, "agent.log")
    assert not host_file(cluster, "node1", run_id, "agent.events")  # nothing for an attached up to relay
    wait_for(lambda: not any(run_pids(cluster, run_id).values()), 30, "every process of the run gone")
    status = distctl("status", cwd=tmp_path)
    assert status.returncode == 1 and f"run {run_id} failed" in status.stderr, status.stderr
    assert "[node1 r0] exited 143\n  [node1 r1] exited 7\n" in status.stdout
    assert "first failure: rank 1 on node1 exited with code 7" in status.stdout  # not the rank it stopped
    # no attached up analysed it: status does, from what the hosts kept (the watcher's stacks of rank 0)
    assert "culprit and collateral, from the hosts' records:\n" in status.stdout, status.stdout
    assert "  rank 0: stopped by the watcher of their host (node1) after that failure" in status.stdout
    assert "died only as a consequence" not in status.stdout  # it did not: its watcher stopped it
    assert re.search(r"the other ranks on the hosts of the failures, when they failed: rank 0 on node1 is in "
                     r"<module> \(prog.py:\d+\)", status.stdout), status.stdout
    assert "restart" not in status.stdout  # a watcher is not a restart agent: nothing said of it


def kill_agent(cluster, host: str, run_id: str) -> None:
    """SIGKILL the host's agent (it leads its own process group); its ranks are left running."""
    pid = wait_for(lambda: host_file(cluster, host, run_id, "agent.pid").strip(), 60, f"{host}'s agent")
    os.kill(int(pid), signal.SIGKILL)


@pytest.mark.cluster
@pytest.mark.parametrize("moment", ["running", "failed"])
def test_a_watcher_killed_at_any_moment_stops_no_rank_and_the_run_still_ends(cluster, tmp_path, monkeypatch,
                                                                           moment):
    """While the ranks run: they run on, and the run ends with their exit codes. Right after a
    rank failed (the test hook holds the watcher there): the attached up ends the run itself."""
    failing = moment == "failed"
    inv = gated(cluster, tmp_path, monkeypatch, pause={"node2": ["failed"]} if failing else None,
                **({"FAIL": "1"} if failing else {}))
    up = start_distctl("up", str(inv), cwd=tmp_path)
    try:
        run_id = wait_for(lambda: last_run_id(tmp_path), 60, "the run to start")
        for host, rank in (("node1", 0), ("node2", 1)):
            wait_for(lambda h=host, r=rank: f"started rank={r}" in host_file(cluster, h, run_id, f"rank{r}.log"),
                     60, f"rank {rank} to start")
        if failing:
            release(cluster, run_id, ("node2",), "fail")
            wait_for(lambda: "failed" in host_file(cluster, "node2", run_id, "agent.paused"), 60, "the pause")
        kill_agent(cluster, "node2", run_id)
        if not failing:
            assert not host_file(cluster, "node1", run_id, "rank0.exit")  # its death stopped no rank
        release(cluster, run_id)
        out, err = up.communicate(timeout=120)
    finally:
        kill_tree(up)
    if failing:
        assert up.returncode == 1, err
        assert "rank 1 on node2 failed first: exited with code 7" in err
    else:
        assert up.returncode == 0, err
        assert re.search(r"run \S+ finished: 2 rank\(s\) exited 0", err), err
    assert "agent" not in err  # a watcher's death is nothing an attached up reports
    assert not any(run_pids(cluster, run_id).values())


# Rank 0 (node1) fails as a timed-out collective does, once `fail` exists; rank 1 (node2) never
# gets there: it is stuck in a function of its own.
NEVER_ARRIVES = """
import os, sys, time
def stuck():
    while True:
        time.sleep(0.1)
print("started rank=%s" % os.environ["RANK"], flush=True)
if os.environ["RANK"] == "1":
    stuck()
while not os.path.exists("../fail"):
    time.sleep(0.1)
print("RuntimeError: [gloo/transport/tcp/pair.cc:534] Timed out waiting 5000ms for recv", flush=True)
sys.exit(1)
"""


@pytest.mark.cluster
def test_status_of_a_detached_run_names_the_rank_that_never_arrived(cluster, tmp_path, monkeypatch):
    inv = gated(cluster, tmp_path, monkeypatch)
    (tmp_path / "project" / "prog.py").write_text(NEVER_ARRIVES)
    assert distctl("up", str(inv), "--detach", cwd=tmp_path).returncode == 0
    run_id = last_run_id(tmp_path)
    wait_for(lambda: "started rank=1" in host_file(cluster, "node2", run_id, "rank1.log"), 60, "rank 1")
    release(cluster, run_id, ("node1",), "fail")
    wait_for(lambda: host_file(cluster, "node1", run_id, "rank0.exit"), 60, "rank 0's exit")
    try:
        status = distctl("status", cwd=tmp_path)
        assert status.returncode == 0, status.stderr  # still running: rank 1 is
        assert ("culprit: rank 1 on node2 never arrived: still running while the others' collective failed "
                "(distctl stacks --rank 1 shows where)") in status.stdout, status.stdout
    finally:
        assert distctl("stop", cwd=tmp_path).returncode == 0
    assert not any(run_pids(cluster, run_id).values())
