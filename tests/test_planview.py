"""The readable dry run: programs named by size and digest, per-host steps as one template and a
table of values, exact strings; and the bound that keeps 16 hosts x 8 slots readable."""

from __future__ import annotations

import hashlib
import json
import re
import shlex

from orchestrator import hostside
from orchestrator.inventory.model import parse_inventory
from orchestrator.plan.model import Artifact, StepKind, plan_launch
from orchestrator.cli.planview import abbreviate_programs, host_values, program_mark, step_numbers, step_text, \
    values_table
from orchestrator.cli.render import render_plan
from orchestrator.cli.template import make_template, tokens

ARTIFACTS = (Artifact("code", "c0de" * 16, "/src/trainer"),)


def test_a_number_is_a_token_of_its_own():
    assert tokens("rank12.log 'x y'") == ["rank", "12", ".", "log", " ", "'", "x", " ", "y", "'"]


def test_texts_differing_in_values_become_one_template_that_fills_back_exactly():
    texts = ["cd /w/h01 && start 0 1 && GROUP_RANK=0", "cd /w/h02 && start 2 3 && GROUP_RANK=1"]
    named = [[("host", "h01"), ("R0", "0"), ("R1", "1"), ("group_rank", "0")],
             [("host", "h02"), ("R0", "2"), ("R1", "3"), ("group_rank", "1")]]
    found = make_template(texts, named, {"group_rank": ("GROUP_RANK=",)})
    assert found is not None
    assert found.text == "cd /w/{{host}} && start {{R0}} {{R1}} && GROUP_RANK={{group_rank}}"
    assert found.names == ("host", "R0", "R1", "group_rank")
    assert [found.fill(0), found.fill(1)] == texts
    assert values_table(found) == [["host", "R0..R1", "group_rank"], ["h01", "0..1", "0"], ["h02", "2..3", "1"]]


def test_a_difference_inside_a_value_widens_to_the_whole_value():
    """`h02` and `h03` differ in their number only; the hole is still the host's name."""
    found = make_template(["'<home of h02>/x'", "'<home of h03>/x'"], [[("host", "h02")], [("host", "h03")]])
    assert found is not None and found.text == "'<home of {{host}}>/x'"


def test_a_tie_between_a_rank_and_the_group_rank_goes_by_context():
    """Hosts of one rank each: rank and group rank are equal; GROUP_RANK= and "me": say which."""
    texts = ['RANK=0 GROUP_RANK=0 "me":0', 'RANK=1 GROUP_RANK=1 "me":1']
    named = [[("R0", str(i)), ("group_rank", str(i))] for i in range(2)]
    found = make_template(texts, named, {"group_rank": ("GROUP_RANK=", '"me":')})
    assert found is not None and found.text == 'RANK={{R0}} GROUP_RANK={{group_rank}} "me":{{group_rank}}'


def test_a_value_no_name_spells_is_numbered_and_texts_of_another_shape_are_not_alike():
    found = make_template(["push code to a", "push data to a"], [[], []])
    assert found is not None and found.text == "push {{v1}} to a" and found.values[1] == {"v1": "data"}
    assert make_template(["ranks 0", "ranks 1, 2"], [[], []]) is None


def test_step_numbers_show_a_run_as_a_range():
    assert [step_numbers([5]), step_numbers([2, 3, 4]), step_numbers([3, 5, 7])] == ["5", "2-4", "3, 5, 7"]


def test_a_program_is_named_by_size_and_digest_where_a_command_quotes_it():
    source = hostside.source("follow")
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    assert program_mark("follow") == f"<follow.py: {len(source.splitlines())} lines, sha256 {digest}>"
    command = f"cd /r || exit 1; python3 -c {shlex.quote(source)} follow -1 0:from"
    assert abbreviate_programs(command) == f"cd /r || exit 1; python3 -c {program_mark('follow')} follow -1 0:from"
    # the agent's config carries its restart command (and the detach program in it) as JSON, shell-quoted
    restart = f"d() {{ python3 -c {shlex.quote(hostside.source('detach'))} \"$@\"; }}"
    config = shlex.quote(json.dumps({"restart": restart, "me": 1}))
    assert abbreviate_programs(config) == shlex.quote(json.dumps(
        {"restart": "d() { python3 -c " + program_mark("detach") + " \"$@\"; }", "me": 1}))


def big_plan(max_restarts: int = 3):
    hosts = "\n".join(f"  - {{name: h{i:02d}, address: 10.0.0.{i}, slots: 8}}" for i in range(1, 17))
    inv = parse_inventory(f"hosts:\n{hosts}\njob: {{max_restarts: {max_restarts}}}\n", "inv.yaml")
    return plan_launch(inv, "mnist-1", ARTIFACTS)


def test_16_hosts_of_8_slots_with_restarts_read_in_at_most_400_lines():
    plan = big_plan()
    full, short = render_plan(plan, full=True), render_plan(plan)
    assert len(full.splitlines()) > 10_000  # the source of every program, per host and per step
    assert len(short.splitlines()) <= 400
    assert all(step.command in full for step in plan.steps)
    for name in ("follow", "detach", "agent", "wait_port"):
        assert hostside.source(name) not in short and program_mark(name) in short
    # every host's values are in a table: its name, its group rank and its ranks
    rows = {tuple(line[1:].split()) for line in short.splitlines() if re.match(r"#   h\d\d ", line)}
    for group_rank, hp in enumerate(plan.hosts):
        ranks = f"{hp.ranks[0].rank}..{hp.ranks[-1].rank}"
        assert (hp.host.name, ranks, str(group_rank)) in rows or group_rank == 0
        assert (hp.host.name, ranks) in rows


def test_every_template_of_the_16_host_plan_fills_back_to_the_steps_it_stands_for():
    plan = big_plan()
    for kind in StepKind:
        steps = [s for s in plan.steps if s.kind is kind and s.host != "h01"]
        if len(steps) < 2:
            continue
        texts = [abbreviate_programs(step_text(plan, s)) for s in steps]
        found = make_template(texts, [host_values(plan, plan.host_plan(s.host)) for s in steps])
        assert found is not None, kind
        assert [found.fill(i) for i in range(len(steps))] == texts
        assert "h02" not in found.text.replace('"name":"h02"', "")  # the host list of the agents is shared


def test_alike_hosts_read_as_templates_golden():
    """Three hosts of two slots with restarts: what the templates and tables look like."""
    from test_plan import check_golden

    hosts = "\n".join(f"  - {{name: gpu{i}, address: 10.0.0.{i}, slots: 2}}" for i in (1, 2, 3))
    inv = parse_inventory(f"defaults: {{python: /opt/py/bin/python}}\nhosts:\n{hosts}\n"
                          "job: {max_restarts: 2, port: 23456}\n", "inv.yaml")
    check_golden("plan-restarts-readable.txt", render_plan(plan_launch(inv, "mnist-1", ARTIFACTS)))


def test_ranks_that_are_not_a_run_of_local_ranks_get_a_column_each():
    found = make_template(["a 1 b 3", "a 5 b 7"], [[("R1", "1"), ("R3", "3")], [("R1", "5"), ("R3", "7")]])
    assert found is not None and values_table(found) == [["host", "R1", "R3"], ["", "1", "3"], ["", "5", "7"]]


def test_holes_inside_one_value_become_that_value_once():
    found = make_template(["cd /home/u1/r1 &&", "cd /home/u2/r2 &&"],
                          [[("rundir", "/home/u1/r1")], [("rundir", "/home/u2/r2")]])
    assert found is not None and (found.text, found.holes) == ("cd {{rundir}} &&", ("rundir",))
