"""The CLI in-process: --dry-run connects to nothing, help everywhere, errors as exit codes."""

import re
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from orchestrator.ssh import remote
from orchestrator.cli.main import cli

INVENTORY = """
hosts:
  - {name: node1, address: 10.213.0.11, user: root}
  - {name: node2, address: node2.example, port: 2222}
job: {name: mnist, port: 23456}
"""


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to connect or to run a local command fails the test."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"dry run tried to connect: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(remote, "connect", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    return attempts


def test_dry_run_opens_no_connection(tmp_path, no_network):
    inv = tmp_path / "inventory.yaml"
    inv.write_text(INVENTORY)
    result = CliRunner().invoke(cli, ["up", str(inv), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert no_network == []
    assert "tcp://<ip of node1>:23456" in result.output
    assert "export RANK=1 LOCAL_RANK=0 ROLE_RANK=1;" in result.output and "export WORLD_SIZE=2" in result.output


def test_dry_run_of_the_shipped_inventory(no_network):
    result = CliRunner().invoke(cli, ["up", "inventory.yaml", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "tcp://127.0.0.1:29517" in result.output and "--fallback generated" in result.output


@pytest.mark.parametrize("command", [[], ["up"], ["check"], ["logs"], ["status"], ["stop"], ["init"], ["pull"],
                                     ["exec"], ["runs"], ["web"]])
def test_help_of_every_command_shows_an_example(command):
    result = CliRunner().invoke(cli, command + ["--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output


def test_missing_run_is_a_one_line_error(tmp_path, state_dir):
    done = subprocess.run([sys.executable, "-m", "orchestrator", "status"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 7
    assert done.stderr.strip().splitlines() == [
        f"distctl: error: no run started from this directory ({tmp_path}) in {state_dir}/runs; "
        "give a run id or an inventory (distctl runs lists them)"]


def test_init_from_a_hostfile_writes_an_inventory_that_loads(tmp_path):
    (tmp_path / "hostfile").write_text("# DeepSpeed hostfile\nworker-1 slots=4\nubuntu@worker-2 slots=2\n\n")
    out = tmp_path / "inv.yaml"
    result = CliRunner().invoke(cli, ["init", "--hostfile", str(tmp_path / "hostfile"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    from orchestrator.inventory.model import load_inventory

    inv = load_inventory(out)
    assert [(h.name, h.address, h.user, h.slots) for h in inv.hosts] == [
        ("worker-1", "worker-1", None, 4), ("worker-2", "worker-2", "ubuntu", 2)]


def test_init_refuses_to_overwrite_and_bad_hostfile_lines(tmp_path):
    out = tmp_path / "inv.yaml"
    out.write_text("keep me")
    result = CliRunner().invoke(cli, ["init", "a", "b", "-o", str(out)])
    assert result.exit_code == 2 and out.read_text() == "keep me"
    (tmp_path / "hf").write_text("good slots=1\nbad slots=x\n")
    result = CliRunner().invoke(cli, ["init", "--hostfile", str(tmp_path / "hf"), "-o", str(tmp_path / "o.yaml")])
    assert result.exit_code == 2


def test_detaching_is_exit_130_with_no_error_line(monkeypatch):
    """Ctrl-C while attached raises errors.Detached: the command has said what goes on; no error."""
    from orchestrator.cli import commands
    from orchestrator.errors import Detached

    def detached(*args):
        raise Detached("detached")

    monkeypatch.setattr(commands, "runs", detached)
    result = CliRunner().invoke(cli, ["runs"])
    assert (result.exit_code, result.output) == (130, "")


def test_a_user_programs_dry_run_names_the_run_by_its_script(tmp_path, no_network):
    inv = tmp_path / "inventory.yaml"
    inv.write_text(INVENTORY.replace("job: {name: mnist, port: 23456}",
                                     "job: {port: 23456, command: [python, train.py, --epochs, '3']}"))
    result = CliRunner().invoke(cli, ["up", str(inv), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert re.match(r"run train-\d{8}-\d{6}-[0-9a-f]{4}: ", result.output), result.output
