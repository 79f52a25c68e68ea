"""watch.py's decisions, in process: who is blamed, when the run is torn down, what `up` says.

`watch_run` is driven as `up` drives it, with FakeConnections whose followers replay scripted
output (`R line`, `exit R CODE TIME`, `hb`), so each outcome's exit code and exact message can
be asserted. test_lifecycle.py and test_links.py show the same on the real cluster.
"""

from __future__ import annotations

import time

import pytest
from support.fakes import HEARTBEAT, FakeStream, exited, relayed, said
from support.watched import MASTER, PORT, RUNDIR, STOP, a_run, host, stops, watch

from orchestrator.run import links
from orchestrator.errors import ExitCode, HostError
from orchestrator.ssh.remote import Result
from orchestrator.plan.scripts import follow_script, program
from orchestrator.run.watch import Outcome, on_workstation_clock, root_causes

pytestmark = pytest.mark.timeout(60)  # a decision that never comes must not hold up the suite

LATE_S = 10.0  # a scripted rank nobody stops exits this late; the tests that stop it finish far sooner
HANG_HINT = "; the run was stopped. Check the interface and firewall (distctl check), and the rank logs (distctl logs)"


# ------------------------------------------------------------------ success


def test_every_rank_exiting_0_is_success_and_nothing_is_stopped():
    state = a_run(node1=(0, 1), node2=(2,))
    conns = {"node1": host("node1", FakeStream(said(0, "joined rank=0"), said(1, "joined rank=1"), HEARTBEAT,
                                               said(0, "done rank=0"), exited(0, 0, 100.0), exited(1, 0, 100.1))),
             "node2": host("node2", FakeStream(said(2, "joined rank=2"), HEARTBEAT, 0.1, exited(2, 0, 100.2)))}
    outcome, ui = watch(state, conns)
    assert outcome == Outcome(ExitCode.OK, "run t-1 finished: 3 rank(s) exited 0")
    assert [line for line in ui.rank_lines if line[0] == "node1"] == [
        ("node1", 0, "joined rank=0"), ("node1", 1, "joined rank=1"), ("node1", 0, "done rank=0")]
    assert [line for line in ui.rank_lines if line[0] == "node2"] == [("node2", 2, "joined rank=2")]  # no `hb`
    assert conns["node1"].opened == [follow_script("python3", RUNDIR, {0: 0, 1: 0})]  # every line, from the first
    assert [c.commands for c in conns.values()] == [[], []]  # no stop anywhere
    assert ui.lines == []


# ------------------------------------------------------------------ a failed rank: whom to blame

# Rank 0 (node1) ends first by the hosts' clocks, but distctl reads rank 1's exit first: node1's
# follower is slower. Blame follows the clocks and, for the trainer, what its codes mean.
TAIL = "last lines of its log:\n    epoch=1 rank={r} loss=2.3\n    error rank={r} message=boom"


@pytest.mark.parametrize("trainer, code0, code1, blamed", [
    # the trainer's 4 (peer lost) is a consequence of another rank's failure, even an earlier one
    (True, 4, 1, "rank 1 on node2 failed first: exited with code 1; " + TAIL.format(r=1)),
    # so is a rank killed with its wrapper (no exit code at all)
    (True, None, 1, "rank 1 on node2 failed first: exited with code 1; " + TAIL.format(r=1)),
    # among causes, the earliest by the host clocks, not the first read
    (True, 1, 1, "rank 0 on node1 failed first: exited with code 1; " + TAIL.format(r=0)),
    # a user program's codes mean nothing to distctl: the earliest, whatever the code
    (False, 4, 1, "rank 0 on node1 failed first: exited with code 4; " + TAIL.format(r=0)),
    (False, 143, 1, "rank 0 on node1 failed first: exited with code 143 (signal 15); " + TAIL.format(r=0)),
])
def test_the_first_failure_is_blamed_and_the_run_torn_down(trainer, code0, code1, blamed):
    state = a_run(trainer, node1=(0,), node2=(1,))
    conns = {"node1": host("node1", FakeStream(said(0, "epoch=1 rank=0 loss=2.3"), 0.3,
                                               said(0, "error rank=0 message=boom"), exited(0, code0, 100.0))),
             "node2": host("node2", FakeStream(said(1, "epoch=1 rank=1 loss=2.3", "error rank=1 message=boom"),
                                               exited(1, code1, 100.4)))}
    outcome, ui = watch(state, conns)
    assert outcome == Outcome(ExitCode.RUN_FAILED, blamed)
    # teardown starts at the first non-zero exit read, and reaches every host
    assert ui.warnings == ["rank 1 on node2 exited with code 1; stopping the run on every host"]
    # (before it, the stacks of the ranks still running: none here, the fake hosts answer nothing)
    assert [[c for c in x.commands if "stacks" not in c] for x in conns.values()] == [[STOP], [STOP]]


@pytest.mark.parametrize("trainer", [True, False])
def test_a_rank_gone_without_an_exit_code_is_blamed_with_its_host_not_the_ranks_stopped_for_it(trainer):
    # node2 rebooted: its follower reports rank 1 with no code and no time. The teardown then
    # stops rank 0 on node1, which exits 143 with a time: it must not be blamed.
    state = a_run(trainer, node1=(0,), node2=(1,))
    node1 = FakeStream(said(0, "up rank 0"), LATE_S, exited(0, 0, 300.0))
    conns = {"node1": host("node1", node1, stop=stops(node1, 0)),
             "node2": host("node2", FakeStream(said(1, "up rank 1"), 0.2, exited(1, None)))}
    outcome, ui = watch(state, conns)
    gone = "processes are gone without an exit code (host rebooted or processes killed)"
    assert ui.warnings == [f"node2: rank 1's {gone}; stopping the run on every host"]
    assert outcome == Outcome(ExitCode.RUN_FAILED, f"node2: rank 1 failed first: its {gone}; "
                                                   "last lines of its log:\n    up rank 1")


@pytest.mark.parametrize("exits, times, trainer, order", [
    ({0: 4, 1: 1, 2: 0}, {0: 1.0, 1: 2.0, 2: 0.5}, True, [1, 0]),  # 0s are no failures
    ({0: None, 1: 4, 2: 3}, {0: 1.0, 1: 2.0, 2: 3.0}, True, [2, 0, 1]),  # causes first, then earliest
    # a user program's codes mean nothing: earliest first; but a rank killed with its wrapper
    # (no code) was most likely killed by the teardown
    ({0: None, 1: 4, 2: 3}, {0: 1.0, 1: 2.0, 2: 3.0}, False, [1, 2, 0]),
    ({0: 1, 1: 1}, {1: 5.0}, True, [1, 0]),  # an exit without a time (`-`) counts as the latest
])
def test_root_causes_order_failed_ranks_most_likely_first(exits, times, trainer, order):
    assert root_causes(exits, times, trainer) == order


def test_failures_are_ordered_on_the_workstations_clock_not_each_hosts():
    # node2 (rank 1) runs 5 s ahead. Rank 1 failed first: at 1000.5 by the workstation's clock,
    # but its host stamped its exit record 1005.5; rank 0 (node1, on time) failed at 1001.0.
    exits = {0: 1, 1: 137}
    stamped = {0: 1001.0, 1: 1005.5}
    assert root_causes(exits, stamped) == [0, 1]  # uncorrected: the skew decides
    corrected = on_workstation_clock(stamped, {0: 0.0, 1: 5.0})
    assert corrected == {0: 1001.0, 1: 1000.5}
    assert root_causes(exits, corrected) == [1, 0]
    assert on_workstation_clock(stamped, {}) == stamped  # offsets unknown (an older run record)
    # a peer-lost exit stays a consequence whatever the clocks say
    assert root_causes({0: 4, 1: 1}, on_workstation_clock({0: 990.0, 1: 1005.5}, {1: 5.0})) == [1, 0]


def test_a_rank_that_vanished_before_distctl_stopped_anything_is_named_first():
    # node2 rebooted: rank 1 left no exit code. distctl's teardown then stopped rank 0, which
    # recorded 143 (SIGTERM) with a time, while rank 1 has none.
    assert root_causes({0: 143, 1: None}, {0: 1010.0}, trainer=False, vanished={1}) == [1, 0]
    assert root_causes({0: 143, 1: None}, {0: 1010.0}, trainer=False) == [0, 1]  # without it, the victim
    # the trainer: rank 0 lost its peer (4) before distctl even heard of rank 1
    assert root_causes({0: 4, 1: None}, {0: 1000.2}, vanished={1}) == [1, 0]
    # no exit code after distctl's own teardown (its SIGKILL): still a consequence
    assert root_causes({0: 1, 1: None}, {0: 1000.0}) == [0, 1]


# ------------------------------------------------------------------ stopped


def test_a_stopped_trainer_run_is_resumable_and_nothing_is_torn_down():
    state = a_run(node1=(0,), node2=(1,))
    conns = {"node1": host("node1", FakeStream(said(0, "stopped rank=0 epoch=2 step=0"), exited(0, 143, 100.0))),
             "node2": host("node2", FakeStream(said(1, "stopped rank=1 epoch=2 step=0"), exited(1, 143, 100.1)))}
    outcome, ui = watch(state, conns)
    assert outcome == Outcome(ExitCode.STOPPED, "run t-1 was stopped (checkpointed); "
                                                   "continue it with: distctl up /inv/a.yaml --resume")
    assert [c.commands for c in conns.values()] == [[], []]
    assert ui.warnings == []


# ------------------------------------------------------------------ a host out of reach


def test_a_host_that_stays_unreachable_leaves_the_run_state_unknown(monkeypatch):
    refused = HostError("node2", "connection to 10.0.0.2:22 refused (is sshd running?)")

    def connect(host, ssh):
        raise refused

    monkeypatch.setattr(links, "connect", connect)
    state = a_run(node1=(0,), node2=(1,))
    conns = {"node1": host("node1", FakeStream(said(0, "joined rank=0"), 0.5, exited(0, 0, 100.0))),
             # node2's follower ends before its rank does (the link broke); reopening it fails
             "node2": host("node2", FakeStream(said(1, "joined rank=1")))}
    conns["node2"].streams.append(refused)
    outcome, ui = watch(state, conns)
    assert outcome == Outcome(ExitCode.UNREACHABLE, (
        "node2 unreachable (rank(s) 1): run state unknown (node2: connection to 10.0.0.2:22 refused (is sshd "
        "running?)). Re-attach: distctl logs -f t-1   Status: distctl status t-1"))
    assert ui.warnings == ["node2: connection lost, reconnecting",
                           "node2: unreachable for 0.1 s (connection to 10.0.0.2:22 refused (is sshd running?)); "
                           "run state unknown. Re-attach with: distctl logs -f t-1"]
    assert len(conns["node2"].opened) == 2  # the first follower, then one try on the same connection
    assert [c.commands for c in conns.values()] == [[], []]  # an unreachable host is no failed rank


# ------------------------------------------------------------------ the join watchdog


@pytest.mark.parametrize("rank0_said, never_joined", [
    # rank 0 waits in the rendezvous for the others: only those that never reached it are named
    (["rendezvous rank=0 world_size=2 backend=gloo"], "node2 r1"),
    # the trainer said nothing: every rank still missing
    ([], "node1 r0, node2 r1"),
])
def test_trainer_ranks_that_never_join_are_named_and_the_run_stopped(rank0_said, never_joined):
    state = a_run(node1=(0,), node2=(1,))
    first = FakeStream(said(0, *rank0_said), LATE_S, exited(0, 0))
    second = FakeStream(HEARTBEAT, 0.2, HEARTBEAT, LATE_S, exited(1, 0))
    conns = {"node1": host("node1", first, stop=stops(first, 0)),
             "node2": host("node2", second, stop=stops(second, 1))}
    started = time.monotonic()
    outcome, ui = watch(state, conns, join_timeout=0.3)
    assert outcome == Outcome(ExitCode.HANG, f"ranks never joined: {never_joined}" + HANG_HINT)
    assert ui.warnings == [f"ranks never joined within job.join_timeout=0.3s: {never_joined}; "
                           "stopping the run on every host"]
    # (before it, the stacks of the ranks still running: none here, the fake hosts answer nothing)
    assert [[c for c in x.commands if "stacks" not in c] for x in conns.values()] == [[STOP], [STOP]]
    assert time.monotonic() - started < LATE_S / 2  # ended by the stop, not by the script


def test_trainer_ranks_that_all_joined_are_left_alone_past_the_join_timeout():
    state = a_run(node1=(0,), node2=(1,))
    conns = {"node1": host("node1", FakeStream(said(0, "rendezvous rank=0", "joined rank=0"), 1.0, exited(0, 0, 1.0))),
             "node2": host("node2", FakeStream(said(1, "rendezvous rank=1", "joined rank=1"), 1.0, exited(1, 0, 1.0)))}
    outcome, ui = watch(state, conns, join_timeout=0.2)
    assert outcome.code == ExitCode.OK, outcome.message
    assert [c.commands for c in conns.values()] == [[], []]


STORE_PEERS = program("python3", "store_peers", MASTER, PORT)  # how many connect to rank 0's store


@pytest.mark.parametrize("connected, outcome", [
    # node2 holds no connection to rank 0's store while node1's rank does: node2 never joined
    ((1, 0), Outcome(ExitCode.HANG, f"ranks never joined: node2 (0 of 1 rank(s) connected to {MASTER}:{PORT})"
                                    + HANG_HINT)),
    # no host holds any: a rendezvous distctl cannot see, so nobody is judged
    ((0, 0), Outcome(ExitCode.OK, "run t-1 finished: 2 rank(s) exited 0")),
])
def test_a_user_program_is_judged_by_connections_to_rank0s_store(connected, outcome):
    state = a_run(False, node1=(0,), node2=(1,))
    streams = [FakeStream(said(rank, "loading"), 1.0, exited(rank, 0, 1.0)) for rank in (0, 1)]
    conns = {name: host(name, stream, stop=stops(stream, rank)).answer(STORE_PEERS, Result(0, f"connected={n}\n", ""))
             for rank, (name, stream, n) in enumerate(zip(("node1", "node2"), streams, connected))}
    assert watch(state, conns, join_timeout=0.2)[0] == outcome
    # The ranks the watchdog stopped exit 143: that is not a second failure to tear down for.
    stopped = [sum(1 for c in conn.commands if c == STOP) for conn in conns.values()]
    assert stopped == ([1, 1] if outcome.code == ExitCode.HANG else [0, 0])


# ------------------------------------------------------------------ the restart agents' news (job.max_restarts)


def test_a_restart_relayed_by_every_host_is_told_once_and_noted_in_the_success():
    restart = relayed("restart 1/2 after node2 r1 exited 7")
    state = a_run(max_restarts=2, node1=(0,), node2=(1,))
    conns = {"node1": host("node1", FakeStream(restart, said(0, "attempt=1 rank=0"), exited(0, 0, 1.0))),
             "node2": host("node2", FakeStream(restart, said(1, "attempt=1 rank=1"), exited(1, 0, 1.0)))}
    outcome, ui = watch(state, conns)
    assert outcome == Outcome(ExitCode.OK, "run t-1 finished: 2 rank(s) exited 0, after 1 restart(s)")
    assert ui.warnings == ["restart 1/2 after node2 r1 exited 7"]


def test_a_host_the_agents_dropped_is_not_followed_and_its_ranks_do_not_count():
    state = a_run(max_restarts=1, node1=(0,), node2=(1,))
    conns = {"node1": host("node1", FakeStream(relayed("dropped node2"), 0.5, exited(0, 0, 2.0))),
             # node2's own agent relays the drop too, then its rank is killed
             "node2": host("node2", FakeStream(said(1, "attempt=0 rank=1"), relayed("dropped node2"),
                                               exited(1, None)))}
    outcome, ui = watch(state, conns)
    assert outcome == Outcome(ExitCode.OK, "run t-1 finished: 1 rank(s) exited 0, without node2 (dropped)")
    assert ui.warnings == ["node2: dropped from the run; it goes on without it"]
    assert [c.commands for c in conns.values()] == [[], []]  # a dropped host's kill is no failed rank


def test_restarts_exhausted_is_its_own_exit_code_with_the_agents_reason_first():
    why = "restarts exhausted (1/1): node2 r1 exited 7"
    state = a_run(False, max_restarts=1, node1=(0,), node2=(1,))
    conns = {"node1": host("node1", FakeStream(relayed(f"end exhausted: {why}"), 0.3, exited(0, 143, 2.0))),
             "node2": host("node2", FakeStream(said(1, "attempt=1 rank=1"), relayed(f"end exhausted: {why}"),
                                               exited(1, 7, 1.0)))}
    outcome, _ = watch(state, conns)
    assert outcome == Outcome(ExitCode.RESTARTS_EXHAUSTED, f"{why}\nrank 1 on node2 failed first: exited with "
                                                           "code 7; last lines of its log:\n    attempt=1 rank=1")
