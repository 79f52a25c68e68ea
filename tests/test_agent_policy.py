"""The restart agents' decisions (orchestrator/hostside/agent_policy.py) without processes or
sockets: fake ranks, a fake run directory, in-memory links and a clock the test moves."""

from __future__ import annotations

import pytest

from orchestrator.hostside.agent_policy import COORDINATOR, Close, Coordinator, Member, Send, Watcher


class FakeRanks:
    """One host's ranks: the test makes them exit; TERM ends them at the next poll unless stubborn."""

    def __init__(self, ranks: list[int]) -> None:
        self.ranks = ranks
        self.exits: dict[int, tuple[int | None, float]] = {}
        self.ending: dict[int, int | None] = {}
        self.attempts: list[tuple[int, dict, str]] = []
        self.terminated = 0
        self.stubborn = False

    def exit(self, rank: int, code: int | None) -> None:
        self.ending[rank] = code

    def poll(self) -> list[tuple[int, int | None]]:
        new = [(r, c) for r, c in self.ending.items() if r not in self.exits]
        for r, c in new:
            self.exits[r] = (c, 0.0)
        self.ending = {}
        return new

    def running(self) -> list[int]:
        return [r for r in self.ranks if r not in self.exits]

    def terminate(self, grace: float) -> None:
        self.terminated += 1
        if not self.stubborn:
            for r in self.running():
                self.ending.setdefault(r, 143)

    def start(self, attempt: int, env: dict, marker: str) -> None:
        self.attempts.append((attempt, env, marker))
        self.exits, self.ending = {}, {}
        self.joins, self.output = set(), set()

    joins: set[int] = set()  # the ranks that joined in this attempt (the test says when)
    output: set[int] = set()  # ranks that printed since the last progressed() call

    def progressed(self) -> list[int]:
        out, self.output = sorted(self.output), set()
        return out

    def joined(self) -> list[int]:
        return sorted(self.joins)


class FakeRunDir:
    def __init__(self) -> None:
        self.stacks_why = []
        self.events: list[str] = []
        self.logs: list[str] = []
        self.state: dict = {}
        self.stopping = False

    def log(self, text: str) -> None:
        self.logs.append(text)

    def event(self, text: str) -> None:
        self.events.append(text)

    def write_state(self, state: dict) -> None:
        self.state = dict(state)

    def stop_requested(self) -> bool:
        return self.stopping

    def master_listening(self) -> bool:
        return True

    def pause(self, moment: str) -> None:
        pass

    stacks_taken = 0
    stacks_why: list[str]

    def take_stacks(self, why: str = "hang") -> None:
        self.stacks_taken += 1
        self.stacks_why.append(why)


HOSTS = [{"name": "a", "ranks": [0]}, {"name": "b", "ranks": [1]}, {"name": "c", "ranks": [2]}]
LOST_AFTER, GRACE = 5.0, 1.0


class World:
    """A coordinator (host 0) and members; member i reaches the coordinator on link id i."""

    def __init__(self, min_hosts: int = 3, max_restarts: int = 2, hang_timeout: float | None = None) -> None:
        self.now = 0.0
        self.ranks = {i: FakeRanks(h["ranks"]) for i, h in enumerate(HOSTS)}
        self.dirs = {i: FakeRunDir() for i in range(len(HOSTS))}
        self.agents: dict[int, Coordinator | Member] = {}
        for i, h in enumerate(HOSTS):
            cfg = {"me": i, "hosts": HOSTS, "ranks": [{"rank": r} for r in h["ranks"]], "max_restarts": max_restarts,
                   "min_hosts": min_hosts, "lost_after": LOST_AFTER, "grace": GRACE, "final_codes": [2, 3],
                   "peer_lost": [4], "wait_port": True, "heartbeat": 0.5, "silent": 2.0, "settle": 0.5,
                   "hang_timeout": hang_timeout}
            kind = Coordinator if i == 0 else Member
            self.agents[i] = kind(cfg, self.ranks[i], self.dirs[i], lambda: self.now)
        self.up: set[int] = set()  # members linked to the coordinator
        self.dead: set[int] = set()
        for i in self.members:
            self.connect(i)

    @property
    def coordinator(self) -> Coordinator:
        agent = self.agents[0]
        assert isinstance(agent, Coordinator)
        return agent

    @property
    def members(self) -> list[int]:
        return [i for i in self.agents if i != 0 and i not in self.dead]

    def member(self, i: int) -> Member:
        agent = self.agents[i]
        assert isinstance(agent, Member)
        return agent

    def connect(self, i: int) -> None:
        self.up.add(i)
        self.coordinator.opened(i)
        self.deliver(i, self.member(i).connected())

    def cut(self, i: int) -> None:
        """The link to member i breaks: both ends see it closed."""
        if i in self.up:
            self.up.discard(i)
            if 0 not in self.dead:
                self.deliver(0, self.coordinator.closed(i))
            if i not in self.dead:
                self.deliver(i, self.member(i).closed(COORDINATOR))

    def kill(self, i: int) -> None:
        """Agent i dies (its ranks do not): its links close."""
        self.dead.add(i)
        for m in [m for m in self.up if i in (0, m)]:
            self.cut(m)

    def deliver(self, src: int, actions: list) -> None:
        for action in actions:
            if isinstance(action, Close):
                self.cut(action.link if src == 0 else src)
            elif isinstance(action, Send):
                to = action.link if src == 0 else src
                if to not in self.up:
                    continue
                if src == 0:
                    self.deliver(to, self.member(to).receive(COORDINATOR, action.msg))
                else:
                    self.deliver(0, self.coordinator.receive(src, action.msg))

    def step(self, seconds: float = 0.1) -> None:
        self.now += seconds
        for i, agent in self.agents.items():
            if i not in self.dead:
                self.deliver(i, agent.tick())

    def run_until(self, condition, limit: float = 60.0) -> None:
        end = self.now + limit
        while not condition():
            assert self.now < end, "the condition never held"
            self.step()

    def events(self, i: int = 0) -> list[str]:
        return self.dirs[i].events


def test_a_quiet_run_keeps_its_links_by_heartbeats_and_ends_finished_when_every_rank_exits_0():
    w = World()
    w.run_until(lambda: w.now > 30)
    assert w.up == {1, 2} and not w.events()
    for i in range(3):
        w.ranks[i].exit(i, 0)
    w.run_until(lambda: all(a.finished() for a in w.agents.values()))
    assert [a.outcome for a in w.agents.values()] == ["finished"] * 3
    assert w.dirs[2].state["outcome"] == "finished"


def test_a_failure_settles_stops_every_host_and_starts_attempt_1_only_after_every_ack():
    w = World()
    w.ranks[1].exit(1, 7)
    w.ranks[2].stubborn = True  # c's rank does not stop yet
    w.run_until(lambda: w.coordinator.phase == "stopping")
    assert w.events() == ["restart 1/2 after b r1 exited 7"]
    w.run_until(lambda: w.now > (GRACE + LOST_AFTER) / 2)  # c has not confirmed: nothing starts
    assert w.coordinator.phase == "stopping" and w.ranks[0].attempts == []
    w.ranks[2].stubborn = False
    w.ranks[2].exit(2, 143)
    w.run_until(lambda: w.coordinator.phase == "run")
    assert [r.attempts[-1][0] for r in w.ranks.values()] == [1, 1, 1]
    assert w.ranks[1].attempts[-1][1] == {1: {"RANK": 1, "ROLE_RANK": 1, "WORLD_SIZE": 3, "ROLE_WORLD_SIZE": 3,
                                              "GROUP_RANK": 1, "GROUP_WORLD_SIZE": 3}}
    assert w.ranks[1].attempts[-1][2] == "restart 1/2 after b r1 exited 7"
    for i in range(3):
        w.ranks[i].exit(i, 0)
    w.run_until(lambda: all(a.finished() for a in w.agents.values()))
    assert w.dirs[1].state["attempt"] == 1 and w.dirs[1].state["restarts"] == ["b r1 exited 7"]


def test_a_host_that_never_confirms_its_ranks_stopped_is_dropped_and_the_others_go_on():
    w = World(min_hosts=2)
    w.ranks[1].exit(1, 7)
    w.ranks[2].stubborn = True
    w.run_until(lambda: w.coordinator.phase == "stopping")
    w.kill(2)  # c's agent dies before it acknowledged
    w.run_until(lambda: w.coordinator.phase == "run", limit=GRACE + LOST_AFTER + 5)
    assert "dropped c" in w.events()
    assert w.ranks[1].attempts[-1][1][1]["WORLD_SIZE"] == 2
    assert w.ranks[2].attempts == []
    for i in (0, 1):
        w.ranks[i].exit(i, 0)
    w.run_until(lambda: w.coordinator.finished())
    assert w.coordinator.outcome == "finished" and w.dirs[0].state["dropped"] == ["c"]


def test_a_dropped_host_that_comes_back_is_told_it_was_dropped():
    w = World(min_hosts=2)
    w.cut(2)
    w.ranks[0].exit(0, 4)
    w.ranks[1].exit(1, 4)
    w.run_until(lambda: w.coordinator.phase == "stopping", limit=LOST_AFTER + 5)
    assert w.events()[-2:] == ["restart 1/2 after a r0 exited 4; lost c (silent for 5s)", "dropped c"]
    w.connect(2)
    assert w.member(2).outcome == "dropped" and "dropped c" in w.events(2)
    w.step()
    assert w.ranks[2].terminated  # its ranks are stopped: the run goes on without them


def test_a_stop_during_a_restart_ends_the_run_and_starts_nothing():
    w = World()
    w.ranks[1].exit(1, 7)
    w.ranks[2].stubborn = True
    w.run_until(lambda: w.coordinator.phase == "stopping")
    w.dirs[2].stopping = True  # distctl stop wrote `stopping` on c's host
    w.ranks[2].stubborn = False
    w.run_until(lambda: all(a.finished() for a in w.agents.values()))
    assert [a.outcome for a in w.agents.values()] == ["stopped"] * 3
    assert all(r.attempts == [] for r in w.ranks.values())


def test_a_member_that_reconnects_having_missed_an_attempt_makes_the_next_one():
    w = World()
    w.ranks[1].exit(1, 7)
    w.run_until(lambda: w.coordinator.phase == "starting")
    w.cut(2)  # c acknowledged, then lost its link before "start"
    w.run_until(lambda: w.coordinator.phase == "run")
    assert w.ranks[2].attempts == [] and w.member(2).attempt == 0
    w.connect(2)
    w.run_until(lambda: w.coordinator.phase == "stopping")
    assert w.events()[-1] == "restart 2/2 after c r2 was killed (no exit code)"
    w.run_until(lambda: w.coordinator.phase == "run")
    assert [r.attempts[-1][0] for r in w.ranks.values()] == [2, 2, 2]


def test_a_member_agent_that_dies_stops_nothing_and_the_run_ends_after_lost_after():
    w = World()
    w.kill(1)
    assert w.events() == ["lost contact with the agent on b: its ranks run on; the run waits up to 5s "
                          "(job.lost_host_timeout) for it, then goes on without it"]
    w.ranks[0].exit(0, 0)
    w.ranks[2].exit(2, 0)
    w.step()
    assert not w.coordinator.finished()  # b's ranks may still be running: wait for lost_after
    w.run_until(lambda: w.coordinator.finished(), limit=LOST_AFTER + 1)
    assert w.coordinator.outcome == "ended"
    assert w.dirs[0].state["outcome"] == "ended: every rank heard of exited 0; no word from the agent on b for 5s"
    assert w.ranks[1].terminated == 0 and w.ranks[1].running() == [1]


def test_a_coordinator_that_dies_stops_nothing_and_a_member_ends_once_its_ranks_are_done():
    w = World()
    w.kill(0)
    assert w.events(1)[0].startswith("lost contact with the coordinator agent on a: the ranks on b run on")
    w.run_until(lambda: w.now > 3 * LOST_AFTER)
    assert w.member(1).outcome is None and w.ranks[1].terminated == 0  # training goes on
    w.ranks[1].exit(1, 0)
    w.run_until(lambda: w.member(1).finished(), limit=LOST_AFTER + 1)
    assert w.member(1).outcome == "failed"
    assert w.dirs[1].state["outcome"].startswith("failed: lost contact with the coordinator on a for ")


@pytest.mark.parametrize("code", [2, 3])
def test_a_final_code_ends_the_run_without_a_restart(code):
    w = World()
    w.ranks[2].exit(2, code)
    w.run_until(lambda: all(a.finished() for a in w.agents.values()))
    assert w.events()[-1] == f"end failed: c r2 exited {code}: not restarted (a restart would fail the same way)"
    assert all(r.attempts == [] for r in w.ranks.values())


# ---------------------------------------------------------------- the hang timeout

HANG = 10.0


def join_all(w: World) -> None:
    for r in w.ranks.values():
        r.joins = set(r.ranks)


def test_no_progress_for_the_hang_timeout_takes_every_hosts_stacks_then_ends_the_run_hung():
    w = World(max_restarts=0, hang_timeout=HANG)
    w.run_until(lambda: w.now > 3 * HANG)
    assert w.coordinator.outcome is None  # the clock starts only once every rank joined
    join_all(w)
    joined = w.now
    w.run_until(lambda: w.coordinator.outcome is not None, limit=2 * HANG)
    assert joined + HANG <= w.now <= joined + HANG + 1.0  # within a heartbeat of the deadline
    assert w.coordinator.outcome == "hung"
    assert [d.stacks_taken for d in w.dirs.values()] == [1, 1, 1]  # before anything is stopped
    assert w.events()[-1] == "end hung: no rank made progress for 10s (job.hang_timeout)"
    w.run_until(lambda: all(a.finished() for a in w.agents.values()))
    assert all(r.terminated for r in w.ranks.values()) and all(r.attempts == [] for r in w.ranks.values())
    assert w.dirs[2].state["outcome"] == "hung: no rank made progress for 10s (job.hang_timeout)"


def test_progress_on_any_host_sets_the_hang_clock_back():
    w = World(max_restarts=0, hang_timeout=HANG)
    join_all(w)
    for _ in range(6):  # only c's rank prints, every 0.7 of the timeout: never hung
        w.run_until(lambda until=w.now + 0.7 * HANG: w.now >= until)
        w.ranks[2].output.add(2)
    assert w.coordinator.outcome is None
    last = w.now
    w.run_until(lambda: w.coordinator.outcome is not None, limit=2 * HANG)
    assert w.coordinator.outcome == "hung" and w.now >= last + HANG


def test_a_hang_with_restarts_left_restarts_and_the_clock_starts_again_once_the_ranks_joined():
    w = World(max_restarts=1, hang_timeout=HANG)
    join_all(w)
    w.run_until(lambda: w.coordinator.phase == "stopping", limit=2 * HANG)
    assert w.events()[-1] == "restart 1/1 after hung: no rank made progress for 10s (job.hang_timeout)"
    assert [d.stacks_taken for d in w.dirs.values()] == [1, 1, 1]
    w.run_until(lambda: w.coordinator.phase == "run")
    assert [r.attempts[-1][0] for r in w.ranks.values()] == [1, 1, 1]
    w.run_until(lambda: w.now > 50)  # not joined yet: no clock
    assert w.coordinator.outcome is None
    join_all(w)
    joined = w.now
    w.run_until(lambda: w.coordinator.outcome is not None, limit=2 * HANG)
    assert w.now >= joined + HANG
    assert w.coordinator.outcome == "hung"
    assert w.events()[-1] == ("end hung: restarts exhausted (1/1): no rank made progress for 10s "
                              "(job.hang_timeout)")


def test_a_stop_wins_over_a_hang():
    w = World(max_restarts=0, hang_timeout=HANG)
    join_all(w)
    w.run_until(lambda: w.now > HANG - 1)
    w.dirs[1].stopping = True
    w.run_until(lambda: all(a.finished() for a in w.agents.values()))
    assert [a.outcome for a in w.agents.values()] == ["stopped"] * 3
    assert [d.stacks_taken for d in w.dirs.values()] == [0, 0, 0]


def test_a_silent_host_is_never_taken_for_a_hang():
    w = World(max_restarts=0, hang_timeout=HANG)
    join_all(w)
    w.step()
    w.cut(2)  # the link to c breaks: its ranks' progress cannot be known
    w.run_until(lambda: w.now > 3 * HANG)
    assert w.coordinator.outcome is None


def test_a_watch_only_agent_ends_a_failed_run_as_failed_not_exhausted():
    w = World(max_restarts=0, hang_timeout=HANG)
    w.ranks[1].exit(1, 7)
    w.run_until(lambda: all(a.finished() for a in w.agents.values()))
    assert w.coordinator.outcome == "failed" and w.events()[-1] == "end failed: b r1 exited 7"
    assert all(r.attempts == [] for r in w.ranks.values())


def test_a_rank_of_the_new_attempt_that_ends_before_the_others_start_is_counted():
    w = World()
    w.ranks[1].exit(1, 7)
    w.run_until(lambda: w.coordinator.phase == "starting")
    w.ranks[0].exit(0, 0)  # attempt 1's rank 0 is done before "start" reached the others
    w.step()
    for i in (1, 2):
        w.ranks[i].exit(i, 0)
    w.run_until(lambda: all(a.finished() for a in w.agents.values()), limit=10)
    assert w.coordinator.outcome == "finished"


# ---------------------------------------------------------------- a watcher (no restarts, no hang timeout)

TEARDOWN = 3.0


class Watched:
    """One host with a watcher over ranks 4, 5 and 6, and a clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.ranks = FakeRanks([4, 5, 6])
        self.dir = FakeRunDir()
        cfg = {"me": 1, "watch": True, "hosts": [{"name": "a", "ranks": [0]}, {"name": "b", "ranks": [4, 5, 6]}],
               "ranks": [{"rank": r} for r in (4, 5, 6)], "max_restarts": 0, "grace": GRACE, "teardown": TEARDOWN}
        self.agent = Watcher(cfg, self.ranks, self.dir, lambda: self.now)

    def step(self, seconds: float = 0.1) -> None:
        self.now += seconds
        assert self.agent.tick() == []  # it has no one to tell

    def run_until(self, condition, limit: float = 30.0) -> None:
        end = self.now + limit
        while not condition():
            assert self.now < end, "the condition never held"
            self.step()


def test_a_watcher_records_a_run_whose_ranks_all_exited_0_as_finished_and_touches_nothing():
    w = Watched()
    for r in (4, 5, 6):
        w.ranks.exit(r, 0)
    w.run_until(w.agent.finished)
    assert w.dir.state["outcome"] == "finished" and w.ranks.terminated == 0 and w.dir.stacks_taken == 0
    assert w.dir.events == []  # an attached up reports such a run from the exits, not from events


def test_a_watcher_stops_the_other_ranks_of_its_host_only_after_the_teardown_delay():
    w = Watched()
    w.step()
    w.ranks.exit(5, 7)
    w.run_until(lambda: w.ranks.terminated > 0)
    assert w.now >= TEARDOWN  # an attached up had that long to take their stacks first
    w.run_until(w.agent.finished)
    assert w.dir.state["outcome"] == "failed: b r5 exited 7" and w.ranks.terminated == 1
    assert w.dir.state["stopped"] == [4, 6]  # the ranks it stopped, for status to say so
    assert w.dir.stacks_why == ["failure"]  # the others' stacks, taken at once, for status's report
    assert {r: c for r, (c, _) in w.ranks.exits.items()} == {4: 143, 5: 7, 6: 143}
    assert w.dir.events == [] and w.ranks.attempts == []  # it never restarts anything


def test_a_failed_rank_whose_peers_end_by_themselves_is_recorded_without_any_signal():
    w = Watched()
    w.ranks.exit(6, None)
    w.step()
    w.ranks.exit(4, 4)
    w.ranks.exit(5, 4)
    w.run_until(w.agent.finished, limit=TEARDOWN / 2)
    assert w.dir.state["outcome"] == "failed: b r6 was killed (no exit code)" and w.ranks.terminated == 0


def test_a_stop_ends_a_watcher_as_stopped():
    w = Watched()
    w.dir.stopping = True
    w.run_until(w.agent.finished)
    assert w.dir.state["outcome"] == "stopped"
