"""`distctl exec`: an ad-hoc command on every host, streamed with host prefixes, each host's
exit code at the end, words quoted (no injection), unreachable hosts reported."""

from __future__ import annotations

import select

import pytest
import yaml

from e2e import distctl, kill_tree, start_distctl, write_inventory
from support.fakes import RecordingUi
from orchestrator.run.adhoc import HostOutcome, command_for, report, select_hosts
from orchestrator.errors import DistctlError, ExitCode
from orchestrator.inventory.model import parse_inventory

INVENTORY = parse_inventory("""
defaults: {python: /opt/py/bin/python3}
hosts:
  - {name: a, address: 10.0.0.1}
  - {name: b, address: 10.0.0.2, python: /venv/bin/python}
job: {name: t}
""", "inv.yaml")


@pytest.mark.parametrize("argv, host, expected", [
    (["echo", "$(id)"], "a", "echo '$(id)'"),
    (["echo", "`id`; rm -rf ~"], "a", "echo '`id`; rm -rf ~'"),
    (["sh", "-c", "df -h | tail -n 1"], "a", "sh -c 'df -h | tail -n 1'"),
    (["python", "-m", "pip", "list"], "a", "/opt/py/bin/python3 -m pip list"),
    (["python", "-m", "pip", "list"], "b", "/venv/bin/python -m pip list"),
    (["python3", "-V"], "b", "python3 -V"),  # only the word `python` is the host's python
    (["echo", "python"], "b", "echo python"),
])
def test_command_for_quotes_every_word(argv, host, expected):
    assert command_for(next(h for h in INVENTORY.hosts if h.name == host), argv) == expected


def test_select_hosts_keeps_inventory_order_and_refuses_unknown_names():
    assert [h.name for h in select_hosts(INVENTORY, [])] == ["a", "b"]
    assert [h.name for h in select_hosts(INVENTORY, ["b", "a"])] == ["a", "b"]
    with pytest.raises(DistctlError) as err:
        select_hosts(INVENTORY, ["c"])
    assert err.value.exit_code == ExitCode.BAD_INPUT
    assert str(err.value) == "inv.yaml: no host 'c' (hosts: a, b)"


@pytest.mark.parametrize("outcomes, code, message", [
    ([HostOutcome("a", 0), HostOutcome("b", 0)], None, None),
    ([HostOutcome("a", 0), HostOutcome("b", 2)], ExitCode.EXEC_FAILED,
     "the command failed on 1 of 2 host(s): b (exit 2)"),
    ([HostOutcome("a", None), HostOutcome("b", 0)], ExitCode.EXEC_FAILED,
     "the command failed on 1 of 2 host(s): a (no exit status)"),
    ([HostOutcome("a", 0), HostOutcome("b", cause="connection to b:22 refused (is sshd running?)")],
     ExitCode.UNREACHABLE, "not run on b (could not connect)"),
    ([HostOutcome("a", 1), HostOutcome("b", cause="unknown host key", error_code=ExitCode.HOST_KEY)],
     ExitCode.HOST_KEY, "the command failed on 1 of 2 host(s): a (exit 1); not run on b (could not connect)"),
])
def test_report_names_every_host_and_picks_the_documented_code(outcomes, code, message):
    ui = RecordingUi()
    if code is None:
        report(outcomes, ui)
        assert ui.lines[-1] == ("info", "the command exited 0 on 2 host(s)")
    else:
        with pytest.raises(DistctlError) as err:
            report(outcomes, ui)
        assert (err.value.exit_code, str(err.value)) == (code, message)
    assert ui.lines[:len(outcomes)] == [("info" if o.ok else "warn", o.text()) for o in outcomes]


# ------------------------------------------------------------------------------ on the cluster


def _inventory(tmp_path, cluster, names, extra_hosts=()):
    path = write_inventory(tmp_path / "inv.yaml", cluster, names)
    data = yaml.safe_load(path.read_text())
    data["hosts"] += list(extra_hosts)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _where(cluster, name: str) -> str:
    """How sshd on `name` is reached: the end of $SSH_CONNECTION there."""
    h = cluster.host(name)
    return f"{h.address} {h.port}"


def test_a_failing_host_gives_exit_11_and_every_hosts_code(cluster, tmp_path):
    inv = _inventory(tmp_path, cluster, ["node1", "node2", "node3"])
    script = (f'echo "hello from $(hostname)"; case "$SSH_CONNECTION" in *" {_where(cluster, "node2")}") '
              'echo "failing here" >&2; exit 7;; esac')
    done = distctl("exec", str(inv), "--", "sh", "-c", script, cwd=tmp_path)
    assert done.returncode == ExitCode.EXEC_FAILED, done.stderr
    out = done.stdout.splitlines()
    for name in ("node1", "node2", "node3"):
        assert sum(line.startswith(f"[{name}] hello from ") for line in out) == 1, done.stdout
    assert "[node2] failing here" in out
    if cluster.isolated:
        assert {"[node1] hello from node1", "[node2] hello from node2", "[node3] hello from node3"} <= set(out)
    assert done.stderr.splitlines() == [
        "distctl: node1: exit 0",
        "distctl: node2: exit 7",
        "distctl: node3: exit 0",
        "distctl: error: the command failed on 1 of 3 host(s): node2 (exit 7)",
    ]


def test_words_reach_the_host_literally(cluster, tmp_path):
    inv = _inventory(tmp_path, cluster, ["node1", "node2"])
    words = ["$(id)", "`id`", "a; echo INJECTED", "'quoted' \"double\"", "*", "$HOME"]
    done = distctl("exec", str(inv), "--host", "node2", "--", "printf", "%s\\n", *words, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"[node2] {w}" for w in words]
    assert done.stderr.splitlines() == ["distctl: node2: exit 0", "distctl: the command exited 0 on 1 host(s)"]


def test_an_unreachable_host_is_reported_and_the_others_still_run(cluster, tmp_path):
    gone = {"name": "gone", "address": cluster.host("node1").address, "port": 1}
    inv = _inventory(tmp_path, cluster, ["node1", "node2"], [gone])
    done = distctl("exec", str(inv), "--", "echo", "ran", cwd=tmp_path)
    assert done.returncode == ExitCode.UNREACHABLE, done.stderr
    assert sorted(done.stdout.splitlines()) == ["[node1] ran", "[node2] ran"]
    err = done.stderr.splitlines()
    assert err[:2] == ["distctl: node1: exit 0", "distctl: node2: exit 0"]
    assert err[2].startswith("distctl: gone: not run: connection to ") and "refused" in err[2]
    assert err[3:] == ["distctl: error: not run on gone (could not connect)"]


def test_output_streams_before_the_command_ends(cluster, tmp_path):
    inv = _inventory(tmp_path, cluster, ["node1"])
    proc = start_distctl("exec", str(inv), "--", "sh", "-c", "echo first; sleep 20; echo second", cwd=tmp_path)
    try:
        assert select.select([proc.stdout], [], [], 60)[0], "no output within 60 s"
        first = proc.stdout.readline()
        assert first == "[node1] first\n"
        assert proc.poll() is None  # ...while the command still runs
    finally:
        kill_tree(proc)
