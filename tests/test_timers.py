"""The timers of following a run (orchestrator/timers.py): defaults, the one test-only variable
that shortens them, and how they reach the hosts' follower and the link code."""

from __future__ import annotations

import shlex

import pytest

from orchestrator import timers
from orchestrator.errors import DistctlError, ExitCode
from orchestrator.run.links import HostLinks
from orchestrator.plan.scripts import follow_script, refollow_script
from orchestrator.ssh.stream import Followed
from orchestrator.timers import DEFAULT, TEST_TIMERS, Timers, parse_timers


def test_without_the_variable_the_defaults_apply():
    assert timers.current({}) == DEFAULT == Timers(heartbeat=2.0, stall=20.0, first_retry=0.5, max_retry=10.0)
    assert DEFAULT.stall >= 10 * DEFAULT.heartbeat  # a stall is many missed heartbeats, never one late one


def test_the_variable_sets_some_timers_and_leaves_the_others():
    assert timers.current({TEST_TIMERS: "stall=2, heartbeat=0.25"}) == Timers(
        heartbeat=0.25, stall=2.0, first_retry=0.5, max_retry=10.0)


@pytest.mark.parametrize("text", ["stall", "stall=", "stall=0", "stall=-1", "stall=soon", "settle=2"])
def test_a_bad_setting_is_one_clear_error(text):
    with pytest.raises(DistctlError) as error:
        parse_timers(text)
    assert error.value.exit_code == ExitCode.BAD_INPUT
    assert str(error.value) == (f"{TEST_TIMERS}: {text!r} is not NAME=SECONDS with SECONDS > 0 and NAME one of "
                                "heartbeat, stall, first_retry, max_retry, straggler_every")


def arguments(command: str) -> list[str]:
    """What a follower command passes its program (after `cd RUNDIR ...; python -c SOURCE`)."""
    words = shlex.split(command.partition("exit 1; }; ")[2])
    assert words[1] == "-c"
    return words[3:]


def test_the_follower_gets_its_heartbeat_as_an_argument_only_when_it_is_not_the_default():
    assert arguments(follow_script("python3", "/w", {0: 0})) == ["follow", "-1", "0:0"]
    assert arguments(follow_script("python3", "/w", {0: 0}, heartbeat=0.5)) == [
        "--heartbeat=0.5", "follow", "-1", "0:0"]
    assert arguments(refollow_script("python3", "/w"))[0] == "follow"
    assert arguments(refollow_script("python3", "/w", 0.5))[:2] == ["--heartbeat=0.5", "follow"]


def test_a_recorded_run_is_refollowed_with_the_heartbeat_the_variable_sets(monkeypatch):
    """`logs -f` on a run record (RunState, not a Plan) builds the follower the same way."""
    from orchestrator.plan.state import HostState, RunState

    hs = type("Hs", (), {"python": "python3", "rundir": "/w"})()
    monkeypatch.setenv(TEST_TIMERS, "heartbeat=0.5")
    assert arguments(RunState.refollow(None, hs))[:2] == ["--heartbeat=0.5", "follow"]  # type: ignore[arg-type]
    assert HostState  # the type a real caller passes


def test_the_link_code_calls_a_link_stalled_after_its_stall_timer():
    class State:
        hosts = ()
        ssh = None

    links = HostLinks(State(), {}, ui=None, reconnect_timeout=5, timers=Timers(stall=2.0))  # type: ignore[arg-type]
    followed = Followed("node2", stream=None)  # type: ignore[arg-type]
    assert not links.stalled(followed, 1.9) and links.stalled(followed, 2.1)
    assert HostLinks(State(), {}, None, 5).timers == DEFAULT  # type: ignore[arg-type]
