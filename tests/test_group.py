"""The typed group result: every host's outcome collected, failures per host, nothing lost to
an exception; and `stop`, which must try every host, on top of it. Fake connections only."""

from __future__ import annotations

import pytest

from orchestrator.errors import ExitCode, GroupError, HostError
from orchestrator.ssh.group import GroupResult, fan_out
from orchestrator.inventory.model import Host, Ssh
from orchestrator.ssh.remote import Result
from orchestrator.plan.state import HostState, RankState, RunState
from orchestrator.run.watch import stop_everywhere


def work(n: int) -> int:
    if n == 1:
        raise HostError("h1", "refused", ExitCode.HOST_KEY)
    if n == 3:
        raise KeyError("surprise")
    return n * 10


def test_fan_out_collects_successes_and_failures_per_host_and_raises_nothing():
    result = fan_out("step", range(5), work, 2, lambda n: f"h{n}")
    assert result.ok == {"h0": 0, "h2": 20, "h4": 40}
    assert {name: (e.host, e.cause, e.exit_code) for name, e in result.failed.items()} == {
        "h1": ("h1", "refused", ExitCode.HOST_KEY),
        "h3": ("h3", "KeyError: 'surprise'", ExitCode.UNREACHABLE),  # a bug on one host: the others still count
    }


def test_raise_for_names_every_failure_in_order_with_the_worst_code():
    with pytest.raises(GroupError) as caught:
        fan_out("step", range(5), work, 2, lambda n: f"h{n}").raise_for("connect")
    assert str(caught.value).splitlines() == ["connect failed on 2 host(s):", "  h1: refused",
                                              "  h3: KeyError: 'surprise'"]
    assert caught.value.exit_code == ExitCode.HOST_KEY


def test_raise_for_returns_the_successes_when_nothing_failed():
    assert fan_out("step", [0, 2], work, 4, str).raise_for("step") == {"0": 0, "2": 20}
    assert GroupResult[int]().raise_for("nothing") == {}


class _StopHost:
    """Answers the stop script with what is left on the host, or fails."""

    def __init__(self, name: str, left: int | None):
        self.name, self.left, self.commands = name, left, 0

    def run(self, command: str, stdin: bytes = b"", timeout: float | None = None) -> Result:
        self.commands += 1
        if self.left is None:
            raise HostError(self.name, "connection lost: EOF")
        return Result(0, f"left={self.left}\n", "")


def test_stop_everywhere_tries_every_host_and_returns_each_problem():
    names = ["n1", "n2", "n3", "n4"]
    state = RunState("r-1", "inv.yaml", Ssh(), 4, "10.0.0.1", 29500,
                     tuple(HostState(Host(n, "10.0.0.1"), "/w/runs/r-1", (RankState(i, 0),))
                           for i, n in enumerate(names)))
    conns = {"n1": _StopHost("n1", 0), "n2": _StopHost("n2", None), "n4": _StopHost("n4", 2)}
    problems = stop_everywhere(state, conns, grace=0, fanout=2)
    assert problems == {"n2": "connection lost: EOF", "n3": "unreachable", "n4": "2 process(es) left"}
    assert [c.commands for c in conns.values()] == [1, 1, 1]
