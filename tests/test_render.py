"""What the user reads, from data alone: the text render.py makes for check, status, pull, up and stop,
asserted exactly (the CLI and cluster tests compare the same text end to end)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from orchestrator.cli import render
from orchestrator.plan.facts import Clock, parse_facts
from orchestrator.inventory.model import Host, Ssh, parse_inventory
from orchestrator.run.lifecycle import RankStatus
from orchestrator.plan.model import Artifact, Network, plan_launch
from orchestrator.plan.state import HostState, RunState
from orchestrator.run.status import Progress, RankRow, RunStatus

INVENTORY = """
hosts:
  - {name: node1, address: 10.213.0.11, slots: 2}
  - {name: here, address: 127.0.0.1, connection: local}
job: {name: mnist, port: 23456}
"""


# ------------------------------------------------------------ check


def a_plan():
    inv = parse_inventory(INVENTORY, "inv.yaml")
    facts = {"node1": replace(parse_facts("home=/root\nhostname=n1\npython=3.11.2\ntorch=2.4.0\ngpus=2\n"),
                              clock=Clock(0.012, 0.034)),
             "here": parse_facts("home=/home/u\nhostname=ws\npython=3.12.1\ngpus=0\n")}
    plan = plan_launch(inv, "mnist-1", (Artifact("code", "c0de" * 16, "/src"),), facts,
                       Network("10.213.0.11", {"node1": "eth0", "here": "lo"}))
    return plan, facts


def test_check_names_each_host_its_ssh_chain_and_rank_0s_address():
    plan, facts = a_plan()
    asked = []

    def describe(host):
        asked.append(host.name)
        return f"root@{host.address}:22"

    assert render.check_lines(plan, facts, describe) == [
        "node1: hostname n1, python 3.11.2, torch 2.4.0, 2 GPU(s), interface eth0, clock +0.01 s (±0.03), "
        "ranks 0, 1",
        "node1: ssh root@10.213.0.11:22",
        "here: hostname ws, python 3.12.1, torch None, 0 GPU(s), interface lo, clock unknown, ranks 2",
        "rank 0 address: 10.213.0.11 (init method tcp://10.213.0.11:23456)",
    ]
    assert asked == ["node1"]  # a local host is reached without SSH: nothing to describe


def test_check_passed_says_where_the_plan_is_when_it_was_not_shown():
    assert render.check_passed(True) == "check passed: 'distctl up' would start"
    assert render.check_passed(False) == ("check passed: 'distctl up' would start "
                                          "(the commands it would run: --show-plan)")


# ------------------------------------------------------------ status


def a_status(rows, trainer=True, inventory="/p/my inv.yaml"):
    hosts = tuple(HostState(Host(name, "10.0.0.1"), "/w/runs/r-1", ()) for name in ("node1", "node2"))
    return RunStatus(RunState("r-1", inventory, Ssh(), 2, "10.0.0.1", 29500, hosts, trainer=trainer), rows)


RUNNING = RankRow("node1", RankStatus(0, "running"), progress=Progress(epoch=2))
UNREACHABLE = RankRow("node2", RankStatus(1, "unreachable"), "connection refused")


def test_status_rows_and_lines_hold_the_same_ranks():
    found = a_status([RUNNING, UNREACHABLE])
    assert render.status_rows(found) == [["node1", "0", "running", "2", "", ""],
                                         ["node2", "1", "unreachable", "", "", "connection refused"]]
    assert render.status_lines(found, lambda host, rank: f"<{host}/{rank}>") == [
        "run r-1",  # recorded without a start time: no elapsed either
        "  <node1/0> running, epoch 2",
        "  <node2/1> unreachable  (connection refused)",
    ]


def test_a_stopped_run_says_its_checkpoint_and_how_to_continue():
    rows = [RankRow(host, RankStatus(rank, "exited", 143), progress=Progress(2, stopped))
            for host, rank, stopped in (("node1", 0, 4), ("node2", 1, 3))]
    assert render.status_outcome(a_status(rows), None, str.upper) == [
        "stopped (checkpointed at epoch 3)",  # the earliest of the ranks' stops
        "continue it with: distctl up '/p/my inv.yaml' --resume"]
    unknown = [replace(r, progress=Progress(2)) for r in rows]
    assert render.status_outcome(a_status(unknown), None, str.upper)[0] == "stopped (no checkpoint reported)"


def test_the_first_failure_quotes_its_log_through_the_guard():
    rows = [RankRow("node1", RankStatus(0, "exited", 4)), RankRow("node2", RankStatus(1, "exited", 1))]
    failure = {"host": "node2", "rank": 1, "exit_code": 1, "log_tail": ["epoch=1 rank=1", "boom"]}
    assert render.status_outcome(a_status(rows), failure, str.upper) == [
        "first failure: rank 1 on node2 exited with code 1; last lines of its log:",
        "    EPOCH=1 RANK=1",
        "    BOOM"]
    assert render.status_outcome(a_status(rows), {**failure, "log_tail": []}, str.upper)[1:] == [""]


def test_a_running_or_finished_run_has_no_outcome_to_tell():
    assert render.status_outcome(a_status([RUNNING]), None, str.upper) == []
    stopped_user_program = [RankRow("node1", RankStatus(0, "exited", 143))]
    assert render.status_outcome(a_status(stopped_user_program, trainer=False), None, str.upper) == []


# ------------------------------------------------------------ pull


def test_pull_names_what_it_wrote_with_the_rank_logs_counted():
    written = ["model.pt", "rank0.log", "rank1.log", "metrics.jsonl", "metrics.png"]
    assert render.pull_done("r-1", Path("out/runs/r-1"), written) == (
        "pulled run r-1 into out/runs/r-1/: model.pt, 2 rank logs, metrics.jsonl, metrics.png")
    assert render.pull_files(["rank0.log"]) == "1 rank log"
    assert render.pull_files(["metrics.jsonl", "rank3.log"]) == "metrics.jsonl, 1 rank log"
    assert render.pull_files([]) == "nothing"
    assert render.pull_checkpoint("epoch 3 (end of epoch)") == "model.pt: epoch 3 (end of epoch)"


# ------------------------------------------------------------ up and stop


def test_up_names_the_run_and_how_to_reach_it_when_it_lets_go():
    plan, _ = a_plan()
    assert render.up_started(plan) == "run mnist-1 started: 3 rank(s), init method tcp://10.213.0.11:23456"
    assert render.up_detached("r-1") == ("detached from run r-1. Follow it: distctl logs -f r-1   "
                                         "Status: distctl status r-1   Stop it: distctl stop r-1")
    assert render.up_watch_interrupted("r-1") == ("detached; run r-1 goes on. Follow it: distctl logs -f r-1   "
                                                  "Stop it: distctl stop r-1")
    assert render.up_start_interrupted("r-1") == ("interrupted while starting run r-1: stopped what had started; "
                                                  "nothing runs")


def test_stop_reports_every_host_in_the_runs_order():
    state = a_status([]).state
    assert render.stop_lines(state, {"node1": "unreachable: connection refused"}) == [
        "node1: unreachable: connection refused", "node2: stopped"]
    assert render.stop_done("r-1") == "run r-1 stopped; no process of it is left on any host"


def test_check_json_is_versioned():
    import json

    plan, facts = a_plan()
    data = json.loads(render.plan_json(plan, facts))
    assert (data["format"], [h["interface"] for h in data["hosts"]]) == (1, ["eth0", "lo"])
    assert data["hosts"][0]["clock_offset_s"] == 0.012
