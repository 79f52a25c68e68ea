"""Run state from any shell, as a user drives it: a real run on this workstation
(`connection: local`, no SSH), then `distctl runs`, `status`, `logs` and `stop` from elsewhere.
The bundled trainer is the torch-free stand-in (tests/support/standin)."""

from __future__ import annotations

import json
import re

import yaml

from e2e import distctl, free_port, recorded_runs


def local_inventory(path, standin_mnist, workdir):
    path.write_text(yaml.safe_dump({
        "hosts": [{"name": "here", "connection": "local", "slots": 1, "workdir": str(workdir)}],
        "job": {"name": "t", "port": free_port(), "data": str(standin_mnist),
                "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "timeout": 60}},
    }, sort_keys=False))
    return path


def test_a_run_is_found_by_id_from_any_directory_and_bare_commands_mean_this_directory(
        standin_mnist, tmp_path, state_dir):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir(), elsewhere.mkdir()
    inv = local_inventory(project / "inv.yaml", standin_mnist, tmp_path / "work")
    up = distctl("up", "inv.yaml", cwd=project, timeout=600)
    assert up.returncode == 0, up.stderr
    [record] = recorded_runs()
    run_id = record["run_id"]
    assert (record["format"], record["inventory"], record["cwd"]) == (1, str(inv), str(project))
    assert (tmp_path / "work" / "runs" / run_id / "format").read_text() == "1\n"
    assert not (project / ".distctl").exists()

    listed = distctl("runs", cwd=elsewhere)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["run", "id", "inventory", "hosts", "started", "state"]
    assert row.split()[:3] == [run_id, str(inv), "here"] and row.split()[-1] == "finished"
    as_json = json.loads(distctl("runs", str(inv), "--json", cwd=project).stdout)
    assert [(r["run_id"], r["hosts"], r["cwd"], r["state"]) for r in as_json["runs"]] == [
        (run_id, ["here"], str(project), "finished")]
    assert json.loads(distctl("runs", "other.yaml", "--json", cwd=project).stdout)["runs"] == []

    status = distctl("status", run_id, cwd=elsewhere)
    assert status.returncode == 0, status.stderr
    header, *ranks = status.stdout.splitlines()
    assert re.fullmatch(rf"run {run_id}: started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d, elapsed \d+:\d\d:\d\d", header)
    assert ranks == ["  [here r0] exited 0, epoch 1"]
    logs = distctl("logs", run_id, "--tail", "1", cwd=elsewhere)
    assert logs.returncode == 0 and logs.stdout.startswith("[here r0] done rank=0"), logs.stderr
    here = distctl("status", cwd=project)  # bare: the last run started from this directory
    assert here.returncode == 0 and here.stdout.startswith(f"run {run_id}: started "), here.stderr

    bare = distctl("status", cwd=elsewhere)
    assert bare.returncode == 7
    assert bare.stderr.splitlines() == [
        f"distctl: error: no run started from this directory ({elsewhere}) in {state_dir}/runs; "
        "give a run id or an inventory (distctl runs lists them)"]
    stop = distctl("stop", run_id, "--grace", "0", cwd=elsewhere)
    assert stop.returncode == 0, stop.stderr
    assert f"run {run_id} stopped; no process of it is left on any host" in stop.stderr
    assert distctl("runs", cwd=elsewhere).stdout.splitlines()[1].split()[-1] == "stopped"


def test_resume_without_an_earlier_run_names_where_it_looked(tmp_path, state_dir, standin_mnist):
    inv = local_inventory(tmp_path / "inv.yaml", standin_mnist, tmp_path / "work")
    done = distctl("up", str(inv), "--resume", cwd=tmp_path)
    assert done.returncode == 7
    assert done.stderr.splitlines()[-1] == f"distctl: error: no run of {inv} to resume in {state_dir}/runs"
