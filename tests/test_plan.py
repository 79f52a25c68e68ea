"""The plan as data: golden renderings and the rules that shape it."""

import json
import os
import shlex
from pathlib import Path

import pytest

from orchestrator.plan.facts import parse_facts
from orchestrator.inventory.model import parse_inventory
from orchestrator.plan.model import Artifact, Network, StepKind, plan_launch
from orchestrator.cli.render import render_plan

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
    check_golden("plan-dry-run.txt", render_plan(plan, full=True))
    check_golden("plan-dry-run-readable.txt", render_plan(plan))
    assert plan.init_method == "tcp://<ip of node1>:23456"


def test_resolved_plan_uses_discovered_ip_and_interfaces():
    plan = plan_launch(inventory(), "mnist-1", ARTIFACTS, facts(),
                       Network("10.213.0.11", {"node1": "eth0", "node2": "ens5"}))
    check_golden("plan-resolved.txt", render_plan(plan, full=True))
    check_golden("plan-resolved-readable.txt", render_plan(plan))
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

    from orchestrator.plan.state import HostState, RankState, RunState, load_run, save_run

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
    """TorchX's rule: what `up` executes is the dry run's plan, step for step, host by host; a
    run-time step (a lost link's re-follow) runs as the plan shows it, its placeholder filled."""
    from support.fakes import FakeConnection, FakeStream, RecordingUi, exited, said

    from orchestrator.launch import execute
    from orchestrator.plan.scripts import fill_shown
    from orchestrator.run.watch import watch_run

    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("print('hi')\n")
    inv = inventory()
    plan = plan_launch(inv, "mnist-1", (Artifact("code", "c0de" * 16, str(code)),), facts(),
                       Network("10.213.0.11", {"node1": "eth0", "node2": "ens5"}))
    conns = {"node1": FakeConnection("node1", streams=[FakeStream(exited(0, 0, 1.0), exited(1, 0, 1.0))]),
             # node2's link drops after one line: the follower is opened again from there
             "node2": FakeConnection("node2", streams=[FakeStream(b"at 2 7\n", said(2, "hello")),
                                                       FakeStream(exited(2, 0, 1.0))])}
    prepared: dict = {}
    for steps in plan.phases():  # as `up` walks them, a phase at a time
        kind = steps[0].kind
        if kind is StepKind.PREPARE:
            prepared = execute.prepare(plan, conns, 4, steps)
        elif kind is StepKind.PUSH:
            execute.push(plan, conns, prepared, 4, steps)
        elif kind is StepKind.LAUNCH:
            execute.launch(conns, steps, 4)
        elif kind is StepKind.WAIT_PORT:
            execute.wait_port(plan, conns, steps[0])
        else:
            assert kind is StepKind.STREAM
            outcome = watch_run(plan, dict(conns), RecordingUi(), 60, after_prepare=True)
    assert outcome.message == "run mnist-1 finished: 3 rank(s) exited 0"
    executed = {name: c.commands + c.opened for name, c in conns.items()}
    in_order = {name: [s.command for s in plan.steps if s.host == name and not s.when] for name in conns}
    refollow = next(s for s in plan.steps if s.kind is StepKind.REFOLLOW and s.host == "node2")
    assert refollow.when == "the link to node2 drops" and "<R:lines shown" in refollow.command
    assert executed == {"node1": in_order["node1"], "node2": in_order["node2"] + [fill_shown(refollow.command, {2: 8})]}
    shown = render_plan(plan, full=True)  # the dry run's --full text holds each command byte for byte
    assert all(f"\n{command}\n" in shown + "\n" for command in in_order["node1"] + in_order["node2"])
    assert [s.kind for s in plan.steps if s.host == "node1"] == [
        StepKind.PREPARE, StepKind.PUSH, StepKind.LAUNCH, StepKind.WAIT_PORT, StepKind.STREAM, StepKind.REFOLLOW]


def test_the_restart_agents_run_the_plans_restart_steps():
    """With job.max_restarts, each host's agent gets the plan's RESTART step for its host, verbatim
    (in the launch step's agent config), and the dry run shows when it runs."""
    import json
    import shlex

    from orchestrator.plan.model import agent_config

    inv = parse_inventory(INVENTORY.replace("train: {epochs: 2}", "train: {epochs: 2}, max_restarts: 2, "
                                            "min_hosts: 1, lost_host_timeout: 30"), "inv.yaml",
                          environ={"MY_TOKEN": "s3cret value"})
    plan = plan_launch(inv, "mnist-1", ARTIFACTS, facts(), Network("10.213.0.11", {"node1": "eth0", "node2": "ens5"}))
    restarts = [s for s in plan.steps if s.kind is StepKind.RESTART]
    assert [s.host for s in restarts] == ["node1", "node2"]
    assert restarts[0].when == ("a rank fails and fewer than 2 restart(s) were used; a host silent for 30s is "
                                "dropped, and the others' ranks renumbered, while 1 host(s) remain")
    for i, (hp, step) in enumerate(zip(plan.hosts, restarts)):
        cfg = agent_config(inv, plan.run_id, list(plan.hosts), i, plan.master_addr)
        assert cfg["restart"] == step.command
        launch = next(s for s in plan.steps if s.kind is StepKind.LAUNCH and s.host == hp.host.name)
        assert shlex.quote(json.dumps(cfg, separators=(",", ":"), sort_keys=True)) in launch.command
        assert [f"--resume distctl-rank{r.rank}" in step.command for r in hp.ranks] == [False] * len(hp.ranks)
        assert all(f"launched rank={r.rank} pgid=$pgid" in step.command for r in hp.ranks)
    assert "--resume" in restarts[1].command and "--resume" not in plan.host_plan("node2").ranks[0].argv
    shown = render_plan(plan)
    assert f"node1: when {restarts[0].when}: the host's agent writes" in shown
    assert shown.index("node2: when the link to node2 drops: reconnect") < shown.index("node1: when a rank fails")


def test_phases_say_what_runs_at_once():
    """Each phase's steps run on their hosts at once, phases in order; `when` steps have none."""
    network = Network("10.213.0.11", {"node1": "eth0", "node2": "ens5"})
    plan = plan_launch(inventory(), "r", ARTIFACTS, facts(), network)
    assert [(s.phase, s.kind.value, s.host) for s in plan.steps] == [
        (1, "prepare", "node1"), (1, "prepare", "node2"), (2, "push", "node1"), (2, "push", "node2"),
        (3, "launch", "node1"), (4, "wait-port", "node1"), (5, "launch", "node2"),
        (6, "stream", "node1"), (6, "stream", "node2"), (0, "refollow", "node1"), (0, "refollow", "node2")]
    together = parse_inventory(INVENTORY.replace("port: 23456", "port: 23456, wait_for_rank0: false"), "inv.yaml",
                               environ={"MY_TOKEN": "x"})
    launches = [s.phase for s in plan_launch(together, "r", ARTIFACTS, facts(), network).steps
                if s.kind is StepKind.LAUNCH]
    assert launches == [3, 3]
    assert [[(s.kind.value, s.host) for s in steps] for steps in plan.phases()] == [
        [("prepare", "node1"), ("prepare", "node2")], [("push", "node1"), ("push", "node2")], [("launch", "node1")],
        [("wait-port", "node1")], [("launch", "node2")], [("stream", "node1"), ("stream", "node2")]]
