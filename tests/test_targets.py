"""The seam for where a run runs (run/target.py): every command picks the target once, by the
inventory or by the recorded run, and a target refuses in one line what it cannot do."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_slurm_units import INVENTORY

from orchestrator.cli import commands
from orchestrator.cli.main import cli
from orchestrator.run.target import Target
from orchestrator.inventory.model import Host, Ssh, parse_inventory
from orchestrator.plan.state import HostState, RankState, RunState
from orchestrator.slurm.target import SlurmCluster

SLURM = INVENTORY.replace(", env: {TOKEN: {from_env: MY_TOKEN}}", "")
FLEET = "hosts:\n  - {name: node1, address: 10.0.0.1}\njob: {name: mnist}\n"


def a_run() -> RunState:
    hosts = (HostState(Host(name="node1", address="10.0.0.1"), "/w/runs/r-1", (RankState(0, 0),)),)
    return RunState("r-1", "/p/inv.yaml", Ssh(), 1, "10.0.0.1", 29500, hosts)


def test_a_recorded_run_picks_the_target_of_status_stop_and_logs():
    assert isinstance(commands.target_of(a_run()), commands.SshFleet)  # no "slurm" block in its record


def test_the_inventory_picks_the_target_of_up_check_and_the_dry_run():
    assert isinstance(commands.target_for(parse_inventory(SLURM, "inv.yaml")), SlurmCluster)
    assert isinstance(commands.target_for(parse_inventory(FLEET, "inv.yaml")), commands.SshFleet)


@pytest.mark.parametrize("target", [commands.SshFleet, SlurmCluster])
def test_each_target_answers_every_call_of_the_seam_with_its_parameters(target):
    """mypy checks the types; this checks that no call of the seam was left out or renamed."""
    for name, method in inspect.getmembers(Target, inspect.isfunction):
        if name.startswith("_"):
            continue
        want = [p for p in inspect.signature(method).parameters if p != "self"]
        got = [p for p in inspect.signature(getattr(target(), name)).parameters if p != "self"]
        assert got == want, f"{target.__name__}.{name}"


@pytest.mark.parametrize("args, what", [
    (["check", "inv.yaml", "--net"], "check --net"),
    (["up", "inv.yaml", "--web"], "up --web"),
])
def test_what_slurm_cannot_do_is_refused_in_one_line_before_anything_connects(tmp_path, monkeypatch, args, what):
    monkeypatch.chdir(tmp_path)
    Path("inv.yaml").write_text(SLURM.replace("hpc-login", "login.invalid"))
    monkeypatch.setattr("orchestrator.web.command.UpWeb", lambda *a, **k: type("V", (), {
        "launched": lambda self, state: None, "close": lambda self: None})())
    done = CliRunner().invoke(cli, ["--no-color", *args])
    assert done.exit_code == 2, done.output
    assert done.stderr.strip().splitlines() == [
        f"distctl: error: {what} does not apply to a Slurm run (see the README, \"On a Slurm cluster\")"]


def test_logs_grep_on_a_slurm_run_is_refused_by_the_slurm_target():
    from orchestrator.run.target import LogRequest
    from orchestrator.errors import DistctlError

    with pytest.raises(DistctlError, match=r"^logs --grep and --collapse does not apply to a Slurm run") as err:
        SlurmCluster().logs(a_run(), commands.Options(), None, LogRequest(grep="x"))  # type: ignore[arg-type]
    assert err.value.exit_code == 2
