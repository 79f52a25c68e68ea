"""The contract between distctl and its bundled trainer, which share no code (the trainer imports
nothing of the orchestrator; the workstation has no torch): the exit codes watch.py decides by,
and the logfmt lines that `up` and `pull` read, are the ones the trainer produces.

Each line is made by the trainer's own `emit` and read by the orchestrator's own reader:
watch_run for `joined`, `rendezvous` and `fallback` (the join watchdog and the fallback notice),
pull's parse_metrics for the epoch lines. `done` and `stopped` are read by people, not parsed by
distctl: `done` is what they (and this suite, e2e.digests) compare ranks by, `stopped` names the
checkpoint that `pull` later describes. Then a real trainer run goes through the same readers, and
so does one of the torch-free stand-in (tests/support/standin) that the mechanism tests run on the
cluster in the trainer's place: what they prove holds for the trainer because it speaks the same.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from e2e import digests
from support.fakes import FakeStream, exited, said
from support.watched import a_run, host, stops, watch

from orchestrator.run import watch as watching
from orchestrator.results.ckptinfo import describe_checkpoint
from orchestrator.errors import ExitCode
from orchestrator.contract import TRAINER_FINAL
from orchestrator.plan.state import summarize
from orchestrator.console.ui import Ui
from orchestrator.run.watch import Outcome
from trainer.errors import ExitCode as TrainerExit
from trainer.log import emit, parse_line

REPO = Path(__file__).resolve().parent.parent
STANDIN = REPO / "tests" / "support" / "standin"
FALLBACK_NOTICE = ("node1: MNIST could not be had: training on generated digits, not MNIST "
                   "(job.fallback: generated; set job.data to push your copy of MNIST)")
ON_GENERATED = " (on generated digits, not MNIST: MNIST could not be had)"
LATE_S = 10.0  # a scripted rank nobody stops exits this late


def parse_metrics(log: str) -> list[dict]:
    """pull's reader of the epoch lines."""
    from orchestrator.results.pull import parse_metrics as read

    return read(log)


def emitted(capsys: pytest.CaptureFixture[str], event: str | None, **fields: object) -> str:
    """The one stdout line the trainer's `emit` prints for this event."""
    emit(event, **fields)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.endswith("\n"), out
    return out[:-1]


def joined_in_time(*lines_per_rank: list[str], code: int = 0) -> Outcome:
    """What `up` concludes when rank r (on host node<r+1>) prints lines_per_rank[r] and, long
    after a 0.2 s join timeout, exits with `code`."""
    state = a_run(**{f"node{r + 1}": (r,) for r in range(len(lines_per_rank))})
    conns = {f"node{r + 1}": host(f"node{r + 1}", FakeStream(said(r, *lines), 0.6, exited(r, code, 1.0)))
             for r, lines in enumerate(lines_per_rank)}
    return watch(state, conns, join_timeout=0.2)[0]


def never_joined(rank0_lines: list[str]) -> str:
    """Whom the join watchdog names when rank 0 prints `rank0_lines` and rank 1 nothing."""
    state = a_run(node1=(0,), node2=(1,))
    first, second = FakeStream(said(0, *rank0_lines), LATE_S, exited(0, 0)), FakeStream(LATE_S, exited(1, 0))
    conns = {"node1": host("node1", first, stop=stops(first, 0)), "node2": host("node2", second, stop=stops(second, 1))}
    outcome = watch(state, conns, join_timeout=0.2)[0]
    assert outcome.code == ExitCode.HANG, outcome
    return outcome.message.partition("ranks never joined: ")[2].partition(";")[0]


# ------------------------------------------------------------------ exit codes


def test_the_exit_codes_watch_decides_by_are_the_trainers():
    assert watching.STOPPED == TrainerExit.STOPPED  # stopped with a checkpoint: resumable, no teardown
    assert watching.PEER_LOST == TrainerExit.PEER_LOST  # a consequence: never blamed first
    # the restart agents: no restart is spent on these (a restart would fail the same way)
    assert TRAINER_FINAL == (TrainerExit.USAGE, TrainerExit.DIVERGED)
    assert summarize([("exited", TrainerExit.STOPPED), ("exited", TrainerExit.OK)]) == "stopped"
    assert summarize([("exited", TrainerExit.STOPPED), ("exited", TrainerExit.PEER_LOST)]) == "failed"


# How the README (for distctl's users) and trainer/__main__.py (for its own) word each code.
DOCUMENTED = {TrainerExit.OK: "done", TrainerExit.ERROR: "error", TrainerExit.USAGE: "bad arguments",
              TrainerExit.DIVERGED: "replicas diverged", TrainerExit.PEER_LOST: "peer lost",
              TrainerExit.STOPPED: "stopped by SIGTERM"}


@pytest.mark.parametrize("path, opening", [("README.md", "The trainer's own exit codes:"),
                                           ("trainer/__main__.py", "Exit codes (``trainer.errors.ExitCode``):")])
def test_every_trainer_exit_code_is_documented_with_its_value(path, opening):
    assert set(DOCUMENTED) == set(TrainerExit)  # a new code is documented too
    text = (REPO / path).read_text()
    paragraph = " ".join(text[text.index(opening):].split("\n\n")[0].split())
    for code, meaning in DOCUMENTED.items():
        assert f"{int(code)} {meaning}" in paragraph, (code, paragraph)
    assert (TrainerExit.USAGE, TrainerExit.DIVERGED) == (2, 3)


# ------------------------------------------------------------------ lines, one event at a time


def test_joined_lines_are_what_the_join_watchdog_counts(capsys):
    lines = [emitted(capsys, "joined", rank=r, local_rank=0, world_size=2, backend="gloo", device="cpu")
             for r in (0, 1)]
    assert joined_in_time([lines[0]], [lines[1]]) == Outcome(ExitCode.OK, "run t-1 finished: 2 rank(s) exited 0")


def test_a_rendezvous_line_tells_the_watchdog_which_ranks_reached_rank_0(capsys):
    line = emitted(capsys, "rendezvous", rank=0, world_size=2, backend="gloo")
    assert never_joined([line]) == "node2 r1"  # without it: both ranks
    assert never_joined([]) == "node1 r0, node2 r1"


def test_a_fallback_line_is_told_once_per_host_and_again_at_the_end(capsys):
    line = emitted(capsys, "fallback", dataset="generated",
                   reason="MNIST not found in /data/MNIST/raw; pass --download to fetch it")
    state = a_run(node1=(0, 1))
    conns = {"node1": host("node1", FakeStream(said(0, "joined rank=0", line), said(1, "joined rank=1", line),
                                               exited(0, 0, 1.0), exited(1, 0, 1.0)))}
    outcome, ui = watch(state, conns)
    assert outcome == Outcome(ExitCode.OK, "run t-1 finished: 2 rank(s) exited 0" + ON_GENERATED)
    assert ui.warnings == [FALLBACK_NOTICE]


def test_epoch_lines_are_what_pull_reads_as_metrics(capsys):
    lines = [emitted(capsys, None, epoch=2, rank=0, loss=0.25, samples_per_s=1234.5, test_accuracy=0.9375),
             emitted(capsys, None, epoch=2, rank=1, loss=0.5, samples_per_s=1000.0)]
    log = "\n".join(["joined rank=0 local_rank=0 world_size=2 backend=gloo device=cpu", *lines, "done rank=0"])
    assert parse_metrics(log) == [
        {"epoch": 2, "rank": 0, "loss": 0.25, "samples_per_s": 1234.5, "test_accuracy": 0.9375},
        {"epoch": 2, "rank": 1, "loss": 0.5, "samples_per_s": 1000.0}]


def test_done_lines_as_up_shows_them_carry_each_ranks_digest(capsys):
    digest = "0123456789abcdef" * 4
    line = emitted(capsys, "done", rank=1, param_sha256=digest, test_accuracy=0.9375)
    Ui().rank_line("node2", 1, line)
    assert digests(capsys.readouterr().out) == {1: digest}


# ------------------------------------------------------------------ a real trainer run


Runs = tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]


def stopped_then_resumed(folder: Path, *stop: str, cwd: Path = REPO, epochs: int = 1) -> Runs:
    """One lone rank (`python -m trainer` as found from `cwd`) on a host without MNIST (so: the
    fallback), stopped by `stop`, then resumed to its end."""
    args = [sys.executable, "-m", "trainer", "--data", str(folder / "no-mnist"), "--fallback", "generated",
            "--generated-train", "256", "--generated-test", "64", "--epochs", str(epochs),
            "--checkpoint-dir", str(folder / "ckpt")]
    stopped = subprocess.run([*args, *stop], cwd=cwd, capture_output=True, text=True, timeout=300)
    resumed = subprocess.run([*args, "--resume"], cwd=cwd, capture_output=True, text=True, timeout=300)
    return stopped, resumed


@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory, real_trainer) -> Runs:
    """The real trainer, stopped mid-epoch."""
    return stopped_then_resumed(tmp_path_factory.mktemp("trainer"), "--stop-after-step", "2",
                                "--stop-check-steps", "2")


@pytest.fixture(scope="module")
def standin_runs(tmp_path_factory) -> Runs:
    """The stand-in (it stops only at an epoch's end), stopped after epoch 1 of 2."""
    return stopped_then_resumed(tmp_path_factory.mktemp("standin"), "--stop-after-epoch", "1", cwd=STANDIN,
                                epochs=2)


def reads_as_stopped(stopped: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The checks of a stopped run's lines; its `stopped` line's fields."""
    assert stopped.returncode == watching.STOPPED, stopped.stderr
    lines = stopped.stdout.splitlines()
    assert joined_in_time(lines, code=stopped.returncode) == Outcome(
        ExitCode.STOPPED, "run t-1 was stopped (checkpointed); continue it with: distctl up /inv/a.yaml --resume")
    assert never_joined(lines[:1]) == "node2 r1"  # its first line: it reached the rendezvous
    event, fields = parse_line(lines[-1])
    assert event == "stopped" and Path(fields["checkpoint"]).is_file()
    return fields


def reads_as_finished(resumed: subprocess.CompletedProcess[str], epoch: int, capsys) -> str:
    """The checks of a run resumed for its last epoch `epoch`; its digest."""
    assert resumed.returncode == TrainerExit.OK, resumed.stderr
    lines = resumed.stdout.splitlines()
    assert joined_in_time(lines) == Outcome(ExitCode.OK, "run t-1 finished: 1 rank(s) exited 0" + ON_GENERATED)
    [row] = parse_metrics(resumed.stdout)
    assert (row["epoch"], row["rank"]) == (epoch, 0) and 0 < row["loss"] < 10 and 0 <= row["test_accuracy"] <= 1
    ui = Ui()
    for line in lines:
        ui.rank_line("node1", 0, line)
    [(rank, digest)] = digests(capsys.readouterr().out).items()
    assert rank == 0
    return digest


def test_a_real_stopped_run_reads_as_stopped_and_names_its_checkpoint(trainer_runs):
    fields = reads_as_stopped(trainer_runs[0])
    assert describe_checkpoint(Path(fields["checkpoint"])) == (
        f"epoch {fields['epoch']} step {fields['step']} (mid-epoch checkpoint of a stopped run)")


def test_a_real_finished_run_reads_as_success_with_its_metrics_and_digest(trainer_runs, capsys):
    reads_as_finished(trainer_runs[1], 1, capsys)


def test_the_standins_stopped_run_reads_as_the_trainers(standin_runs):
    fields = reads_as_stopped(standin_runs[0])
    assert (fields["epoch"], fields["step"]) == ("1", "0")


def test_the_standins_resumed_run_reads_as_the_trainers_and_ends_as_an_uninterrupted_one(standin_runs, tmp_path,
                                                                                          capsys):
    digest = reads_as_finished(standin_runs[1], 2, capsys)
    assert "resume rank=0 checkpoint=" in standin_runs[1].stdout
    _, whole = stopped_then_resumed(tmp_path, cwd=STANDIN, epochs=2)  # never stopped: resume finds nothing
    assert parse_line(whole.stdout.splitlines()[-1])[1]["param_sha256"] == digest


def test_the_standin_has_the_trainers_exit_codes(tmp_path):
    """2 for bad arguments, 1 (one `error` line) for missing data, as the trainer's own tests check."""
    run = [sys.executable, "-m", "trainer"]
    bad = subprocess.run([*run, "--resume"], cwd=STANDIN, capture_output=True, text=True, timeout=60)
    assert bad.returncode == TrainerExit.USAGE, bad.stderr
    missing = subprocess.run([*run, "--data", str(tmp_path), "--epochs", "1"], cwd=STANDIN, capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == TrainerExit.ERROR
    [error] = missing.stderr.splitlines()
    assert parse_line(error)[0] == "error"
