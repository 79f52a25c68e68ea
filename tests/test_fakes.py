"""The shared fakes behave like the interface they stand in for (a wrong fake misleads every test
that uses it): orchestrator/ssh/stream.py's loop reads a FakeStream like an SSH channel."""

from __future__ import annotations

import time

import pytest
from support.fakes import Call, FakeConnection, FakeStream, exited, said

from orchestrator.errors import HostError
from orchestrator.ssh.remote import Result
from orchestrator.ssh.stream import Followed, follow


def test_a_fake_stream_is_followed_line_by_line_through_its_pauses():
    stream = FakeStream(b"0 a\n0 b", 0.2, b"c\n", exited(0, 0, 1.5))
    lines: list[tuple[float, str]] = []
    started = time.monotonic()
    follow([Followed("node1", stream)], lambda f, text: lines.append((time.monotonic() - started, text)))
    assert [text for _, text in lines] == ["0 a", "0 bc", "exit 0 0 1.500"]  # a partial line waits for its end
    assert lines[0][0] < 0.2 <= lines[1][0]
    stream.close()
    stream.close()  # twice is harmless: the descriptor is not closed again
    assert stream.closed and stream.ended


def test_feed_and_end_reach_the_reader_and_the_script_after_the_end_is_dropped():
    stream = FakeStream(said(1, "x"), 5.0, said(1, "never"))
    stream.feed(said(1, "stopping"))
    stream.end()
    out = b""
    while chunk := stream.read():
        out += chunk
    assert out == b"1 x\n1 stopping\n"
    stream.close()


def test_a_fake_connection_answers_by_rule_records_calls_and_runs_out_of_streams():
    first = FakeStream()
    conn = (FakeConnection("node1", streams=[first])
            .answer("cat", Result(0, "text\n", ""))
            .answer("ca", Result(1, "", "never: the first rule that matches wins"))
            .answer("boom", HostError("node1", "broken"))
            .answer("echo", lambda call: Result(0, call.stdin.decode(), "")))
    assert conn.run("cat f").stdout == "text\n"
    assert conn.run("echo", stdin=b"in", timeout=3).stdout == "in"
    assert conn.run("true") == Result(0, "", "")
    with pytest.raises(HostError):
        conn.run("boom")
    assert conn.calls == [Call("cat f"), Call("echo", b"in", 3), Call("true"), Call("boom")]
    assert conn.open_stream("follow") is first
    with pytest.raises(HostError, match="no stream left"):
        conn.open_stream("follow again")
    assert conn.opened == ["follow", "follow again"]
    first.close()
