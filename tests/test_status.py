"""`distctl status` without a cluster: the host-side progress reader on real files, and the
whole command in-process against run directories on this machine (`connection: local` hosts,
one of them made unreachable), with its exact text, JSON and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator import hostside
from orchestrator.ssh import group
from orchestrator.cli.main import cli
from orchestrator.errors import HostError
from orchestrator.inventory.model import Host, Ssh
from orchestrator.ssh.remote import LocalConnection
from orchestrator.plan.state import HostState, RankState, RunState, save_run


def progress(rundir: Path, *ranks: int) -> str:
    return subprocess.run([sys.executable, "-c", hostside.source("progress"), str(rundir), *map(str, ranks)],
                          capture_output=True, text=True, check=True).stdout


# ------------------------------------------------------------ hostside/progress.py

LOGS = {
    "trained": "rendezvous rank=0 world_size=2\nepoch=1 rank=0 loss=0.5\nepoch=2 rank=0 loss=0.4\ndone rank=0\n",
    "stopped": ("epoch=1 rank=1 loss=0.5\nepoch=2 rank=1 loss=0.4\n"
                "stopped rank=1 epoch=3 step=7 checkpoint=/w/ckpt/epoch=9/ckpt-000002-000007.pt reason=SIGTERM\n"),
    "stopped, then resumed": ("epoch=1 rank=0 loss=0.5\nstopped rank=0 epoch=2 step=0 checkpoint=none reason=SIGTERM\n"
                              "--- distctl: resumed 2026-01-01T00:00:00Z ---\nepoch=2 rank=0 loss=0.4\n"),
    "stopped, then restarted by the agent": ("stopped rank=0 epoch=1 step=3 checkpoint=none reason=SIGTERM\n"
                                             "--- distctl: restart 1/2 after node2 r1 exited 1 ---\n"),
    "a user's lines that look alike": "  epoch=7 indented\nepochs=3\nepoch=x rank=0\nstopped early, epoch=5\n",
    "nothing yet": "",
}


@pytest.mark.parametrize("log, expected", [
    ("trained", "progress 0 2 -\n"),
    ("stopped", "progress 0 2 3\n"),  # the stopped line's own epoch, not one inside the checkpoint path
    ("stopped, then resumed", "progress 0 2 -\n"),  # an earlier attempt's stop is history
    ("stopped, then restarted by the agent", "progress 0 - -\n"),
    ("a user's lines that look alike", "progress 0 - -\n"),
    ("nothing yet", "progress 0 - -\n"),
], ids=list(LOGS))
def test_progress_reads_the_last_epoch_and_the_latest_stop(tmp_path, log, expected):
    (tmp_path / "rank0.log").write_text(LOGS[log])
    assert progress(tmp_path, 0) == expected


def test_progress_reads_the_lines_the_trainer_writes(tmp_path):
    """Tied to the trainer's own formatting (trainer/log.py), which shares no code with distctl."""
    from trainer.log import format_line

    lines = [format_line(None, epoch=1, rank=0, loss=0.5, samples_per_s=1000.0, test_accuracy=0.9),
             format_line("stopped", rank=0, epoch=2, step=7, checkpoint="/w/runs/r 1/ckpt/ckpt-000001-000007.pt",
                         reason="SIGTERM")]
    (tmp_path / "rank0.log").write_text("".join(f"{line}\n" for line in lines))
    assert progress(tmp_path, 0) == "progress 0 1 2\n"


def test_progress_skips_ranks_without_a_log(tmp_path):
    (tmp_path / "rank1.log").write_text(LOGS["trained"])
    assert progress(tmp_path, 0, 1) == "progress 1 2 -\n"


# ------------------------------------------------------------ the command, in process

STARTED = "2026-01-01T12:00:00.000+00:00"
T0 = 1767268800.0  # STARTED as epoch seconds


@pytest.fixture
def utc(monkeypatch):
    """Local time is UTC: the start time shows as recorded."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def a_rank(rundir: Path, rank: int, log: str, code: int | None, at: float | None = None) -> None:
    rundir.mkdir(parents=True, exist_ok=True)
    (rundir / f"rank{rank}.log").write_text(log)
    if code is None:  # running: a live process group of our own
        proc = subprocess.Popen(["sleep", "300"], cwd=rundir, start_new_session=True)  # a leader works there
        (rundir / f"rank{rank}.pid").write_text(str(proc.pid))
        return
    (rundir / f"rank{rank}.pid").write_text("999999")
    (rundir / f"rank{rank}.exit").write_text(f"{code}\n")
    if at is not None:
        os.utime(rundir / f"rank{rank}.exit", (at, at))


def a_run(tmp_path: Path, trainer: bool = True) -> RunState:
    hosts = tuple(HostState(Host(name, "127.0.0.1", connection="local", python=sys.executable),
                            str(tmp_path / name / "runs" / "r-1"), (RankState(rank, 0),))
                  for rank, name in enumerate(("node1", "node2")))
    state = RunState("r-1", str(tmp_path / "inv.yaml"), Ssh(), 2, "127.0.0.1", 29500, hosts, trainer=trainer,
                     started=STARTED)
    save_run(state)
    return state


@pytest.fixture
def node2_down(monkeypatch):
    def connect(host, ssh):
        if host.name == "node2":
            raise HostError("node2", "connection refused")
        return LocalConnection(host.name)

    monkeypatch.setattr(group, "connect", connect)


def status(*args: str):
    return CliRunner().invoke(cli, ["--no-color", "status", "r-1", *args])


def kill_running(tmp_path: Path) -> None:
    for pidfile in tmp_path.glob("*/runs/r-1/rank*.pid"):
        pid = int(pidfile.read_text())
        if pid != 999999:
            os.killpg(pid, 9)


def test_a_stopped_trainer_run_reads_stopped_with_its_checkpoint_epoch(tmp_path, utc):
    state = a_run(tmp_path)
    for rank, h in enumerate(state.hosts):
        a_rank(Path(h.rundir), rank, f"epoch=1 rank={rank}\nepoch=2 rank={rank}\n"
                                     f"stopped rank={rank} epoch=3 step=5 checkpoint=x reason=SIGTERM\n", 143, T0 + 95)
    done = status()
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines() == [
        "run r-1: started 2026-01-01 12:00:00, elapsed 0:01:35",
        "  [node1 r0] exited 143, epoch 2",
        "  [node2 r1] exited 143, epoch 2",
        "stopped (checkpointed at epoch 3)",
        f"continue it with: distctl up {tmp_path}/inv.yaml --resume",
    ]
    as_json = json.loads(status("--json").stdout)
    assert {k: as_json[k] for k in ("format", "state", "started", "elapsed_s", "unreachable", "stopped_epoch",
                                    "first_failure")} == {
        "format": 1, "state": "stopped", "started": STARTED, "elapsed_s": 95.0, "unreachable": [],
        "stopped_epoch": 3, "first_failure": None}
    assert [(r["rank"], r["state"], r["exit_code"], r["epoch"]) for r in as_json["ranks"]] == [
        (0, "exited", 143, 2), (1, "exited", 143, 2)]


def test_a_failed_rank_is_named_first_and_a_user_program_has_no_epochs(tmp_path, utc):
    state = a_run(tmp_path, trainer=False)
    a_rank(Path(state.hosts[0].rundir), 0, "epoch=1 rank=0\n", 143, T0 + 20)
    a_rank(Path(state.hosts[1].rundir), 1, "epoch=1 rank=1\nboom\n", 1, T0 + 10)
    done = status()
    assert done.exit_code == 1, done.output  # a failed run: status says so in its exit code too
    assert done.stderr.splitlines() == ["distctl: error: run r-1 failed"]
    assert done.stdout.splitlines() == [
        "run r-1: started 2026-01-01 12:00:00, elapsed 0:00:20",
        "  [node1 r0] exited 143",  # 143 means nothing in a user program: no "stopped" either
        "  [node2 r1] exited 1",
        "first failure: rank 1 on node2 exited with code 1; last lines of its log:",
        "    epoch=1 rank=1",
        "    boom",
        # no attached up analysed it (a detached run): status does, from the hosts' records
        "culprit and collateral, from the hosts' records:",
        "  rank 0 (node1) died only as a consequence (a lost peer or a timed-out collective, or an exit after "
        "the culprit's)",
    ]


def test_an_unreachable_host_is_shown_and_exits_3(tmp_path, utc, node2_down):
    state = a_run(tmp_path)
    a_rank(Path(state.hosts[0].rundir), 0, "epoch=1 rank=0\nepoch=2 rank=0\n", None)
    try:
        done = status()
        as_json = status("--json")
    finally:
        kill_running(tmp_path)
    assert done.exit_code == 3, done.output
    lines = done.stdout.splitlines()
    assert lines[0].startswith("run r-1: started 2026-01-01 12:00:00, elapsed ")  # to now: it may run on
    assert lines[1:] == ["  [node1 r0] running, epoch 2", "  [node2 r1] unreachable  (connection refused)"]
    assert done.stderr.splitlines() == ["distctl: error: status of run r-1 is incomplete: node2 could not be reached"]
    assert as_json.exit_code == 3
    found = json.loads(as_json.stdout)
    assert (found["state"], found["unreachable"], found["elapsed_s"] > 0) == ("running", ["node2"], True)
    assert [(r["host"], r["state"], r["epoch"], r["detail"]) for r in found["ranks"]] == [
        ("node1", "running", 2, ""), ("node2", "unreachable", None, "connection refused")]


def a_stop(rundir: Path, at: float) -> None:
    """What a user's `distctl stop` leaves in a run directory (lifecycle.STOP_REQUESTED)."""
    (rundir / "stop-requested").touch()
    os.utime(rundir / "stop-requested", (at, at))


def test_a_user_program_ended_by_distctl_stop_reads_stopped_and_exits_0(tmp_path, utc):
    state = a_run(tmp_path, trainer=False)
    a_rank(Path(state.hosts[0].rundir), 0, "step 1\n", 143, T0 + 20)
    a_rank(Path(state.hosts[1].rundir), 1, "step 1\nTraceback: KeyboardInterrupt\n", 1, T0 + 20)
    for h in state.hosts:
        a_stop(Path(h.rundir), T0 + 19)
    done = status()
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines()[-2:] == [
        "stopped by distctl stop", f"continue it with: distctl up {tmp_path}/inv.yaml --resume"]
    assert "first failure" not in done.stdout
    found = json.loads(status("--json").stdout)
    assert (found["state"], found["first_failure"]) == ("stopped", None)
    runs = CliRunner().invoke(cli, ["--no-color", "runs", "--json"])
    assert [r["state"] for r in json.loads(runs.stdout)["runs"]] == ["stopped"]


def test_a_rank_that_failed_before_the_stop_still_fails_the_run(tmp_path, utc):
    state = a_run(tmp_path, trainer=False)
    a_rank(Path(state.hosts[0].rundir), 0, "ok\n", 143, T0 + 60)
    a_rank(Path(state.hosts[1].rundir), 1, "boom\n", 1, T0 + 10)
    for h in state.hosts:
        a_stop(Path(h.rundir), T0 + 59)
    done = status()
    assert done.exit_code == 1, done.output
    assert "first failure: rank 1 on node2 exited with code 1; last lines of its log:" in done.stdout


def test_a_host_whose_run_directory_is_gone_is_shown_and_exits_12(tmp_path, utc):
    state = a_run(tmp_path, trainer=False)
    a_rank(Path(state.hosts[0].rundir), 0, "done\n", 0, T0 + 30)  # node2's run directory never existed
    done = status()
    assert done.exit_code == 12, done.output
    assert done.stdout.splitlines() == [
        "run r-1: started 2026-01-01 12:00:00, elapsed 0:00:30",
        "  [node1 r0] exited 0",
        "  [node2 r1] missing  (run directory not found on node2: host reimaged or workdir cleaned)"]
    assert done.stderr.splitlines() == [
        "distctl: error: status of run r-1 is incomplete: run directory not found on node2"]
    found = json.loads(status("--json").stdout)
    assert found["missing"] == ["node2"] and found["elapsed_s"] == 30.0
    assert [(r["host"], r["rank"], r["state"]) for r in found["ranks"]] == [("node1", 0, "exited"),
                                                                         ("node2", 1, "missing")]


# ------------------------------------------------------------ steps: the tracker's file, read by status


def test_status_reads_each_ranks_steps_rate_and_time_left(tmp_path):
    from orchestrator.cli.render import status_steps
    from orchestrator.run.status import RankRow, parse_progress
    from orchestrator.run.lifecycle import RankStatus

    (tmp_path / "rank0.log").write_text("")
    (tmp_path / "rank0.progress").write_text("step=120 total=1000 rate=3.2 at=1767268800.000 loss=0.31\n")
    out = progress(tmp_path, 0)
    assert out == "progress 0 - -\nstep 0 step=120 total=1000 rate=3.2 at=1767268800.000 loss=0.31\n"
    found = parse_progress(out)[0]
    assert (found.step, found.total, found.rate, found.metrics) == (120, 1000, 3.2, {"loss": 0.31})
    running = RankRow("node1", RankStatus(0, "running"), progress=found)
    assert status_steps(running) == "step 120/1000 (3.2/s, 0:04:35 left)"
    assert status_steps(RankRow("node1", RankStatus(0, "exited", 0), progress=found)) == ""  # its exit says it


def test_lines_that_carry_a_ranks_words_are_not_rank_states(monkeypatch):
    """The tracker's `step R ...` and up's `autopsy ...` lines hold `rank=1` words of the logs."""
    from orchestrator.run import status as status_module
    from orchestrator.ssh.remote import Result

    out = ("rank=0 state=running\nprogress 0 - -\nstep 0 step=5 rank=7 at=1.0 rate=-\n"
           "autopsy rank 1 on node2 failed first\nautopsy     epoch=1 rank=1 loss=0.5\n")

    class Conn:
        def run(self, command, stdin=b"", timeout=None):
            return Result(0, out, "")

    state = RunState(run_id="r-1", inventory="/p/inv.yaml", ssh=Ssh(), world_size=1, master_addr="10.0.0.1",
                     port=1, hosts=(HostState(host=Host(name="node1", address="a"), rundir="/w",
                                              ranks=(RankState(rank=0, local_rank=0),)),))
    found = status_module.query(state, {"node1": Conn()}, {}, 1)
    assert [(r.status.rank, r.status.state, r.progress.step) for r in found.rows] == [(0, "running", 5)]
    assert found.autopsy == ["rank 1 on node2 failed first", "    epoch=1 rank=1 loss=0.5"]
