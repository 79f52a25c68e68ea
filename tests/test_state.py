"""The workstation's run records: where they live, the versioned tolerant file, and lookups
(by id from anywhere, by inventory, the last run started from a directory, the old ./.distctl/)."""

from __future__ import annotations

import json
import os
import time

import pytest

from orchestrator.cli import render
from orchestrator.plan import state
from orchestrator.errors import DistctlError, ExitCode
from orchestrator.inventory.model import Host, Ssh
from orchestrator.plan.state import HostState, RankState, RunState

# What distctl wrote into .distctl/runs/<id>.json before run files had a format version.
OLD_LAYOUT = {
    "run_id": "mnist-20260101-000000-abcd",
    "inventory": "/home/u/proj/inventory.yaml",
    "ssh": {"known_hosts": ["~/.ssh/known_hosts"], "accept_new_host_keys": False, "config": None,
            "connect_timeout": 10.0},
    "world_size": 2,
    "master": "10.0.0.1",
    "port": 23456,
    "hosts": [{"host": {"name": "node1", "address": "10.0.0.1", "connection": "ssh", "user": "u", "port": 22,
                        "identity_file": "/home/u/.ssh/id", "python": "python3", "workdir": "~/.distctl",
                        "slots": 2, "env": [], "line": 4},
               "rundir": "/home/u/.distctl/runs/mnist-20260101-000000-abcd",
               "ranks": [{"rank": 0, "local_rank": 0}, {"rank": 1, "local_rank": 1}]}],
}


def a_run(run_id="t-1", inventory="/inv/a.yaml", **host) -> RunState:
    h = Host("node1", "10.0.0.1", **host)
    return RunState(run_id, inventory, Ssh(), 1, "10.0.0.1", 23456,
                    (HostState(h, f"/w/runs/{run_id}", (RankState(0, 0),)),))


def write(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def fail(call) -> str:
    with pytest.raises(DistctlError) as info:
        call()
    assert info.value.exit_code == ExitCode.NO_RUN
    assert "\n" not in str(info.value)
    return str(info.value)


# ------------------------------------------------------------ where


def test_the_state_directory_follows_xdg_unless_overridden(monkeypatch, tmp_path):
    monkeypatch.delenv("DISTCTL_STATE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    assert state.state_dir() == tmp_path / ".local" / "state" / "distctl"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/is/invalid")  # the XDG spec: ignore it
    assert state.state_dir() == tmp_path / ".local" / "state" / "distctl"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state.state_dir() == tmp_path / "xdg" / "distctl"
    monkeypatch.setenv("DISTCTL_STATE_DIR", str(tmp_path / "mine"))
    assert state.state_dir() == tmp_path / "mine"


def test_tests_never_write_into_the_real_home(state_dir):
    assert state.state_dir() == state_dir


def test_the_state_directory_is_made_private(state_dir):
    root = state_dir / "new" / "deeper"
    state.save_run(a_run(), root)
    assert [oct(p.stat().st_mode & 0o777) for p in (state_dir / "new", root, root / "runs")] == ["0o700"] * 3


# ------------------------------------------------------------ the file


def test_a_run_round_trips_with_format_1_and_what_save_adds(state_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = a_run(identity_file="/k/id", user="u", port=2222, slots=4)
    state.save_run(run)
    path = state_dir / "runs" / "t-1.json"
    data = json.loads(path.read_text())
    assert data["format"] == 1
    assert data["hosts"][0]["host"]["env"] == []  # environment values (secrets) are never stored
    loaded = state.load_run(path)
    assert loaded.cwd == str(tmp_path) and loaded.last_state == "started"
    assert abs(time.time() - state.list_runs()[0].started) < 60
    assert loaded == RunState(*[getattr(run, f) for f in ("run_id", "inventory", "ssh", "world_size", "master_addr",
                                                          "port", "hosts", "trainer", "outputs")],
                              loaded.cwd, loaded.started, "started")


def test_unknown_fields_are_ignored_everywhere(state_dir):
    data = {**OLD_LAYOUT, "format": 1, "future": {"x": 1},
            "ssh": {**OLD_LAYOUT["ssh"], "cipher": "new"},
            "hosts": [{**OLD_LAYOUT["hosts"][0], "gpu_model": "H200",
                       "host": {**OLD_LAYOUT["hosts"][0]["host"], "tags": ["a"]},
                       "ranks": [{"rank": 0, "local_rank": 0, "restarts": 2}]}]}
    write(state_dir / "runs" / "r.json", data)
    loaded = state.load_run(state_dir / "runs" / "r.json")
    assert loaded.ssh == Ssh(known_hosts=("~/.ssh/known_hosts",), connect_timeout=10.0)
    assert loaded.hosts[0].host.name == "node1"
    assert loaded.hosts[0].ranks == (RankState(0, 0),)


def test_missing_optional_fields_get_defaults(state_dir):
    host = {"name": "node1", "address": "10.0.0.1"}
    write(state_dir / "runs" / "x-9.json", {"format": 1, "hosts": [
        {"host": host, "rundir": "/w/r", "ranks": [{"rank": 0, "local_rank": 0}, {"rank": 1, "local_rank": 1}]}]})
    loaded = state.load_run(state_dir / "runs" / "x-9.json")
    assert (loaded.run_id, loaded.inventory, loaded.ssh, loaded.world_size, loaded.master_addr, loaded.port) == (
        "x-9", "", Ssh(), 2, "", 0)
    assert loaded.hosts[0].host == Host("node1", "10.0.0.1")
    assert (loaded.cwd, loaded.started, loaded.last_state) == (None, None, None)
    assert loaded.hosts[0].clock_offset is None and loaded.clock_offsets() == {}


@pytest.mark.parametrize("recorded, loaded", [(-4.25, -4.25), (3, 3.0), ("4", None), (True, None), (None, None)])
def test_a_hosts_clock_offset_round_trips_and_anything_else_is_unknown(state_dir, recorded, loaded):
    run = a_run()
    run = RunState(*[getattr(run, f) for f in ("run_id", "inventory", "ssh", "world_size", "master_addr", "port")],
                   (HostState(run.hosts[0].host, "/w/r", (RankState(0, 0), RankState(1, 1)), 1.5),))
    state.save_run(run)
    assert state.run_by_id("t-1").clock_offsets() == {0: 1.5, 1: 1.5}
    data = json.loads((state_dir / "runs" / "t-1.json").read_text())
    data["hosts"][0]["clock_offset"] = recorded
    write(state_dir / "runs" / "t-1.json", data)
    assert state.run_by_id("t-1").hosts[0].clock_offset == loaded


def test_a_file_of_the_layout_before_format_1_still_loads(tmp_path):
    write(tmp_path / "old.json", OLD_LAYOUT)
    loaded = state.load_run(tmp_path / "old.json")
    assert loaded.run_id == OLD_LAYOUT["run_id"] and loaded.world_size == 2 and loaded.port == 23456
    assert loaded.hosts[0].host == Host("node1", "10.0.0.1", "ssh", "u", 22, "/home/u/.ssh/id", "python3",
                                        "~/.distctl", 2, (), 4)
    assert loaded.hosts[0].rundir.endswith(OLD_LAYOUT["run_id"])


@pytest.mark.parametrize("fmt", [1, "1", "1.7"])
def test_minor_format_versions_load(tmp_path, fmt):
    write(tmp_path / "r.json", {**OLD_LAYOUT, "format": fmt})
    assert state.load_run(tmp_path / "r.json").run_id == OLD_LAYOUT["run_id"]


def test_a_newer_major_format_is_refused_in_one_line(tmp_path):
    write(tmp_path / "r.json", {**OLD_LAYOUT, "format": 2})
    assert fail(lambda: state.load_run(tmp_path / "r.json")) == (
        f"run {OLD_LAYOUT['run_id']} was recorded by a newer distctl (run file format 2, this distctl reads "
        f"format 1): upgrade distctl to act on it ({tmp_path / 'r.json'})")


@pytest.mark.parametrize("data, why", [
    ({"format": 1}, "no hosts"),
    ({"format": 1, "hosts": [{"host": {"name": "n"}, "rundir": "/r", "ranks": []}]}, "missing or malformed"),
    ({"format": 1, "hosts": [{"host": {"name": "n", "address": "a"}, "ranks": []}]}, "missing or malformed 'rundir'"),
    ({"format": "one", "hosts": []}, "format 'one' is not a version number"),
])
def test_a_damaged_file_is_a_one_line_error(tmp_path, data, why):
    write(tmp_path / "r.json", data)
    assert fail(lambda: state.load_run(tmp_path / "r.json")).startswith(
        f"run file {tmp_path / 'r.json'} is damaged: {why}")


def test_relative_key_and_config_paths_are_stored_absolute(state_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = a_run(identity_file="keys/id")
    run = RunState(run.run_id, "inv.yaml", Ssh(known_hosts=("kh", "~/.ssh/known_hosts", "/etc/kh"), config="cfg"),
                   *[getattr(run, f) for f in ("world_size", "master_addr", "port", "hosts")])
    state.save_run(run)
    loaded = state.load_run(state_dir / "runs" / "t-1.json")
    assert loaded.inventory == str(tmp_path / "inv.yaml")
    assert loaded.hosts[0].host.identity_file == str(tmp_path / "keys" / "id")
    assert loaded.ssh.config == str(tmp_path / "cfg")
    assert loaded.ssh.known_hosts == (str(tmp_path / "kh"), "~/.ssh/known_hosts", "/etc/kh")


# ------------------------------------------------------------ lookups


def start_in(directory, monkeypatch, run_id, inventory="/inv/a.yaml") -> None:
    """Record a run as `up` would, started from `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(directory)
    state.save_run(a_run(run_id, inventory))
    time.sleep(0.002)  # `started` has millisecond resolution: keep the order unambiguous


def test_a_run_id_is_found_from_any_directory(state_dir, tmp_path, monkeypatch):
    start_in(tmp_path / "proj", monkeypatch, "t-1")
    monkeypatch.chdir(tmp_path)
    assert state.run_by_id("t-1").hosts[0].rundir == "/w/runs/t-1"
    assert fail(lambda: state.run_by_id("t-2")) == f"no run 't-2' in {state_dir}/runs (distctl runs lists them)"


@pytest.mark.parametrize("bad", ["../runs/t-1", "/etc/passwd", ".hidden", ""])
def test_a_run_id_is_never_a_path(state_dir, tmp_path, monkeypatch, bad):
    start_in(tmp_path, monkeypatch, "t-1")
    (state_dir / "x").mkdir()
    monkeypatch.chdir(state_dir / "x")
    fail(lambda: state.run_by_id(bad))


def test_the_last_run_here_is_the_newest_started_from_this_directory(state_dir, tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    start_in(a, monkeypatch, "t-1")
    start_in(b, monkeypatch, "t-2")
    start_in(a, monkeypatch, "t-3")
    start_in(b, monkeypatch, "t-4")
    monkeypatch.chdir(a)
    assert state.last_run_here().run_id == "t-3"
    monkeypatch.chdir(b)
    assert state.last_run_here().run_id == "t-4"
    monkeypatch.chdir(tmp_path)
    assert fail(state.last_run_here) == (f"no run started from this directory ({tmp_path}) in {state_dir}/runs; "
                                         "give a run id or an inventory (distctl runs lists them)")


def test_the_last_run_of_an_inventory_is_found_from_anywhere(state_dir, tmp_path, monkeypatch):
    inv = tmp_path / "inv.yaml"
    start_in(tmp_path / "a", monkeypatch, "t-1", str(inv))
    start_in(tmp_path / "b", monkeypatch, "t-2", str(inv))
    start_in(tmp_path / "b", monkeypatch, "t-3", "/other.yaml")
    monkeypatch.chdir(tmp_path)
    assert state.last_run_of("inv.yaml").run_id == "t-2"
    assert [r.run_id for r in state.list_runs("inv.yaml")] == ["t-1", "t-2"]
    assert fail(lambda: state.last_run_of("nope.yaml", doing="to resume")) == (
        f"no run of nope.yaml to resume in {state_dir}/runs")


def test_runs_of_an_old_dot_distctl_are_still_found(state_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / ".distctl" / "runs" / f"{OLD_LAYOUT['run_id']}.json", OLD_LAYOUT)
    (tmp_path / ".distctl" / "last").write_text(OLD_LAYOUT["run_id"] + "\n")
    assert state.last_run_here().run_id == OLD_LAYOUT["run_id"]
    assert state.run_by_id(OLD_LAYOUT["run_id"]).master_addr == "10.0.0.1"
    assert state.last_run_of(OLD_LAYOUT["inventory"]).run_id == OLD_LAYOUT["run_id"]
    [listed] = state.list_runs()
    assert listed.legacy and listed.cwd == str(tmp_path)
    assert "or .distctl/runs" in fail(lambda: state.run_by_id("t-9"))
    state.note_state(OLD_LAYOUT["run_id"], "stopped")  # the old directory is only read
    assert json.loads((tmp_path / ".distctl" / "runs" / f"{OLD_LAYOUT['run_id']}.json").read_text()) == OLD_LAYOUT
    # a run started here after the upgrade is newer than the old `last`
    os.utime(tmp_path / ".distctl" / "runs" / f"{OLD_LAYOUT['run_id']}.json", (1, 1))
    start_in(tmp_path, monkeypatch, "t-new")
    assert state.last_run_here().run_id == "t-new"


def test_a_resumed_old_run_is_listed_once_from_its_new_record(state_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / ".distctl" / "runs" / f"{OLD_LAYOUT['run_id']}.json", OLD_LAYOUT)
    state.save_run(state.load_run(tmp_path / ".distctl" / "runs" / f"{OLD_LAYOUT['run_id']}.json"))
    [listed] = state.list_runs()
    assert not listed.legacy and listed.last_state == "started"


# ------------------------------------------------------------ what distctl last saw


@pytest.mark.parametrize("ranks, summary", [
    ([("running", None), ("exited", 0)], "running"),
    ([("exited", 0), ("exited", 0)], "finished"),
    ([("exited", 0), ("exited", 143)], "stopped"),
    ([("exited", 4), ("exited", 143)], "failed"),
    ([("killed", None), ("unreachable", None)], "failed"),
    ([("exited", 0), ("unreachable", None)], None),
    ([("missing", None)], None),
    ([], None),
])
def test_what_status_saw_summarizes_the_run(ranks, summary):
    assert state.summarize(ranks) == summary


def test_noted_states_show_in_the_listing(state_dir, tmp_path, monkeypatch):
    start_in(tmp_path, monkeypatch, "t-1")
    start_in(tmp_path, monkeypatch, "t-2")
    state.note_state("t-1", "stopped")
    state.note_state("t-1", "failed", keep=("stopped",))  # attached `up` sees the ranks end after a stop
    assert state.list_runs()[0].last_state == "stopped"
    state.note_state("t-1", "finished")
    state.note_ranks("t-2", [("exited", 0), ("unreachable", None)])  # unknown: keeps what it had
    rows = render.runs_rows(state.list_runs())
    assert [(r[0], r[2], r[4]) for r in rows] == [("t-1", "node1", "finished"), ("t-2", "node1", "started")]
    started = state.list_runs()[0].started
    assert rows[0][3] == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
    listed = json.loads(render.runs_json(state.list_runs()))
    assert listed["format"] == 1
    assert [(r["run_id"], r["cwd"], r["state"]) for r in listed["runs"]] == [
        ("t-1", str(tmp_path), "finished"), ("t-2", str(tmp_path), "started")]


def test_a_listing_row_shows_a_few_hosts_and_the_home_as_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    record = state.RunRecord("t-1", tmp_path / "r.json", str(tmp_path / "p" / "inv.yaml"), None, 0.0,
                             tuple(f"h{i:02}" for i in range(1, 17)), None, False)
    assert render.runs_rows([record])[0][1:3] == ["~/p/inv.yaml", "h01,h02,h03 +13"]
    assert render.runs_rows([record])[0][4] == "?"  # nothing noted: state unknown


def test_an_unreadable_file_is_skipped_by_listings(state_dir, tmp_path, monkeypatch):
    start_in(tmp_path, monkeypatch, "t-1")
    (state_dir / "runs" / "junk.json").write_text("{not json")
    assert [r.run_id for r in state.list_runs()] == ["t-1"]


def test_a_state_directory_that_cannot_be_written_is_a_one_line_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("DISTCTL_STATE_DIR", str(blocker / "state"))
    with pytest.raises(DistctlError) as info:
        state.save_run(a_run())
    assert info.value.exit_code == ExitCode.BAD_INPUT
    assert str(info.value) == (f"cannot record the run in {blocker}/state/runs: Not a directory; "
                               "set DISTCTL_STATE_DIR to a writable folder")
