"""Small truths of issue 25 that need no cluster: stable host colours, attempts counted from 1,
pushed bytes in the units of the code summary."""

from __future__ import annotations

from orchestrator.cli import render
from orchestrator.console.ui import Ui


def test_a_hosts_colour_does_not_depend_on_the_order_hosts_were_seen():
    one, two = Ui(color=True), Ui(color=True)
    for host in ("gpu1", "gpu2", "gpu3"):
        one.prefix(host)
    for host in ("gpu3", "gpu2", "gpu1"):
        two.prefix(host)
    assert [one.prefix(h) for h in ("gpu1", "gpu2", "gpu3")] == [two.prefix(h) for h in ("gpu1", "gpu2", "gpu3")]


class _Found:
    def __init__(self, attempt: int):
        self.restarts = {"attempt": attempt, "max_restarts": 1, "restarts": ["rank 1 exited 1"], "dropped": [],
                         "outcome": None}


def test_the_second_attempt_is_attempt_2():
    assert render.status_restarts(_Found(1))[0] == "attempt 2 of at most 2 (restarts used 1 of 1)"  # type: ignore[arg-type]


# ------------------------------------------------------------------ tails (orchestrator/run/tails.py)

from orchestrator.run.tails import log_lines, tail_of  # noqa: E402


def test_a_log_reads_like_the_stream():
    text = ("loading\n\r 10%|#   |\r 50%|##  |\r100%|####|\n"  # a bar, redrawn, then finished
            "\r 20%|#   |--- distctl: resumed 2026-01-01T00:00:00Z ---\n"  # a marker after a partial bar
            "\r 30%|##  |Traceback (most recent call last):\n"  # a crash while the bar was partial
            "crlf line\r\n")
    assert log_lines(text) == ["loading", "100%|####|", " 20%|#   |", "--- distctl: resumed 2026-01-01T00:00:00Z ---",
                               " 30%|##  |", "Traceback (most recent call last):", "crlf line"]


def test_a_tail_keeps_the_whole_last_traceback():
    lines = [f"step {i}" for i in range(100)] + ["Traceback (most recent call last):"] + \
        [f"  frame {i}" for i in range(14)] + ["RuntimeError: boom"]
    assert tail_of(lines, 10) == lines[100:]
    assert tail_of(lines[:100], 10) == lines[90:100]
    far = ["Traceback (most recent call last):"] + [f"  frame {i}" for i in range(80)]
    assert tail_of(far, 10) == far[-10:]  # a traceback that began more than MAX_LINES back: the last lines


# ------------------------------------------------------------------ partial lines (hostside/follow.py)

import io  # noqa: E402

from orchestrator.hostside import follow as follower  # noqa: E402


def test_an_unfinished_line_travels_as_its_newest_redraw_at_most_every_interval(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clock = [100.0]
    monkeypatch.setattr(follower.time, "monotonic", lambda: clock[0])
    log = tmp_path / "rank0.log"
    sink = io.BytesIO()
    out = follower.Counted(sink)
    rank = follower.RankLog(0, 0)

    def pump(text: str, live: bool = True) -> bytes:
        with log.open("a") as f:
            f.write(text)
        before = len(sink.getvalue())
        rank.pump(out, live=live)
        return sink.getvalue()[before:]

    assert pump("loading\n\r 10%|#") == b"0 loading\np 0  10%|#\n"
    clock[0] += 1.0
    assert pump("\r 20%|##") == b""  # changed, but within the interval
    clock[0] += 1.0
    assert pump("") == b"p 0  20%|##\n"
    clock[0] += 5.0
    assert pump("") == b""  # unchanged: not again
    assert pump("\r100%|###|\n") == b"0 \r 10%|#\r 20%|##\r100%|###|\n"  # the whole line, as written
    replay = follower.RankLog(0, 0)
    replay.pump(out, live=False)
    assert b"p 0" not in sink.getvalue().split(b"100%|###|\n", 1)[1]  # a replay sends whole lines only


def test_a_partial_record_is_never_counted_as_a_line_shown():
    from orchestrator.inventory.model import Host, Ssh
    from orchestrator.run.links import HostLinks
    from orchestrator.plan.state import HostState, RankState, RunState
    from orchestrator.ssh.stream import Followed
    from orchestrator.run.watch import RankEvents

    state = RunState("r-1", "/inv.yaml", Ssh(), 1, "127.0.0.1", 29500,
                     (HostState(Host("node1", "127.0.0.1"), "/w/runs/r-1", (RankState(0, 0),)),))
    links = HostLinks(state, {}, None, 300.0)
    shown: list = []
    partials: list = []
    events = RankEvents(lambda host, rank, line: shown.append(line),
                        on_partial=lambda host, rank, text: partials.append((host, rank, text)))
    followed = Followed("node1", None)  # type: ignore[arg-type]
    for record in ("0 first", "p 0  50%|##", "p 0  60%|###", "0 \r 50%|##\r100%|####|"):
        links.line(followed, record, events.line)
    assert links.seen == {0: 2}  # a re-follow skips exactly the two lines shown
    assert partials == [("node1", 0, " 50%|##"), ("node1", 0, " 60%|###")]
    assert shown == ["first", "\r 50%|##\r100%|####|"]


def test_clean_reads_ages_like_people_write_them():
    import pytest

    from orchestrator.run.cleanup import parse_age
    from orchestrator.errors import DistctlError

    assert [parse_age(t) for t in ("7d", "12h", "30m", "90s", "2w", "3", "0")] == [
        604800, 43200, 1800, 90, 1209600, 259200, 0]
    with pytest.raises(DistctlError, match="expected a number with s, m, h, d or w"):
        parse_age("a week")


def test_args_after_the_double_dash_reach_the_trainer(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from orchestrator.cli.main import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "inv.yaml").write_text("hosts:\n  - {name: a, address: 127.0.0.1, connection: local, slots: 1}\n"
                                       "  - {name: b, address: 127.0.0.1, connection: local, slots: 1}\n"
                                       "job: {train: {epochs: 5}}\n")
    done = CliRunner().invoke(cli, ["up", "inv.yaml", "--dry-run", "--exclude", "a", "--", "--epochs", "1"])
    assert done.exit_code == 0, done.output
    launch = next(line for line in done.stdout.splitlines() if " -m trainer " in line)
    assert launch.endswith("--download --epochs 1) || exit 1")  # after the inventory's --epochs 5: the last wins
    assert "--epochs 5" in launch
    assert "run" in done.stdout and "  b (127.0.0.1): ranks 0" in done.stdout and "  a (" not in done.stdout
