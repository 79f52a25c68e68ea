"""What the user reads, from data alone: the text render.py makes for check, status, pull, up and stop,
asserted exactly (the CLI and cluster tests compare the same text end to end)."""

from __future__ import annotations

from dataclasses import replace

from orchestrator import render
from orchestrator.facts import Clock, parse_facts
from orchestrator.inventory import parse_inventory
from orchestrator.plan import Artifact, Network, plan_launch

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
