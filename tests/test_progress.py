"""Progress read from what a rank prints (hostside/progress.py): one parser for tqdm bars
(real tqdm output, `\\r` redraws included), `distctl: step=N ...` logfmt lines and the
bundled trainer's; the tracker's rate; and on the cluster, `status` showing each rank's steps."""

from __future__ import annotations

import io
import json

import pytest

from orchestrator.hostside.tracking import Tracker, parse

from e2e import distctl, wait_for, write_inventory


@pytest.mark.parametrize("line, expected", [
    (b"distctl: step=120 total=1000 loss=0.31 lr=1e-3 note=warmup", (120, 1000, {"loss": 0.31, "lr": 0.001})),
    (b"distctl: step=7", (7, None, {})),
    (b" 12%|\xe2\x96\x88\xe2\x96\x8f        | 120/1000 [00:37<04:35,  3.20it/s]", (120, 1000, {})),
    (b"train:  0%|          | 0/50 [00:00<?, ?it/s]", (0, 50, {})),
    (b"4it [00:00, 39568.91it/s]", (4, None, {})),
    (b"distctl: step=x", None),
    (b"distctl: step=-3", None),
    (b"epoch=1 rank=0 loss=0.5", None),  # the trainer's epoch line: its `distctl:` line carries the steps
    (b"saved 3/4 files", None),
])
def test_parse_reads_tqdm_and_logfmt_lines(line, expected):
    assert parse(line) == expected


def test_parse_reads_what_tqdm_really_writes_each_redraw():
    tqdm = pytest.importorskip("tqdm")
    out = io.StringIO()
    for _ in tqdm.tqdm(range(30), file=out, mininterval=0, miniters=1, ascii=False):
        pass
    steps = [parse(seg.encode())[0] for seg in out.getvalue().split("\r") if parse(seg.encode())]
    assert steps[-1] == 30 and steps == sorted(steps)


def test_parse_reads_the_trainers_progress_line():
    from trainer.log import format_line

    line = format_line("distctl:", step=40, total=120, epoch=1, loss=0.25, samples_per_s=1000.0)
    assert parse(line.encode()) == (40, 120, {"epoch": 1.0, "loss": 0.25, "samples_per_s": 1000.0})


def test_the_tracker_rate_is_recent_steps_over_time_and_restarts_with_a_new_bar():
    t = Tracker()
    for second, step in ((0, 0), (10, 30), (20, 60)):
        t.feed(b"distctl: step=%d total=100" % step, 1000.0 + second)
    assert (t.step, t.total, t.rate()) == (60, 100, 3.0)
    t.feed(b"5/50 [00:01<00:09, 5.0it/s]", 1021.0)  # a new bar: a lower step
    assert (t.step, t.total, t.rate()) == (5, 50, None)
    assert t.line() == "step=5 total=50 rate=- at=1021.000"


PROG = """import os, sys, time
from tqdm import tqdm
r = int(os.environ["RANK"])
if r == 0:
    for i in tqdm(range(100000), mininterval=0.2, file=sys.stdout):
        time.sleep(0.01)
else:
    for step in range(100000):
        print("distctl: step=%d total=100000 loss=%g" % (step, 1.0 / (step + 1)), flush=True)
        time.sleep(0.05)
"""


@pytest.mark.cluster
def test_status_shows_each_ranks_step_rate_and_time_left(cluster, tmp_path):
    pytest.importorskip("tqdm")
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "prog.py").write_text(PROG)
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], code="project",
                          command="python prog.py", wait_for_rank0=False)
    assert distctl("up", str(inv), "--detach", cwd=tmp_path).returncode == 0
    try:
        def rates() -> list[dict] | None:
            ranks = json.loads(distctl("status", "--json", cwd=tmp_path).stdout)["ranks"]
            return ranks if all(r["steps_per_s"] for r in ranks) else None

        ranks = wait_for(rates, 120, "both ranks' step rates")
        assert [(r["rank"], r["total"]) for r in ranks] == [(0, 100000), (1, 100000)]
        assert all(r["step"] > 0 and r["left_s"] > 0 for r in ranks)
        assert ranks[1]["metrics"]["loss"] > 0
        text = distctl("status", cwd=tmp_path).stdout
        assert "[node1 r0] running, step " in text and "/100000 (" in text and " left)" in text
    finally:
        distctl("stop", "--grace", "1", cwd=tmp_path)


def test_latest_finds_the_last_progress_line_of_a_chunk_past_lines_that_only_look_alike():
    from orchestrator.hostside.tracking import latest

    chunk = b"".join(b"distctl: step=%d total=100000\nnoise %d\n" % (i, i) for i in range(50000))
    assert latest(chunk + b"the word it] in a line\n") == (49999, 100000, {})
    assert latest(b"x\r 5/9 [00:01<00:04, 1.0it/s]\r 6/9 [00:02<00:03, 1.0it/s]") == (6, 9, {})
    assert latest(b"nothing to see\n") is None


def test_the_agents_progress_file_follows_the_log_from_the_attempt_and_writes_at_most_once_a_second(
        tmp_path, monkeypatch):
    from orchestrator.hostside.tracking import ProgressFile

    monkeypatch.chdir(tmp_path)
    log = tmp_path / "rank3.log"
    log.write_bytes(b"distctl: step=90 total=100\n--- distctl: resumed ---\n")  # an earlier attempt's
    progress = ProgressFile(3, log.stat().st_size)
    out = tmp_path / "rank3.progress"
    progress.pump(10.0)
    assert not out.exists()  # nothing of this attempt yet
    with log.open("ab") as f:
        f.write(b"distctl: step=1 total=100 loss=2.5\n")
    progress.pump(10.0)
    assert out.read_text() == "step=1 total=100 rate=- at=10.000 loss=2.5\n"
    with log.open("ab") as f:
        f.write(b"  5%| | 5/100 [00:01<00:19,  4.00it/s]\r")  # a tqdm redraw, no newline yet
    progress.pump(10.5)
    assert out.read_text().startswith("step=1 ")  # written at most once a second
    progress.pump(10.6, final=True)  # the rank ended: its last step at once
    assert out.read_text() == "step=5 total=100 rate=8 at=10.500 loss=2.5\n"  # 4 steps in 0.5 s
