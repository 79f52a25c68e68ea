"""A run on fake hosts, watched in process the way `up` watches one (orchestrator.run.watch.watch_run).

Each host is a FakeConnection whose follower is a scripted FakeStream and whose answer to
teardown's stop command is given (by default: nothing left). Used by test_watch (the decisions)
and test_contract (the trainer's real lines, read by the orchestrator).
"""

from __future__ import annotations

from collections.abc import Callable

from support.fakes import Call, FakeConnection, FakeStream, RecordingUi, exited

from orchestrator.inventory.model import Host, Ssh
from orchestrator.run.lifecycle import stop_script
from orchestrator.ssh.remote import Result
from orchestrator.plan.state import HostState, RankState, RunState
from orchestrator.run.watch import FAILURE_GRACE, Outcome, watch_run

RUN_ID, RUNDIR, MASTER, PORT = "t-1", "/w/runs/t-1", "10.0.0.1", 23456
STOP = stop_script(RUNDIR, RUN_ID, FAILURE_GRACE)  # what teardown runs on every host
NOTHING_LEFT = Result(0, "left=0\n", "")

Answer = Result | Callable[[Call], Result]


def a_run(trainer: bool = True, max_restarts: int = 0, **hosts: tuple[int, ...]) -> RunState:
    """A run on `hosts` (name=its ranks) whose lost hosts are given up after 0.1 s."""
    states = tuple(HostState(Host(name, f"10.0.0.{i}"), RUNDIR, tuple(RankState(r, j) for j, r in enumerate(ranks)))
                   for i, (name, ranks) in enumerate(hosts.items(), 1))
    world = sum(len(ranks) for ranks in hosts.values())
    return RunState(RUN_ID, "/inv/a.yaml", Ssh(reconnect_timeout=0.1), world, MASTER, PORT, states, trainer=trainer,
                    max_restarts=max_restarts)


def host(name: str, stream: FakeStream, stop: Answer = NOTHING_LEFT) -> FakeConnection:
    """A host whose follower is `stream` and whose stop answers `stop`."""
    return FakeConnection(name, streams=[stream]).answer(STOP, stop)


def stops(stream: FakeStream, *ranks: int) -> Callable[[Call], Result]:
    """The stop of a host whose `ranks` still run: they exit 143 (SIGTERM) and its follower ends."""
    def answer(call: Call) -> Result:
        stream.feed(b"".join(exited(rank, 143, 200.0) for rank in ranks))
        stream.end()
        return NOTHING_LEFT
    return answer


def watch(state: RunState, conns: dict[str, FakeConnection], join_timeout: float = 60.0) -> tuple[Outcome, RecordingUi]:
    """watch_run over `conns`, with what it told the user."""
    ui = RecordingUi()
    return watch_run(state, dict(conns), ui, join_timeout), ui
