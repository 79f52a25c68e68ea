"""`distctl init`: the hostfile formats it claims (DeepSpeed/OpenMPI `host slots=N [max_slots=M]`,
MPICH `host:N`), its --user/--port/--identity-file/--python/--workdir flags, and an inventory
that loads and does not opt into training on generated digits."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from orchestrator.cli.main import cli
from orchestrator.errors import InventoryError
from orchestrator.inventory.model import parse_inventory
from orchestrator.inventory.init import Defaults, HostEntry, host_entries, parse_hostfile, render_inventory

HOSTFILES = [
    ("deepspeed", "worker-1 slots=4\nworker-2 slots=2\n", [("worker-1", 4), ("worker-2", 2)]),
    ("openmpi max_slots (checked, not used)", "node1 slots=2 max_slots=4\nnode2 max_slots=8\n",
     [("node1", 2), ("node2", None)]),
    ("openmpi max-slots spelling", "node1 slots=2 max-slots=2\n", [("node1", 2)]),
    ("mpich host:N is slots, not a port", "node1:4\nnode2:1\n", [("node1", 4), ("node2", 1)]),
    ("bare hosts", "a\nb\n", [("a", None), ("b", None)]),
    ("comments, blank lines, tabs, spaces around =",
     "# cluster A\n\n  a\tslots = 2   # big one\n\t\nb slots=1#small\n", [("a", 2), ("b", 1)]),
    ("user@host", "ubuntu@a slots=2\nroot@b:3\n", [("ubuntu@a", 2), ("root@b", 3)]),
    ("ip addresses", "10.0.0.1 slots=2\n10.0.0.2:2\n[fd00::3]:2\nfd00::4\n",
     [("10.0.0.1", 2), ("10.0.0.2", 2), ("fd00::3", 2), ("fd00::4", None)]),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in HOSTFILES], ids=[c[0] for c in HOSTFILES])
def test_hostfile_formats(text, expected):
    assert parse_hostfile(text, "hf") == [HostEntry(a, s) for a, s in expected]


BAD_HOSTFILES = [
    ("slots not a number", "good slots=1\nbad slots=x\n", "hf:2: slots must be a whole number from 1 to 1024, got 'x'"),
    ("slots zero", "a slots=0\n", "hf:1: slots must be a whole number from 1 to 1024, got '0'"),
    ("too many slots", "a slots=5000\n", "hf:1: slots must be a whole number from 1 to 1024, got '5000'"),
    ("mpich not a number", "a:ssh\n", "hf:1: the number after ':' (slots) must be a whole number from 1 to 1024, "
                                      "got 'ssh'"),
    ("slots above max_slots", "a slots=4 max_slots=2\n", "hf:1: slots=4 is more than max_slots=2"),
    ("unknown option", "a slots=2 gpus=2\n",
     "hf:1: unknown option 'gpus' (hostfiles take slots=N and max_slots=M)"),
    ("slots twice", "a slots=2 slots=3\n", "hf:1: slots given twice"),
    ("slots both ways", "a:2 slots=2\n", "hf:1: slots given twice ('host:N' and 'slots='), in 'a:2 slots=2'"),
    ("stray word", "a b\n", "hf:1: expected 'host slots=N [max_slots=M]' or 'host:N', got 'a b'"),
    ("host twice", "a slots=1\n# x\nb\na:2\n", "hf:4: a is listed twice (first: hf:1); give it more slots instead"),
    ("empty", "# nothing\n\n", "hf:1: no hosts in the hostfile"),
    ("empty user", "@a\n", "hf:1: expected host, user@host or host:SLOTS, got '@a'"),
]


@pytest.mark.parametrize("text, message", [c[1:] for c in BAD_HOSTFILES], ids=[c[0] for c in BAD_HOSTFILES])
def test_bad_hostfile_lines_name_file_and_line(text, message):
    with pytest.raises(InventoryError) as err:
        parse_hostfile(text, "hf")
    assert str(err.value) == message


def test_hosts_on_the_command_line_take_the_same_forms():
    assert host_entries(["a", "b:2", "u@c:3"]) == [HostEntry("a"), HostEntry("b", 2), HostEntry("u@c", 3)]
    with pytest.raises(InventoryError) as err:
        host_entries(["a", "b:x"])
    assert str(err.value).startswith("host 'b:x': the number after ':' (slots)")


FLAGS = [
    ("none", Defaults(), {"user": None, "port": None, "identity_file": None, "python": "python3",
                          "workdir": "~/.distctl"}),
    ("all", Defaults("ubuntu", 2222, "~/.ssh/id_ed25519", "/opt/venv/bin/python", "/scratch/distctl"),
     {"user": "ubuntu", "port": 2222, "identity_file": "~/.ssh/id_ed25519", "python": "/opt/venv/bin/python",
      "workdir": "/scratch/distctl"}),
    ("values YAML would misread", Defaults("0123", None, "~/keys/my key #1", "yes", "/d: x"),
     {"user": "0123", "identity_file": "~/keys/my key #1", "python": "yes", "workdir": "/d: x"}),
]


@pytest.mark.parametrize("defaults, expected", [c[1:] for c in FLAGS], ids=[c[0] for c in FLAGS])
def test_the_written_inventory_loads_with_the_flags_applied(defaults, expected):
    entries = parse_hostfile("a slots=2\nroot@b:1\nc\n")
    inv = parse_inventory(render_inventory(entries, defaults), "inv.yaml", check_files=False)
    assert [(h.name, h.address, h.slots) for h in inv.hosts] == [("a", "a", 2), ("b", "b", 1), ("c", "c", None)]
    for key, value in expected.items():
        assert (getattr(inv.hosts[0], key), getattr(inv.hosts[2], key)) == (value, value), key
    assert inv.hosts[1].user == "root"  # a host's user@ wins over --user


def test_init_does_not_opt_into_generated_digits():
    text = render_inventory([HostEntry("a")])
    assert parse_inventory(text, "inv.yaml").job.fallback == "none"
    lines = text.splitlines()
    assert not [line for line in lines if line.strip().startswith("fallback:")]
    assert [line for line in lines if line.startswith("  # fallback: generated ")]  # said what it does


def test_cli_init_writes_flags_and_hostfile(tmp_path):
    (tmp_path / "hostfile").write_text("# MPICH\nworker-1:4\nworker-2:4\n")
    out = tmp_path / "inv.yaml"
    result = CliRunner().invoke(cli, ["init", "--hostfile", str(tmp_path / "hostfile"), "-o", str(out),
                                      "--user", "ubuntu", "--port", "2200", "--identity-file", "~/.ssh/k",
                                      "--python", "/venv/bin/python", "--workdir", "/data/d"])
    assert result.exit_code == 0, result.output
    inv = parse_inventory(out.read_text(), str(out), check_files=False)
    assert [(h.name, h.address, h.port, h.slots, h.user, h.identity_file, h.python, h.workdir) for h in inv.hosts] == [
        ("worker-1", "worker-1", 2200, 4, "ubuntu", "~/.ssh/k", "/venv/bin/python", "/data/d"),
        ("worker-2", "worker-2", 2200, 4, "ubuntu", "~/.ssh/k", "/venv/bin/python", "/data/d")]


def test_cli_init_bad_port_and_bad_hostfile_exit_2_in_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["init", "a", "--port", "0", "-o", str(tmp_path / "o.yaml")])
    assert result.exit_code == 2 and not (tmp_path / "o.yaml").exists()
    (tmp_path / "hf").write_text("a slots=2 max_slots=1\n")
    result = CliRunner().invoke(cli, ["init", "--hostfile", str(tmp_path / "hf"),
                                                      "-o", str(tmp_path / "o.yaml")])
    assert result.exit_code == 2
    assert result.stderr == f"distctl: error: {tmp_path / 'hf'}:1: slots=2 is more than max_slots=1\n"


def test_init_writes_a_user_programs_inventory_and_shows_the_keys_otherwise(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "project").mkdir()
    (tmp_path / "conf").mkdir()
    done = CliRunner().invoke(cli, ["init", "gpu1:2", "gpu2:2", "--code", "project",
                                    "--command", "python train.py --epochs 3", "-o", "conf/inv.yaml"])
    assert done.exit_code == 0, done.output
    inv = parse_inventory((tmp_path / "conf" / "inv.yaml").read_text(), str(tmp_path / "conf" / "inv.yaml"))
    assert inv.job.code == str(tmp_path / "project")  # relative to the inventory's folder: ../project
    assert inv.job.command == ("python", "train.py", "--epochs", "3")
    assert (inv.job.name, [h.slots for h in inv.hosts]) == ("project", [2, 2])
    assert "train:" not in (tmp_path / "conf" / "inv.yaml").read_text()  # no trainer settings for a program
    plain = render_inventory([HostEntry("gpu1", 1)])
    assert "  # code: .  " in plain and "  # command: python train.py  " in plain
