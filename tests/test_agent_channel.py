"""The agents' channel (hostside/agent.py, issue 24): only an agent holding the run's key is
heard. A real coordinator agent runs here on loopback, in a run directory of its own; strangers
connect with plain sockets, a member is played with the agent's own Link and the key."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import cannot_run
from orchestrator import hostside
from orchestrator.hostside import agent
from orchestrator.hostside.agent_policy import Coordinator, Member
from test_agent_policy import HOSTS, FakeRanks, FakeRunDir

KEY = "ab" * 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Coordinated:
    """A coordinator agent process for hosts a (rank 0, a sleeping group here) and b (rank 1)."""

    def __init__(self, rundir: Path) -> None:
        self.rundir, self.port = rundir, free_port()
        (rundir / "env").write_text(f"export X=1\n{agent.KEY_LINE}{KEY}\n")
        self.rank = subprocess.Popen(["sh", "-c", "sleep 120"], cwd=rundir, start_new_session=True)
        (rundir / "rank0.pid").write_text(f"{self.rank.pid}\n")
        cfg = {"run": "r", "me": 0, "hosts": [{"name": "a", "ranks": [0]}, {"name": "b", "ranks": [1]}],
               "ranks": [{"rank": 0}], "restart": "true", "coord": ["127.0.0.1", self.port],
               "master": ["127.0.0.1", 1], "max_restarts": 2, "min_hosts": 2, "lost_after": 600.0, "grace": 1.0,
               "final_codes": [], "peer_lost": [], "wait_port": False, "heartbeat": 0.5, "silent": 3.0,
               "settle": 0.5}
        self.proc = subprocess.Popen([sys.executable, "-c", hostside.source("agent"), json.dumps(cfg)],
                                     cwd=rundir, stderr=subprocess.PIPE, text=True)
        wait_for(self.listening, "the coordinator to listen")

    def listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def log(self) -> str:
        path = self.rundir / "agent.log"
        return path.read_text() if path.exists() else ""

    def state(self) -> dict:
        return json.loads((self.rundir / "agent.state").read_text())

    def member(self) -> agent.Link:
        """Agent b, as the real one connects: the key, the nonce exchange, then hello."""
        link = agent.Link(socket.create_connection(("127.0.0.1", self.port), timeout=5), KEY.encode())
        link.send({"t": "hello", "host": 1, "attempt": 0, "exits": []})
        wait_for(lambda: link.receive() is not None and link.theirs is not None, "the coordinator's nonce")
        return link

    def close(self) -> None:
        for proc in (self.proc, self.rank):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL) if proc is self.rank else proc.kill()
            proc.wait()


def stranger(port: int, data: bytes, linger: bool = False) -> socket.socket | None:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(data)
    except OSError:
        pass
    if linger:
        return s
    s.close()
    return None


ATTACKS = [
    b'{"t": "stopping"}\n',
    b'{"t": "hello", "host": 1, "attempt": 0, "exits": [[1, 137, 0]]}\n',
    b"[1, 2, 3]\n",
    b"\xff\xfe garbage \x00\n",
    b"x" * 70000,
    b'{"t": "nonce", "n": "00000000000000000000000000000000"}\n{"t": "stopping", "seq": 1, "mac": "00"}\n',
    b"",
]


def test_a_stranger_cannot_stop_restart_or_crash_the_coordinator_and_the_real_member_still_can(tmp_path):
    c = Coordinated(tmp_path)
    try:
        for data in ATTACKS:
            stranger(c.port, data)
        wait_for(lambda: c.log().count("dropped a connection from 127.0.0.1") >= 5, "the strangers to be dropped")
        assert "dropped a connection from 127.0.0.1: bad or missing MAC (not an agent of this run)" in c.log()
        assert "dropped a connection from 127.0.0.1: no nonce first" in c.log()
        assert "dropped a connection from 127.0.0.1: a line longer than 16384 bytes" in c.log()
        assert c.proc.poll() is None and c.state()["outcome"] is None and c.state()["restarts"] == []
        assert c.rank.poll() is None  # rank 0 trains on
        # the real member is heard, and can stop the run
        link = c.member()
        wait_for(lambda: "b connected (attempt 0)" in c.log(), "the member to be heard")
        assert link.send({"t": "stopping"})
        wait_for(lambda: c.state()["outcome"] == "stopped", "the stop")
        assert c.rank.wait(timeout=30) is not None
        assert c.proc.wait(timeout=30) == 0, c.proc.stderr.read() if c.proc.stderr else ""
    finally:
        c.close()


def test_the_coordinator_keeps_working_after_1000_junk_connections(tmp_path):
    c = Coordinated(tmp_path)
    held: list[socket.socket | None] = []
    try:
        # silent ones that never say anything cannot pile up: past MAX_PENDING the oldest goes
        for _ in range(agent.MAX_PENDING + 8):
            held.append(stranger(c.port, b"", linger=True))
        wait_for(lambda: f"more than {agent.MAX_PENDING} not authenticated" in c.log(), "the oldest to be closed")
        for i in range(1000):
            stranger(c.port, ATTACKS[i % len(ATTACKS)])
        link = c.member()
        wait_for(lambda: "b connected (attempt 0)" in c.log(), "the member to be heard after the flood")
        assert c.proc.poll() is None and c.state()["outcome"] is None and c.state()["restarts"] == []
        assert link.send({"t": "exit", "rank": 1, "code": 7, "attempt": 0})
        wait_for(lambda: c.state()["restarts"] == ["b r1 exited 7"], "the real member's failure to count")
    finally:
        for s in held:
            if s is not None:
                s.close()
        c.close()


# ------------------------------------------------------------------ fuzz

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
KINDS = st.sampled_from(["hello", "exit", "stopped", "stopping", "hb", "restart", "start", "end", "nonce", "x"])
MESSAGES = st.dictionaries(st.sampled_from(["host", "attempt", "exits", "rank", "code", "hosts", "text", "outcome",
                                            "state"]), JSON, max_size=5).flatmap(
    lambda d: KINDS.map(lambda k: {**d, "t": k}))


def world(kind):
    cfg = {"me": 0 if kind is Coordinator else 1, "hosts": HOSTS, "ranks": [{"rank": 0}], "max_restarts": 2,
           "min_hosts": 2, "lost_after": 5.0, "grace": 1.0, "final_codes": [], "peer_lost": [], "wait_port": False}
    return kind(cfg, FakeRanks([0 if kind is Coordinator else 1]), FakeRunDir(), lambda: 0.0)


@settings(max_examples=300, deadline=None)
@given(st.lists(MESSAGES | JSON.filter(lambda v: isinstance(v, dict)), max_size=6))
def test_no_message_crashes_either_agent(messages):
    """Whatever an (authenticated) peer sends, the policy drops what is malformed and never raises."""
    for kind in (Coordinator, Member):
        a = world(kind)
        if isinstance(a, Coordinator):
            a.opened(1)
        for msg in messages:
            a.receive(1 if kind is Coordinator else 0, dict(msg))
            a.tick()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300) | MESSAGES.map(lambda m: (json.dumps(m) + "\n").encode()), max_size=6))
def test_no_bytes_crash_a_link(chunks):
    ours, theirs = socket.socketpair()
    try:
        link = agent.Link(ours, KEY.encode())
        for chunk in chunks:
            if chunk:
                theirs.sendall(chunk)
            got = link.receive()
            if got is None:
                assert link.why  # dropped, and said why
                break
            assert got == []  # nothing unauthenticated gets through
    finally:
        ours.close()
        theirs.close()


def test_the_joined_agent_runs_on_python_38(tmp_path):
    """The agent is three files joined into one program (hostside.PARTS): it must run on an old host."""
    from test_hostside import oldest_python

    python = oldest_python()
    if not python:
        cannot_run("no Python 3.8 here (pyenv or python3.8 on PATH)")
    (tmp_path / "env").write_text(f"{agent.KEY_LINE}{KEY}\n")
    cfg = {"run": "r", "me": 1, "hosts": [{"name": "a", "ranks": [0]}, {"name": "b", "ranks": [1]}],
           "ranks": [{"rank": 1}], "restart": "true", "coord": ["127.0.0.1", free_port()], "master": ["127.0.0.1", 1],
           "max_restarts": 2, "min_hosts": 2, "lost_after": 0.5, "grace": 1.0, "final_codes": [], "peer_lost": [],
           "wait_port": False, "heartbeat": 0.5, "silent": 3.0, "settle": 0.5}
    done = subprocess.run([python, "-c", hostside.source("agent"), json.dumps(cfg)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    state = json.loads((tmp_path / "agent.state").read_text())
    assert state["outcome"].startswith("failed: lost contact with the coordinator on a for ")
