"""The plan as data: golden renderings and the rules that shape it."""

import json
import os
import shlex
from pathlib import Path

import pytest

from orchestrator.facts import parse_facts
from orchestrator.inventory import parse_inventory
from orchestrator.plan import Artifact, Network, StepKind, plan_launch
from orchestrator.render import render_plan

GOLDEN = Path(__file__).parent / "golden"
ARTIFACTS = (Artifact("code", "c0de" * 16, "/src/trainer"),)
INVENTORY = """
defaults: {user: root, python: /opt/py/bin/python}
hosts:
  - {name: node1, address: 10.213.0.11, slots: 2}
  - name: node2
    address: 10.213.0.12
    env: {NCCL_DEBUG: WARN, TOKEN: {from_env: MY_TOKEN}}
job: {name: mnist, port: 23456, train: {epochs: 2}}
"""


def inventory():
    return parse_inventory(INVENTORY, "inv.yaml", environ={"MY_TOKEN": "s3cret value"})


def facts(home="/root"):
    return {n: parse_facts(f"home={home}\nhostname={n}\ngpus=0\n") for n in ("node1", "node2")}


def check_golden(name, text):
    path = GOLDEN / name
    if os.environ.get("DISTCTL_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), "plan changed; review, then DISTCTL_UPDATE_GOLDEN=1 to accept"


def test_dry_run_plan_uses_named_placeholders():
    plan = plan_launch(inventory(), "mnist-1", ARTIFACTS)
    check_golden("plan-dry-run.txt", render_plan(plan))
    assert plan.init_method == "tcp://<ip of node1>:23456"


def test_resolved_plan_uses_discovered_ip_and_interfaces():
    plan = plan_launch(inventory(), "mnist-1", ARTIFACTS, facts(),
                       Network("10.213.0.11", {"node1": "eth0", "node2": "ens5"}))
    check_golden("plan-resolved.txt", render_plan(plan))
    env2 = {v.name: v.value for v in plan.host_plan("node2").env}
    assert env2["GLOO_SOCKET_IFNAME"] == env2["NCCL_SOCKET_IFNAME"] == "ens5"
    assert {v.name: v.value for v in plan.host_plan("node1").env}["GLOO_SOCKET_IFNAME"] == "eth0"


def test_host_order_is_rank_order():
    plan = plan_launch(inventory(), "r", ARTIFACTS, facts(), Network("10.213.0.11", {"node1": "a", "node2": "b"}))
    assert [(hp.host.name, [(r.rank, r.local_rank) for r in hp.ranks]) for hp in plan.hosts] == [
        ("node1", [(0, 0), (1, 1)]), ("node2", [(2, 0)])]
    assert plan.world_size == 3


def test_rank0_host_launches_first_and_waits_for_its_port():
    plan = plan_launch(inventory(), "r", ARTIFACTS, facts(), Network("10.213.0.11", {"node1": "a", "node2": "b"}))
    order = [(s.kind, s.host) for s in plan.steps if s.kind in (StepKind.LAUNCH, StepKind.WAIT_PORT)]
    assert order == [(StepKind.LAUNCH, "node1"), (StepKind.WAIT_PORT, "node1"), (StepKind.LAUNCH, "node2")]


def test_secrets_never_appear_in_the_rendered_plan():
    text = render_plan(plan_launch(inventory(), "r", ARTIFACTS))
    assert "s3cret" not in text and "export TOKEN='***'" in text


def test_user_env_overrides_distctl_defaults():
    inv = parse_inventory(INVENTORY.replace("NCCL_DEBUG: WARN", "GLOO_SOCKET_IFNAME: bond0"), "i",
                          environ={"MY_TOKEN": "x"})
    plan = plan_launch(inv, "r", ARTIFACTS, facts(), Network("10.213.0.11", {"node1": "a", "node2": "b"}))
    assert {v.name: v.value for v in plan.host_plan("node2").env}["GLOO_SOCKET_IFNAME"] == "bond0"


@pytest.mark.parametrize("workdir, home, expected", [
    ("~/.distctl", "/home/u", "/home/u/.distctl"),
    ("~", "/home/u", "/home/u"),
    ("/srv/w/", "/home/u", "/srv/w"),
])
def test_workdir_expands_the_hosts_own_home(workdir, home, expected):
    inv = parse_inventory(INVENTORY.replace("python: /opt/py/bin/python", f"workdir: '{workdir}'"), "i",
                          environ={"MY_TOKEN": "x"})
    plan = plan_launch(inv, "r", ARTIFACTS, facts(home), Network("1.2.3.4", {"node1": "a", "node2": "b"}))
    assert plan.host_plan("node1").rundir == f"{expected}/runs/r"


def test_trainer_arguments_are_quoted_words():
    inv = parse_inventory(INVENTORY.replace("/opt/py/bin/python", "'/opt/my py/python'"), "i",
                          environ={"MY_TOKEN": "x"})
    plan = plan_launch(inv, "r", ARTIFACTS, facts(), Network("10.213.0.11", {"node1": "a", "node2": "b"}))
    launch = next(s for s in plan.steps if s.kind is StepKind.LAUNCH)
    assert "'/opt/my py/python' -m trainer" in launch.command
    # every generated script is valid shell
    for step in plan.steps:
        shlex.split(step.command.replace("\n", " ; "), comments=False)


def test_the_plan_is_the_run_it_records(tmp_path):
    """One run model: `up` records the plan itself, and the record reads back as its RunState part
    (launch detail and every env left out: env may hold secrets)."""
    import dataclasses

    from orchestrator.state import HostState, RankState, RunState, load_run, save_run

    inv = inventory()
    plan = plan_launch(inv, "mnist-1", ARTIFACTS, facts(), Network("10.213.0.11", {"node1": "eth0", "node2": "ens5"}))
    save_run(plan, tmp_path)
    path = tmp_path / "runs" / "mnist-1.json"
    text = path.read_text()
    assert [w for w in ("s3cret value", "DISTCTL_CODE", '"steps"', '"argv"') if w in text] == []
    assert json.loads(text)["master"] == "10.213.0.11"  # the key an older distctl reads
    loaded = load_run(path)
    assert type(loaded) is RunState and all(type(h) is HostState for h in loaded.hosts)
    assert [h.python for h in loaded.hosts] == [hp.python for hp in plan.hosts]
    assert [h.ranks for h in loaded.hosts] == [tuple(RankState(r.rank, r.local_rank) for r in hp.ranks)
                                               for hp in plan.hosts]
    same = ("run_id", "world_size", "master_addr", "port", "trainer", "outputs", "max_restarts")
    assert {f: getattr(loaded, f) for f in same} == {f: getattr(plan, f) for f in same}
    assert loaded.init_method == plan.init_method == "tcp://10.213.0.11:23456"
    assert {f.name for f in dataclasses.fields(RunState)} < {f.name for f in dataclasses.fields(type(plan))}


def test_up_runs_exactly_the_commands_the_plan_renders(tmp_path):
    """TorchX's rule: what `up` executes is the dry run's plan, step for step, host by host."""
    from support.fakes import FakeConnection, FakeStream, RecordingUi, exited

    from orchestrator import execute
    from orchestrator.watch import watch_run

    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("print('hi')\n")
    inv = inventory()
    plan = plan_launch(inv, "mnist-1", (Artifact("code", "c0de" * 16, str(code)),), facts(),
                       Network("10.213.0.11", {"node1": "eth0", "node2": "ens5"}))
    conns = {hp.host.name: FakeConnection(hp.host.name, streams=[
        FakeStream(*(exited(r.rank, 0, 1.0) for r in hp.ranks))]) for hp in plan.hosts}
    prepared = execute.prepare(plan, conns, 4)
    execute.push(plan, conns, prepared, 4)
    execute.launch(plan, conns, 4, RecordingUi())
    outcome = watch_run(plan, dict(conns), RecordingUi(), 60, after_prepare=True)
    assert outcome.message == "run mnist-1 finished: 3 rank(s) exited 0"
    executed = {name: c.commands + c.opened for name, c in conns.items()}
    assert executed == {name: [s.command for s in plan.steps if s.host == name] for name in conns}
    assert [s.kind for s in plan.steps if s.host == "node1"] == [
        StepKind.PREPARE, StepKind.PUSH, StepKind.LAUNCH, StepKind.WAIT_PORT, StepKind.STREAM]
