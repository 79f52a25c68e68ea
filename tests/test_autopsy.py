"""Culprit and collateral for an attached `up` (orchestrator/run/autopsy.py): the pure rules, then on
the cluster a torch-free rank that raises while the others block, and the hard case with gloo:
a rank stuck outside the collective while the others' all_reduce times out."""

from __future__ import annotations

import re

import pytest

from orchestrator.run.autopsy import collateral, culprit, from_records, looks_collateral
from orchestrator.run.stacks import Frame, Process, RankDump, Thread

from e2e import distctl, last_run_id, write_inventory

GLOO_TIMEOUT = ["RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Timed out waiting 5000ms"]
RESET = ["RuntimeError: [/gloo/transport/tcp/pair.cc:598] Connection closed by peer [10.0.0.2]:1234"]


def dump(rank: int, frames: list[tuple[str, int, str]]) -> RankDump:
    thread = Thread(1, tuple(Frame(*f) for f in frames))
    return RankDump("node2", rank, "/w/work/", (Process(10, 1, "python", 1, (thread,)),))


def test_peer_lost_and_timeout_lines_are_collateral():
    assert looks_collateral(GLOO_TIMEOUT) and looks_collateral(RESET)
    assert not looks_collateral(["ValueError: bad batch"])


def test_the_first_failure_that_is_not_collateral_is_the_culprit():
    tails = {0: RESET, 1: ["ValueError: bad batch"], 2: RESET}
    assert culprit([0, 1, 2], tails, []) == (1, "failed first")
    assert collateral([0, 1, 2], 1, tails, {}) == [0, 2]


def test_when_every_failure_timed_out_the_rank_that_never_arrived_is_the_culprit():
    stuck = dump(1, [("/w/work/data.py", 40, "load_batch"), ("/w/work/train.py", 80, "main")])
    assert culprit([0, 2], {0: GLOO_TIMEOUT, 2: GLOO_TIMEOUT}, [stuck]) == (
        1, "never arrived: still running, in load_batch (data.py:40), while the others' collective failed")


HOSTS = {0: "node1", 1: "node1", 2: "node2"}


def test_status_names_the_first_real_failure_and_its_consequences_from_the_records():
    """A detached run: no attached up took stacks; the exits, last lines and the watchers' stacks."""
    waiting = dump(0, [("/w/work/train.py", 88, "step")])
    lines = from_records([1, 2, 0], {1: ["ValueError: bad batch"], 2: RESET, 0: ["killed"]}, [waiting], [],
                         {1: 10.0, 2: 11.0, 0: 20.0}, HOSTS)
    assert lines == ["ranks 0,2 (node1, node2) died only as a consequence (a lost peer or a timed-out collective, "
                     "or an exit after the culprit's)",
                     "the other ranks on the hosts of the failures, when they failed: rank 0 on node2 is in step "
                     "(train.py:88)"]


def test_status_says_which_ranks_a_watcher_stopped_rather_than_calling_them_consequences():
    lines = from_records([1], {1: ["ValueError: bad batch"]}, [], [], {1: 10.0}, HOSTS, watched=[0])
    assert lines == ["rank 0: stopped by the watcher of their host (node1) after that failure"]


def test_status_takes_the_lone_rank_still_running_for_the_one_that_never_arrived():
    lines = from_records([0, 2], {0: GLOO_TIMEOUT, 2: GLOO_TIMEOUT}, [], [1], {0: 10.0, 2: 10.5}, HOSTS)
    assert lines[0] == ("culprit: rank 1 on node1 never arrived: still running while the others' collective "
                        "failed (distctl stacks --rank 1 shows where)")
    assert lines[1].startswith("ranks 0,2 (node1, node2) died only as a consequence")
    # two ranks still running: nobody can be named that way
    assert not from_records([0, 2], {0: GLOO_TIMEOUT, 2: GLOO_TIMEOUT}, [], [1, 3], {}, HOSTS)[0].startswith(
        "culprit")


RAISES = """import os, socket, time
def wait_for_peers(sock):
    return sock.recv(1)
if os.environ["RANK"] == "1":
    time.sleep(5)
    raise ValueError("bad batch")
print("waiting", flush=True)
peer, us = socket.socketpair()
wait_for_peers(us)
"""


@pytest.mark.cluster
def test_a_failed_rank_is_named_with_what_the_others_were_doing(cluster, tmp_path):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "prog.py").write_text(RAISES)
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], slots=2, code="project",
                          command="python prog.py", wait_for_rank0=False)
    up = distctl("up", str(inv), cwd=tmp_path)
    assert up.returncode == 1, up.stderr
    line = next(x for x in up.stderr.splitlines() if "the ranks still running:" in x)
    assert line.endswith("ranks 0,2-3 are in wait_for_peers (prog.py:3)"), line
    assert "rank 1 on node1 failed first: exited with code 1" in up.stderr
    assert "ranks 0,2-3: stopped by distctl's teardown" in up.stderr
    run_id = last_run_id(tmp_path)
    node1 = cluster.host("node1")
    kept = node1.run(f"cat {node1.workdir}/runs/{run_id}/autopsy.txt", check=True).stdout
    assert "rank 1 on node1 failed first" in kept and "stopped by distctl's teardown" in kept
    status = distctl("status", cwd=tmp_path)  # from any workstation: it is kept on rank 0's host
    assert "culprit and collateral, as up saw them:\n  rank 1 on node1 failed first" in status.stdout
    assert distctl("pull", cwd=tmp_path).returncode == 0
    assert (tmp_path / "runs" / run_id / "autopsy.txt").read_text() == kept


GLOO = """import datetime, os, time
import torch, torch.distributed as dist

def load_batch():
    time.sleep(600)

dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=8))
print("joined", flush=True)
if dist.get_rank() == 1:
    load_batch()
dist.all_reduce(torch.ones(1))
"""


@pytest.mark.cluster
def test_the_rank_that_never_arrived_is_the_culprit_when_the_others_time_out(cluster, tmp_path):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "prog.py").write_text(GLOO)
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], code="project",
                          command="python prog.py", host_extra={"node1": {"slots": 2}})
    up = distctl("up", str(inv), cwd=tmp_path)
    assert up.returncode == 1, up.stderr
    assert re.search(r"culprit: rank 1 on node1 never arrived: still running, in load_batch \(prog.py:5\)",
                     up.stderr), up.stderr
    assert re.search(r"ranks? (0|2|0,2) \(.*\) died only as a consequence", up.stderr), up.stderr
