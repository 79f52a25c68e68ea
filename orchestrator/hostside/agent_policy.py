"""The restart agents' decisions, as pure code: no sockets, no processes, no clock of its own.

A `Coordinator` (the agent on rank 0's host) or a `Member` (any other host) is told what
happened (a message on a link, a link that closed, a tick) and returns the actions to take:
`Send(link, message)` or `Close(link)`. What it needs of the host comes through two interfaces,
`Ranks` (this host's rank processes) and `Host` (its files: log, events, state, the `stopping`
file, the test hook), and the time through `clock`. hostside/agent.py does the I/O; the tests
drive these classes with fake ranks and in-memory links (tests/test_agent_policy.py).

On a host this file is part of the agent program (hostside/__init__.py joins the parts).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Protocol, Tuple, Union

# Defaults: the config keys "heartbeat", "silent" and "settle" win (tests set small ones).
HEARTBEAT_S = 2.0
SILENT_S = 10.0  # nothing heard for this long: the connection is dead
SETTLE_S = 2.0  # after the first failure, the exits of its peers arrive: then judge
TEARDOWN_S = 10.0  # a watcher stops the other ranks of its host this long after a failure there
PORT_WAIT_S = 60.0

Msg = Dict[str, Any]
Exit = Tuple[Optional[int], float]  # (exit code or None: killed, when it was seen)


class Send(NamedTuple):
    link: int
    msg: Msg


class Close(NamedTuple):
    link: int


Action = Union[Send, Close]
Clock = Callable[[], float]
COORDINATOR = 0  # the link id a member has to the coordinator


class Ranks(Protocol):
    """The ranks of this host, in the current attempt."""

    exits: dict[int, Exit]

    def poll(self) -> list[tuple[int, int | None]]:
        """Ranks that ended since the last call: [(rank, code)]."""

    def running(self) -> list[int]:
        ...

    def terminate(self, grace: float) -> None:
        """TERM every running rank now, KILL what is left after `grace` seconds."""

    def start(self, attempt: int, env: dict[int, dict[str, int]], marker: str) -> None:
        """Start attempt `attempt` of every rank of this host, with its placement `env`."""

    def progressed(self) -> list[int]:
        """Ranks that made progress (their log grew) since the last call, in this attempt."""

    def joined(self) -> list[int]:
        """Ranks that joined in this attempt (the `joined` line of the trainer; any program: its first output)."""


class Host(Protocol):
    """What the agent keeps in the run directory, and reads there."""

    def log(self, text: str) -> None:
        ...

    def event(self, text: str) -> None:
        """A decision: agent.events (relayed to the workstation) and the log."""

    def write_state(self, state: Msg) -> None:
        ...

    def stop_requested(self) -> bool:
        """`distctl stop` wrote the `stopping` file."""

    def master_listening(self) -> bool:
        """Rank 0 listens on the rendezvous port."""

    def pause(self, moment: str) -> None:
        """The test hook: wait here while a test means to kill this agent at `moment`."""

    def take_stacks(self, why: str = "hang") -> None:
        """Dump the stacks of the running ranks of this host into the run directory (bounded)."""


# ---------------------------------------------------------------- the decision (pure)

def root_cause(failed: list[int], exits: dict[int, Exit], peer_lost: list[int]) -> int:
    """The failed rank most likely to be the cause: not a peer-lost code, then earliest."""
    return sorted(failed, key=lambda r: (exits[r][0] in peer_lost or exits[r][0] is None,
                                         exits[r][1], r))[0]


def code_text(code: int | None) -> str:
    return "was killed (no exit code)" if code is None else "exited %d" % code


def owner_of(cfg: Msg, rank: int) -> int:
    return next(i for i, h in enumerate(cfg["hosts"]) if rank in h["ranks"])


def decide(cfg: Msg, attempt: int, hosts: list[int], exits: dict[int, Exit], down_for: dict[int, float],
           stopping: bool, failing_for: float | None) -> tuple[Any, ...]:
    """What the coordinator does now.

    hosts: the indices of the hosts in this attempt; exits: rank -> (code, time) for this
    attempt; down_for: host index -> seconds its agent has been silent; failing_for:
    seconds since the first failure of this attempt was seen (None: none yet).
    Returns ("wait",), ("done",), ("end", outcome, text) or ("restart", survivors, text).
    """
    if stopping:
        return ("end", "stopped", "stopped by distctl stop")
    names = [h["name"] for h in cfg["hosts"]]
    ranks = [r for i in hosts for r in cfg["hosts"][i]["ranks"]]
    failed = [r for r in ranks if r in exits and exits[r][0] != 0]
    if not failed:
        if all(r in exits for r in ranks):
            return ("done",)
        # A host whose agent is gone (killed, or cut off for good) cannot report the exits of its
        # ranks: once every other rank exited 0 and it has been silent for lost_after, the run
        # is over here. Its ranks are not touched; their exit codes are on their host.
        unheard = sorted({owner_of(cfg, r) for r in ranks if r not in exits})
        if all(down_for.get(i, 0.0) >= cfg["lost_after"] for i in unheard):
            return ("end", "ended", "every rank heard of exited 0; no word from the agent on %s for %gs"
                    % (", ".join(names[i] for i in unheard), cfg["lost_after"]))
        return ("wait",)
    owner = {r: i for i in hosts for r in cfg["hosts"][i]["ranks"]}
    rank = root_cause(failed, exits, cfg["peer_lost"])
    why = "%s r%d %s" % (names[owner[rank]], rank, code_text(exits[rank][0]))
    if exits[rank][0] in cfg["final_codes"]:
        return ("end", "failed", "%s: not restarted (a restart would fail the same way)" % why)
    if failing_for is None or failing_for < cfg.get("settle", SETTLE_S):
        return ("wait",)
    silent = [i for i in hosts if i in down_for]
    lost = [i for i in silent if down_for[i] >= cfg["lost_after"]]
    if len(lost) < len(silent):
        return ("wait",)  # a link fault until proven otherwise
    survivors = [i for i in hosts if i not in lost]
    if lost:
        why += "; lost %s (silent for %gs)" % (", ".join(names[i] for i in lost), cfg["lost_after"])
    if not cfg["max_restarts"]:
        return ("end", "failed", why)  # an agent that only watches (job.hang_timeout)
    if attempt >= cfg["max_restarts"]:
        return ("end", "exhausted", "restarts exhausted (%d/%d): %s" % (attempt, cfg["max_restarts"], why))
    if len(survivors) < cfg["min_hosts"]:
        return ("end", "exhausted", "%s; %d host(s) left, job.min_hosts is %d"
                % (why, len(survivors), cfg["min_hosts"]))
    return ("restart", survivors, why)


def placement(cfg: Msg, hosts: list[int], me: int) -> dict[int, dict[str, int]]:
    """rank -> the torchrun variables of each of the ranks of this host in a world of `hosts`."""
    world = sum(len(cfg["hosts"][i]["ranks"]) for i in hosts)
    first = sum(len(cfg["hosts"][i]["ranks"]) for i in hosts[:hosts.index(me)])
    out = {}
    for local, rank in enumerate(cfg["hosts"][me]["ranks"]):
        out[rank] = {"RANK": first + local, "ROLE_RANK": first + local, "WORLD_SIZE": world,
                     "ROLE_WORLD_SIZE": world, "GROUP_RANK": hosts.index(me), "GROUP_WORLD_SIZE": len(hosts)}
    return out


# ---------------------------------------------------------------- what may arrive

def is_int(value: Any, low: int = 0, high: int = 1 << 31) -> bool:
    return type(value) is int and low <= value < high


def is_code(value: Any) -> bool:
    return value is None or is_int(value, -(1 << 31))


def invalid(cfg: Msg, msg: Msg, to_coordinator: bool) -> str | None:
    """Why `msg` is not one an agent sends (None: it is). Anything else is dropped unread:
    unknown kinds, missing fields, host and rank numbers out of range, wrong types."""
    kind = msg.get("t")
    hosts = len(cfg["hosts"])
    ranks = {r for h in cfg["hosts"] for r in h["ranks"]}
    attempt_ok = is_int(msg.get("attempt"), 0, 1 << 20)
    if kind == "hb":
        quiet = msg.get("quiet")
        ok = quiet is None or (type(quiet) in (int, float) and 0 <= quiet < 1e9)
        return None if ok and is_int(msg.get("attempt", 0), 0, 1 << 20) else "hb: malformed quiet or attempt"
    if to_coordinator and kind == "stopping":
        return None
    if to_coordinator:
        if kind == "hello":
            exits = msg.get("exits", [])
            if not is_int(msg.get("host"), 1, hosts) or not is_int(msg.get("attempt", 0), 0, 1 << 20):
                return "hello: no such host or attempt"
            if not isinstance(exits, list) or len(exits) > len(ranks) or not all(
                    isinstance(e, list) and len(e) == 3 and is_int(e[0]) and e[0] in ranks and is_code(e[1])
                    for e in exits):
                return "hello: malformed exits"
            return None
        if kind == "exit":
            ok = attempt_ok and is_int(msg.get("rank")) and msg.get("rank") in ranks and is_code(msg.get("code"))
            return None if ok else "exit: no such rank, or a malformed code or attempt"
        if kind == "stopped":
            return None if attempt_ok else "stopped: malformed attempt"
        return "unknown kind %.40r" % (kind,)
    if "state" in msg and not isinstance(msg["state"], dict):
        return "malformed state"
    if kind in ("restart", "stacks"):
        return None if attempt_ok else "%s: malformed attempt" % kind
    if kind == "start":
        chosen = msg.get("hosts")
        ok = (attempt_ok and isinstance(chosen, list) and all(is_int(i, 0, hosts) for i in chosen)
              and cfg["me"] in chosen and len(set(chosen)) == len(chosen) and isinstance(msg.get("text"), str))
        return None if ok else "start: malformed attempt, hosts or text"
    if kind == "end":
        ok = isinstance(msg.get("outcome"), str) and isinstance(msg.get("text", ""), str)
        return None if ok else "end: malformed outcome"
    return "unknown kind %.40r" % (kind,)


# ---------------------------------------------------------------- the agents

class Agent:
    """What the coordinator and a member share: the ranks of this host, the state file, the end."""

    tells = True  # its decisions go to agent.events (an attached up relays them)

    def __init__(self, cfg: Msg, ranks: Ranks, host: Host, clock: Clock) -> None:
        self.cfg, self.ranks, self.host, self.clock = cfg, ranks, host, clock
        self.me: int = cfg["me"]
        self.names: list[str] = [h["name"] for h in cfg["hosts"]]
        self.attempt = 0
        self.hosts: list[int] = list(range(len(cfg["hosts"])))
        self.state: Msg = {"format": 1, "attempt": 0, "max_restarts": cfg["max_restarts"],
                           "hosts": list(self.names), "dropped": [], "restarts": [], "outcome": None}
        self.outcome: str | None = None  # set once the run is over for this host
        self.silent_s = float(cfg.get("silent", SILENT_S))
        self.heartbeat_s = float(cfg.get("heartbeat", HEARTBEAT_S))
        self.next_beat = clock()
        self.hang_s: float | None = cfg.get("hang_timeout") or None
        self.quiet_since: float | None = None  # every rank here joined: since then, its last progress
        host.write_state(self.state)

    def adopt(self, state: Msg) -> None:
        self.state.update(state)
        self.host.write_state(self.state)

    def begin_end(self, outcome: str, text: str) -> None:
        """The run is over for this host: say so, and let (or make) the ranks end."""
        if self.outcome is not None:
            return
        self.outcome = outcome
        self.adopt({"outcome": outcome if outcome in ("finished", "stopped") else "%s: %s" % (outcome, text)})
        if outcome != "stopped" and self.tells:
            self.host.event("end %s: %s" % (outcome, text))
        if outcome not in ("finished", "ended") and self.ranks.running():
            self.ranks.terminate(self.cfg["grace"])

    def watch(self, now: float) -> None:
        """The hang clock of the ranks of this host: it starts once every one of them joined (or
        ended), and the progress of any of them sets it back to now."""
        if not self.hang_s:
            return
        progressed = self.ranks.progressed()
        if self.quiet_since is None:
            mine = {r["rank"] for r in self.cfg["ranks"]}
            if mine <= set(self.ranks.joined()) | set(self.ranks.exits):
                self.quiet_since = now
        elif progressed:
            self.quiet_since = now

    def quiet(self, now: float) -> float | None:
        """Seconds without progress on this host (None: not every rank joined yet)."""
        return None if self.quiet_since is None else now - self.quiet_since

    def heartbeat(self, now: float) -> Msg:
        if not self.hang_s:
            return {"t": "hb"}
        return {"t": "hb", "attempt": self.attempt, "quiet": self.quiet(now)}

    def finished(self) -> bool:
        return self.outcome is not None and not self.ranks.running()

    def relaunch(self, attempt: int, hosts: list[int], text: str) -> None:
        self.attempt, self.hosts = attempt, hosts
        self.quiet_since = None  # the hang clock starts again once the ranks joined again
        marker = "restart %d/%d after %s" % (attempt, self.cfg["max_restarts"], text)
        self.ranks.start(attempt, placement(self.cfg, hosts, self.me), marker)
        self.host.log("attempt %d started: ranks %s" % (attempt, sorted(r["rank"] for r in self.cfg["ranks"])))

    def beat(self) -> bool:
        """A heartbeat is due now."""
        if self.clock() < self.next_beat:
            return False
        self.next_beat = self.clock() + self.heartbeat_s
        return True


class Coordinator(Agent):
    """The agent on the host of rank 0: decides for every host. Links are ids the I/O gives."""

    def __init__(self, cfg: Msg, ranks: Ranks, host: Host, clock: Clock) -> None:
        Agent.__init__(self, cfg, ranks, host, clock)
        self.links: dict[int, int] = {}  # host index -> link id, once it said hello
        self.heard: dict[int, float] = {}  # link id -> when it was last heard from
        self.silent_since: dict[int, float] = {i: clock() for i in self.hosts if i != self.me}
        self.missed: set[int] = set()  # hosts announced silent (until they say hello again)
        self.exits: dict[int, Exit] = {}
        self.first_failure: float | None = None
        self.phase = "run"  # run | stopping (waiting for every host to stop its ranks) | starting
        self.acks: set[int] = set()
        self.phase_deadline = 0.0
        self.pending: tuple[list[int], str] = ([], "")  # (survivors, text) of the restart in progress
        self.stop_seen = False  # a member found the `stopping` file
        self.progress_at: dict[int, float] = {}  # host -> the last progress of its ranks, this attempt (our clock)

    # -- what the I/O reports
    def opened(self, link: int) -> None:
        self.heard[link] = self.clock()

    def closed(self, link: int) -> list[Action]:
        self.heard.pop(link, None)
        host = self.host_of(link)
        if host is not None:
            self.drop(host)
        return []

    def receive(self, link: int, msg: Msg) -> list[Action]:
        why = invalid(self.cfg, msg, to_coordinator=True)
        if why is not None:
            self.host.log("dropped a message on link %d: %s" % (link, why))
            return []
        self.heard[link] = self.clock()
        kind = msg.get("t")
        if kind == "hello":
            return self.hello(link, msg)
        host = self.host_of(link)
        if host is None:
            return []  # nothing counts before hello
        if kind == "exit" and msg.get("attempt") == self.attempt:
            self.note_exit(msg["rank"], msg["code"])  # stamped on arrival, by this clock
        elif kind == "stopped" and msg.get("attempt") == self.attempt + 1:
            self.acks.add(host)
        elif kind == "stopping":
            self.stop_seen = True
        elif kind == "hb" and msg.get("attempt", 0) == self.attempt and self.phase == "run":
            quiet = msg.get("quiet")
            if quiet is None:
                self.progress_at.pop(host, None)
            else:
                self.progress_at[host] = self.clock() - quiet  # a duration: the clocks of the hosts may disagree
        return []

    def tick(self) -> list[Action]:
        now = self.clock()
        out: list[Action] = []
        self.watch(now)
        for rank, code in self.ranks.poll():
            # (while "starting" too: a rank of the new attempt may end before the others start)
            if self.phase in ("run", "starting"):
                self.note_exit(rank, code)
        for link, heard in list(self.heard.items()):
            if now - heard > self.silent_s:  # a silent link, or one that never said hello
                out.append(Close(link))
                out += self.closed(link)
        for i, since in list(self.silent_since.items()):
            if now - since > self.silent_s:
                self.announce_lost(i)  # (one that never connected, too)
        if self.outcome is None:
            stopping = self.stop_seen or self.host.stop_requested()
            if self.phase == "run":
                out += self.tick_run(now, stopping)
            elif stopping:
                out += self.end("stopped", "stopped by distctl stop")
            elif self.phase == "stopping":
                out += self.tick_stopping(now)
            elif self.phase == "starting":
                out += self.tick_starting(now)
        if self.beat():
            out += self.broadcast({"t": "hb"})
        return out

    def hung_for(self, now: float) -> float | None:
        """Seconds without progress on any host once every rank joined; None: not judged now
        (no hang timeout, a failure or phase under way, a host not heard from: its silence is
        never taken for a hang)."""
        if not self.hang_s or self.phase != "run" or self.first_failure is not None:
            return None
        if all(r in self.exits for i in self.hosts for r in self.cfg["hosts"][i]["ranks"]):
            return None  # every rank ended: nothing is hung
        if self.quiet_since is not None:
            self.progress_at[self.me] = self.quiet_since
        if any(i in self.silent_since or i not in self.progress_at for i in self.hosts):
            return None
        return now - max(self.progress_at[i] for i in self.hosts)

    def hang(self, now: float) -> list[Action]:
        """No rank progressed for job.hang_timeout: every host dumps the stacks of its ranks, then
        the run restarts (a hang counts as a failure) or ends as hung."""
        text = "no rank made progress for %gs (job.hang_timeout)" % (self.hang_s or 0)
        self.host.event("hung: %s; taking the stacks of every rank" % text)
        out = self.broadcast({"t": "stacks", "attempt": self.attempt})
        self.host.take_stacks()
        if self.cfg["max_restarts"] and self.attempt < self.cfg["max_restarts"]:
            return out + self.restart(now, list(self.hosts), "hung: " + text)
        if self.cfg["max_restarts"]:
            text = "restarts exhausted (%d/%d): %s" % (self.attempt, self.cfg["max_restarts"], text)
        return out + self.end("hung", text)

    # -- the decisions
    def host_of(self, link: int) -> int | None:
        return next((i for i, lk in self.links.items() if lk == link), None)

    def broadcast(self, msg: Msg) -> list[Action]:
        return [Send(link, msg) for _, link in sorted(self.links.items())]

    def hello(self, link: int, msg: Msg) -> list[Action]:
        i = msg["host"]
        out: list[Action] = []
        old = self.links.get(i)
        if old is not None and old != link:
            out.append(Close(old))
            self.heard.pop(old, None)
        self.links[i] = link
        self.silent_since.pop(i, None)
        self.missed.discard(i)
        self.host.log("%s connected (attempt %d)" % (self.names[i], msg.get("attempt", 0)))
        if i not in self.hosts:
            out.append(Send(link, {"t": "end", "outcome": "dropped", "text": "dropped from the run",
                                   "state": self.state}))
        elif self.outcome is not None:
            out.append(Send(link, {"t": "end", "outcome": self.outcome, "text": self.state["outcome"] or "",
                                   "state": self.state}))
        elif self.phase == "stopping":
            out.append(Send(link, {"t": "restart", "attempt": self.attempt + 1, "state": self.state}))
        elif self.phase == "run" and msg.get("attempt", 0) != self.attempt:
            # It missed a whole attempt while cut off: its ranks are of no use to this one.
            for r in self.cfg["hosts"][i]["ranks"]:
                self.note_exit(r, None)
        elif self.phase == "run":
            for rank, code, _ in msg.get("exits", []):
                self.note_exit(rank, code)  # stamped on arrival: the clocks of the hosts may disagree
        return out

    def drop(self, i: int) -> None:
        link = self.links.pop(i, None)
        if link is None:
            return
        self.silent_since[i] = self.heard.pop(link, self.clock())
        self.host.log("lost contact with %s" % self.names[i])
        self.announce_lost(i)

    def announce_lost(self, i: int) -> None:
        """Tell the attached `up` (through agent.events) which agent is gone and how long the run waits."""
        if self.outcome is None and i in self.hosts and i not in self.missed:
            self.missed.add(i)
            self.host.event("lost contact with the agent on %s: its ranks run on; the run waits up to %gs "
                            "(job.lost_host_timeout) for it, then goes on without it"
                            % (self.names[i], self.cfg["lost_after"]))

    def note_exit(self, rank: int, code: int | None) -> None:
        if rank not in self.exits:
            self.exits[rank] = (code, self.clock())
            if code != 0 and self.first_failure is None:
                self.first_failure = self.clock()
                self.host.pause("failed")

    def tick_run(self, now: float, stopping: bool) -> list[Action]:
        down = {i: now - t for i, t in self.silent_since.items()}
        failing = None if self.first_failure is None else now - self.first_failure
        hung = None if stopping else self.hung_for(now)
        if hung is not None and self.hang_s is not None and hung >= self.hang_s:
            return self.hang(now)
        action = decide(self.cfg, self.attempt, self.hosts, self.exits, down, stopping, failing)
        if action[0] == "done":
            return self.end("finished", "every rank exited 0")
        if action[0] == "end":
            return self.end(action[1], action[2])
        if action[0] != "restart":
            return []
        return self.restart(now, action[1], action[2])

    def restart(self, now: float, survivors: list[int], text: str) -> list[Action]:
        dropped = [self.names[i] for i in self.hosts if i not in survivors]
        attempt = self.attempt + 1
        self.host.event("restart %d/%d after %s" % (attempt, self.cfg["max_restarts"], text))
        for name in dropped:
            self.host.event("dropped %s" % name)
        self.adopt({"attempt": attempt, "hosts": [self.names[i] for i in survivors],
                    "dropped": self.state["dropped"] + dropped, "restarts": self.state["restarts"] + [text]})
        self.pending = (survivors, text)
        self.hosts = survivors
        self.progress_at = {}
        self.phase, self.acks = "stopping", set()
        self.phase_deadline = now + self.cfg["grace"] + self.cfg["lost_after"]
        out = self.broadcast({"t": "restart", "attempt": attempt, "state": self.state})
        self.ranks.terminate(self.cfg["grace"])
        self.host.pause("restarting")
        return out

    def tick_stopping(self, now: float) -> list[Action]:
        others = [i for i in self.hosts if i != self.me]
        if self.ranks.running() or (set(others) - self.acks and now < self.phase_deadline):
            return []
        missing = [i for i in others if i not in self.acks]
        if missing:  # never confirmed their ranks stopped: lost
            survivors = [i for i in self.hosts if i not in missing]
            names = ", ".join(self.names[i] for i in missing)
            if len(survivors) < self.cfg["min_hosts"]:
                return self.end("exhausted", "%s did not stop its ranks; %d host(s) left, job.min_hosts is %d"
                                % (names, len(survivors), self.cfg["min_hosts"]))
            self.host.event("dropped %s" % names)
            self.hosts = survivors
            self.adopt({"hosts": [self.names[i] for i in survivors],
                        "dropped": self.state["dropped"] + [self.names[i] for i in missing]})
        self.relaunch(self.attempt + 1, self.hosts, self.pending[1])
        self.exits, self.first_failure = {}, None
        self.phase, self.phase_deadline = "starting", now + PORT_WAIT_S
        return []

    def tick_starting(self, now: float) -> list[Action]:
        if (self.cfg["wait_port"] and now < self.phase_deadline and self.ranks.running()
                and not self.host.master_listening()):
            return []
        self.phase = "run"
        return self.broadcast({"t": "start", "attempt": self.attempt, "hosts": self.hosts, "text": self.pending[1],
                               "state": self.state})

    def end(self, outcome: str, text: str) -> list[Action]:
        out = self.broadcast({"t": "end", "outcome": outcome, "text": text, "state": self.state})
        self.begin_end(outcome, text)
        return out


class Member(Agent):
    """The agent on any other host: reports to the coordinator and does what it says."""

    def __init__(self, cfg: Msg, ranks: Ranks, host: Host, clock: Clock) -> None:
        Agent.__init__(self, cfg, ranks, host, clock)
        self.linked = False  # connected to the coordinator
        self.heard = 0.0
        self.cut_since: float | None = clock()
        self.restart_to: int | None = None  # the attempt being stopped for
        self.acked = False  # "stopped" sent for it

    def wants_link(self) -> bool:
        return not self.linked

    def connected(self) -> list[Action]:
        """The I/O reached the coordinator: link COORDINATOR is up."""
        self.linked, self.heard, self.cut_since = True, self.clock(), None
        exits = [[r, c, t] for r, (c, t) in sorted(self.ranks.exits.items())]
        out = self.send({"t": "hello", "host": self.me, "attempt": self.attempt, "exits": exits})
        if self.host.stop_requested():
            out += self.send({"t": "stopping"})
        return out

    def closed(self, link: int = COORDINATOR) -> list[Action]:
        if self.linked:
            self.linked, self.cut_since = False, self.clock()
            if self.outcome is None:
                me = self.names[self.me]
                self.host.event("lost contact with the coordinator agent on %s: the ranks on %s run on; once they "
                                "have exited, the agent on %s waits up to %gs (job.lost_host_timeout) for it, "
                                "then ends" % (self.names[0], me, me, self.cfg["lost_after"]))
        return []

    def send(self, msg: Msg) -> list[Action]:
        return [Send(COORDINATOR, msg)] if self.linked else []

    def receive(self, link: int, msg: Msg) -> list[Action]:
        why = invalid(self.cfg, msg, to_coordinator=False)
        if why is not None:
            self.host.log("dropped a message from the coordinator: %s" % why)
            return []
        self.heard = self.clock()
        kind = msg.get("t")
        if isinstance(msg.get("state"), dict):
            self.adopt(msg["state"])
        if kind == "stacks" and self.outcome is None and msg["attempt"] == self.attempt:
            self.host.take_stacks()
        elif kind == "restart" and self.outcome is None:
            self.restart_to, self.acked = msg["attempt"], False
            self.ranks.terminate(self.cfg["grace"])
        elif kind == "start" and self.outcome is None:
            self.restart_to = None
            self.relaunch(msg["attempt"], msg["hosts"], msg["text"])
        elif kind == "end":
            if msg["outcome"] == "dropped":
                self.host.event("dropped %s" % self.names[self.me])
            self.begin_end(msg["outcome"], msg.get("text", ""))
        return []

    def tick(self) -> list[Action]:
        now = self.clock()
        out: list[Action] = []
        self.watch(now)
        if self.linked and now - self.heard > self.silent_s:
            out.append(Close(COORDINATOR))
            out += self.closed()
        for rank, code in self.ranks.poll():
            if self.restart_to is None:
                if code != 0:
                    self.host.pause("failed")
                out += self.send({"t": "exit", "rank": rank, "code": code, "attempt": self.attempt})
        if self.restart_to is not None and not self.acked and not self.ranks.running() and self.linked:
            self.host.pause("restarting")
            out += self.send({"t": "stopped", "attempt": self.restart_to})
            self.acked = True
        if self.host.stop_requested() and self.outcome is None:
            out += self.send({"t": "stopping"})
            self.begin_end("stopped", "stopped by distctl stop")
        cut = None if self.cut_since is None else now - self.cut_since
        if (self.outcome is None and cut is not None and cut > self.cfg["lost_after"]
                and (not self.ranks.running() or any(c != 0 for c, _ in self.ranks.exits.values()))):
            self.begin_end("failed", "lost contact with the coordinator on %s for %gs" % (self.names[0], cut))
        if self.beat():
            out += self.send(self.heartbeat(now))
        return out


class Watcher(Agent):
    """The agent of a run with neither restarts nor a hang timeout: on its own host, without a
    port or a peer. It records how the ranks here ended (agent.state) and, when one failed,
    takes the stacks of the others here at once (for the culprit report of `status`), then
    stops them once `teardown` seconds passed: long enough for an attached `up` to
    take their stacks and stop the run everywhere itself (the culprit report), short enough that
    a detached run leaves no rank waiting out the timeout of a collective on this host. The ranks
    of other hosts are theirs to end (the peer-lost error of their program, or their own watcher).
    It writes no events: an attached `up` reports such a run from the exits of the ranks."""

    tells = False

    def __init__(self, cfg: Msg, ranks: Ranks, host: Host, clock: Clock) -> None:
        Agent.__init__(self, cfg, ranks, host, clock)
        self.first_failure: float | None = None
        self.failed: list[tuple[int, int | None]] = []  # (rank, code) in the order seen

    def closed(self, link: int) -> list[Action]:
        return []  # it has no links

    def receive(self, link: int, msg: Msg) -> list[Action]:
        return []

    def tick(self) -> list[Action]:
        now = self.clock()
        for rank, code in self.ranks.poll():
            if code != 0:
                self.failed.append((rank, code))
                if self.first_failure is None:
                    self.first_failure = now
                    self.host.pause("failed")
                    if self.ranks.running() and self.outcome is None:
                        self.host.take_stacks("failure")  # what the others here were doing: status reads it
        if self.outcome is not None:
            return []
        me = self.names[self.me]
        if self.host.stop_requested():
            self.begin_end("stopped", "stopped by distctl stop")
        elif self.failed:
            rank, code = self.failed[0]
            why = "%s r%d %s" % (me, rank, code_text(code))
            running = self.ranks.running()
            due = now - (self.first_failure or now) >= float(self.cfg.get("teardown", TEARDOWN_S))
            if running and due:
                self.host.log("%s: stopping the other ranks here: %s" % (why, ", ".join("r%d" % r for r in running)))
                self.adopt({"stopped": running})  # status: these ended by its hand, not as a consequence
            if due or not running:
                self.begin_end("failed", why)
        elif not self.ranks.running():
            self.begin_end("finished", "every rank exited 0")
        return []
