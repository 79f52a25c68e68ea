"""Restart a run's ranks after a failure, without the workstation: one agent per host.

    agent.py CONFIG_JSON

Started detached by the launch step of a run with job.max_restarts, right after the
host's ranks (attempt 0) were started; it adopts them through their rankR.pid files.
The agent on rank 0's host is the coordinator: it listens on rank 0's address at
job.port + 1, every other agent connects to it, reports its ranks' exits and sends a
heartbeat. The coordinator alone decides (decide() below, a pure function):

- every rank exited 0: the run is done; a `stopping` file (written by `distctl stop`
  before it signals anything): the run ends, nothing restarts;
- a rank failed with a code in final_codes (the trainer's usage and divergence codes):
  the run ends, no restart is spent on a failure a restart repeats;
- any other failure, once SETTLE_S has passed (its peers exit too; the root cause is
  the earliest exit that is not a peer-lost code): every rank on every host is stopped
  (TERM, KILL after `grace`), then rank 0's host starts its ranks, its port is waited
  for, and the other hosts start theirs: attempt N, with TORCHELASTIC_RESTART_COUNT=N,
  each host running `restart`, the RESTART step of the plan for it (the launch step's rank
  starts with the trainer's --resume appended);
- a host whose agent is not heard from is a link fault until lost_after seconds; when a
  failure needs a restart and a host has been silent that long, it is dropped: the
  survivors restart with a new world size (ranks renumbered in host order), if at least
  min_hosts remain. Dropping counts as a restart.

Each decision goes to `agent.events` (the log follower relays it to the workstation),
into every rank's log as a `--- distctl: ... ---` line, and into `agent.state` (JSON:
attempt, hosts, dropped, restarts, outcome), which `distctl status` reads.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

TICK_S = 0.2
HEARTBEAT_S = 2.0
SILENT_S = 10.0  # nothing heard for this long: the connection is dead
SETTLE_S = 2.0  # after the first failure, the exits of its peers arrive: then judge
RETRY_S = 1.0
PORT_WAIT_S = 60.0


# ---------------------------------------------------------------- the decision (pure)

def root_cause(failed, exits, peer_lost):
    """The failed rank most likely to be the cause: not a peer-lost code, then earliest."""
    return sorted(failed, key=lambda r: (exits[r][0] in peer_lost or exits[r][0] is None,
                                         exits[r][1], r))[0]


def code_text(code):
    return "was killed (no exit code)" if code is None else "exited %d" % code


def decide(cfg, attempt, hosts, exits, down_for, stopping, failing_for):
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
        return ("done",) if all(r in exits for r in ranks) else ("wait",)
    owner = {r: i for i in hosts for r in cfg["hosts"][i]["ranks"]}
    rank = root_cause(failed, exits, cfg["peer_lost"])
    why = "%s r%d %s" % (names[owner[rank]], rank, code_text(exits[rank][0]))
    if exits[rank][0] in cfg["final_codes"]:
        return ("end", "failed", "%s: not restarted (a restart would fail the same way)" % why)
    if failing_for is None or failing_for < SETTLE_S:
        return ("wait",)
    silent = [i for i in hosts if i in down_for]
    lost = [i for i in silent if down_for[i] >= cfg["lost_after"]]
    if len(lost) < len(silent):
        return ("wait",)  # a link fault until proven otherwise
    survivors = [i for i in hosts if i not in lost]
    if lost:
        why += "; lost %s (silent for %gs)" % (", ".join(names[i] for i in lost), cfg["lost_after"])
    if attempt >= cfg["max_restarts"]:
        return ("end", "exhausted", "restarts exhausted (%d/%d): %s" % (attempt, cfg["max_restarts"], why))
    if len(survivors) < cfg["min_hosts"]:
        return ("end", "exhausted", "%s; %d host(s) left, job.min_hosts is %d"
                % (why, len(survivors), cfg["min_hosts"]))
    return ("restart", survivors, why)


def placement(cfg, hosts, me):
    """rank -> the torchrun variables of each of the ranks of this host in a world of `hosts`."""
    world = sum(len(cfg["hosts"][i]["ranks"]) for i in hosts)
    first = sum(len(cfg["hosts"][i]["ranks"]) for i in hosts[:hosts.index(me)])
    out = {}
    for local, rank in enumerate(cfg["hosts"][me]["ranks"]):
        out[rank] = {"RANK": first + local, "ROLE_RANK": first + local, "WORLD_SIZE": world,
                     "ROLE_WORLD_SIZE": world, "GROUP_RANK": hosts.index(me), "GROUP_WORLD_SIZE": len(hosts)}
    return out


# ---------------------------------------------------------------- the ranks of this host

def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


def read_int(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def append(path, text):
    with open(path, "a") as f:
        f.write(text)


def write_atomic(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


class Ranks:
    """The ranks of this host: started, watched, stopped; files as the launch step writes them."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.slots = {r["rank"]: r for r in cfg["ranks"]}
        self.pgid = {r: read_int("rank%d.pid" % r) for r in self.slots}
        self.exits = {}  # rank -> (code, time) of this attempt
        self.kill_at = None

    def poll(self):
        """Ranks that ended since the last call: [(rank, code, time)]."""
        new = []
        for rank in self.slots:
            if rank in self.exits:
                continue
            # The wrapper writes rankR.exit last: the rank is over even while its group lingers
            # as zombies (an init that reaps orphans late kept one "alive" 1.6 s, measured).
            code = read_int("rank%d.exit" % rank)
            pgid = self.pgid[rank]
            if code is None and pgid is not None and group_alive(pgid):
                continue
            self.exits[rank] = (code, time.time())
            new.append((rank, code, self.exits[rank][1]))
        if self.kill_at is not None and time.monotonic() >= self.kill_at:
            self.signal(signal.SIGKILL)
            self.kill_at = None
        return new

    def running(self):
        return [r for r in self.slots if r not in self.exits]

    def signal(self, sig):
        for rank in self.running():
            if self.pgid[rank] is not None:
                try:
                    os.killpg(self.pgid[rank], sig)
                except OSError:
                    pass

    def terminate(self, grace):
        self.signal(signal.SIGTERM)
        self.kill_at = time.monotonic() + grace

    def start(self, attempt, env, marker):
        """Attempt N of every rank: its exports in rankR.env and a marker in its log, then the
        RESTART step of the plan starts them, each in a new group (`launched rank=R pgid=N`)."""
        for rank in sorted(self.slots):
            values = dict(env[rank], TORCHELASTIC_RESTART_COUNT=attempt)
            write_atomic("rank%d.env" % rank,
                         "export %s\n" % " ".join("%s=%s" % kv for kv in sorted(values.items())))
            append("rank%d.log" % rank, "--- distctl: %s ---\n" % marker)
            self.pgid[rank] = None  # a rank the step does not start counts as ended (no code)
        out = run_step(self.cfg["restart"])
        for rank, pgid in launched(out):
            if rank in self.pgid:
                self.pgid[rank] = pgid
        self.exits = {}
        self.kill_at = None


def run_step(command):
    """The shell command of a plan step, run here; what it printed (its errors go to agent.log)."""
    proc = subprocess.run(["sh", "-c", command], stdin=subprocess.DEVNULL, capture_output=True,
                          close_fds=True, text=True)
    if proc.returncode != 0:
        append("agent.log", "restart step exited %d: %s\n" % (proc.returncode, proc.stderr.strip()))
    return proc.stdout


def launched(text):
    """[(rank, pgid)] from the `launched rank=R pgid=N` lines of a launch or restart step."""
    out = []
    for line in text.splitlines():
        words = dict(w.split("=", 1) for w in line.split()[1:] if "=" in w)
        if line.startswith("launched ") and words.get("rank", "").isdigit() and words.get("pgid", "").isdigit():
            out.append((int(words["rank"]), int(words["pgid"])))
    return out


# ---------------------------------------------------------------- messages

class Link:
    """A line-delimited JSON connection."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.heard = time.monotonic()
        self.host = None  # the host index of the peer, once it said hello
        sock.setblocking(False)

    def send(self, **msg):
        data = (json.dumps(msg) + "\n").encode()
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(5)
            self.sock.sendall(data)
            return True
        except OSError:
            return False
        finally:
            try:
                self.sock.setblocking(False)
            except OSError:
                pass

    def receive(self):
        """Messages now readable; None when the connection ended."""
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return None
        if not data:
            return None
        self.heard = time.monotonic()
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------- the agent

class Agent:
    def __init__(self, cfg):
        self.cfg = cfg
        self.me = cfg["me"]
        self.names = [h["name"] for h in cfg["hosts"]]
        self.ranks = Ranks(cfg)
        self.attempt = 0
        self.hosts = list(range(len(cfg["hosts"])))
        self.state = {"format": 1, "attempt": 0, "max_restarts": cfg["max_restarts"],
                      "hosts": list(self.names), "dropped": [], "restarts": [], "outcome": None}
        self.sel = selectors.DefaultSelector()
        self.outcome = None  # set once the run is over for this host
        self.stopping_ranks = False  # between a restart order and "stopped"
        self.write_state()

    # -- shared
    def log(self, text):
        append("agent.log", "%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), text))

    def event(self, text):
        append("agent.events", text + "\n")
        self.log(text)

    def write_state(self):
        write_atomic("agent.state", json.dumps(self.state) + "\n")

    def stop_requested(self):
        return os.path.exists("stopping")

    def adopt(self, state):
        self.state.update(state)
        self.write_state()

    def begin_end(self, outcome, text):
        """The run is over for this host: say so, and let (or make) the ranks end."""
        if self.outcome is not None:
            return
        self.outcome = outcome
        self.adopt({"outcome": outcome if outcome in ("finished", "stopped") else "%s: %s" % (outcome, text)})
        if outcome != "stopped":
            self.event("end %s: %s" % (outcome, text))
        if outcome != "finished" and self.ranks.running():
            self.ranks.terminate(self.cfg["grace"])

    def finished(self):
        return self.outcome is not None and not self.ranks.running()

    def relaunch(self, attempt, hosts, text):
        self.attempt, self.hosts = attempt, hosts
        marker = "restart %d/%d after %s" % (attempt, self.cfg["max_restarts"], text)
        self.ranks.start(attempt, placement(self.cfg, hosts, self.me), marker)
        self.log("attempt %d started: ranks %s" % (attempt, sorted(self.ranks.slots)))


class Coordinator(Agent):
    """The agent on the host of rank 0: decides for every host."""

    def __init__(self, cfg):
        Agent.__init__(self, cfg)
        self.links = {}  # host index -> Link
        self.silent_since = {i: time.monotonic() for i in self.hosts if i != self.me}
        self.exits = {}
        self.first_failure = None
        self.phase = "run"  # run | stopping (waiting for every host to stop its ranks) | starting
        self.acks = set()
        self.phase_deadline = None
        self.pending = None  # (survivors, text) of the restart in progress
        self.stop_seen = False  # a member found the `stopping` file
        self.listener = socket.socket(socket.AF_INET6 if ":" in cfg["coord"][0] else socket.AF_INET)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((cfg["coord"][0], cfg["coord"][1]))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, None)

    def broadcast(self, **msg):
        for i, link in list(self.links.items()):
            if not link.send(**msg):
                self.drop_link(i)

    def drop_link(self, i):
        link = self.links.pop(i, None)
        if link is not None:
            self.sel.unregister(link.sock)
            link.close()
            self.silent_since[i] = link.heard
            self.log("lost contact with %s" % self.names[i])

    def on_message(self, link, msg):
        kind = msg.get("t")
        if kind == "hello":
            i = msg["host"]
            old = self.links.pop(i, None)
            if old is not None and old is not link:
                self.sel.unregister(old.sock)
                old.close()
            link.host = i
            self.links[i] = link
            self.silent_since.pop(i, None)
            self.log("%s connected (attempt %d)" % (self.names[i], msg.get("attempt", 0)))
            if i not in self.hosts:
                link.send(t="end", outcome="dropped", text="dropped from the run", state=self.state)
            elif self.outcome is not None:
                link.send(t="end", outcome=self.outcome, text=self.state["outcome"] or "", state=self.state)
            elif self.phase == "stopping":
                link.send(t="restart", attempt=self.attempt + 1, state=self.state)
            elif self.phase == "run" and msg.get("attempt", 0) != self.attempt:
                # It missed a whole attempt while cut off: its ranks are of no use to this one.
                for r in self.cfg["hosts"][i]["ranks"]:
                    self.note_exit(r, None, time.time())
            elif self.phase == "run":
                # Stamped on arrival, by this clock: the clocks of the hosts may disagree.
                for rank, code, _ in msg.get("exits", []):
                    self.note_exit(rank, code, time.time())
        elif kind == "exit" and msg.get("attempt") == self.attempt:
            self.note_exit(msg["rank"], msg["code"], time.time())  # on arrival, by this clock
        elif kind == "stopped" and msg.get("attempt") == self.attempt + 1:
            self.acks.add(link.host)
        elif kind == "stopping":
            self.stop_seen = True

    def note_exit(self, rank, code, at):
        if rank not in self.exits:
            self.exits[rank] = (code, at)
            if code != 0 and self.first_failure is None:
                self.first_failure = time.monotonic()

    def tick(self):
        now = time.monotonic()
        for rank, code, at in self.ranks.poll():
            if self.phase == "run":
                self.note_exit(rank, code, at)
        for i, link in list(self.links.items()):
            if now - link.heard > SILENT_S:
                self.drop_link(i)
        if self.outcome is not None:
            return
        stopping = self.stop_seen or self.stop_requested()
        if self.phase == "run":
            self.tick_run(now, stopping)
        elif stopping:
            self.end("stopped", "stopped by distctl stop")
        elif self.phase == "stopping":
            self.tick_stopping(now)
        elif self.phase == "starting":
            self.tick_starting(now)

    def tick_run(self, now, stopping):
        down = {i: now - t for i, t in self.silent_since.items()}
        failing = None if self.first_failure is None else now - self.first_failure
        action = decide(self.cfg, self.attempt, self.hosts, self.exits, down, stopping, failing)
        if action[0] == "done":
            self.end("finished", "every rank exited 0")
        elif action[0] == "end":
            self.end(action[1], action[2])
        elif action[0] == "restart":
            survivors, text = action[1], action[2]
            dropped = [self.names[i] for i in self.hosts if i not in survivors]
            attempt = self.attempt + 1
            self.event("restart %d/%d after %s" % (attempt, self.cfg["max_restarts"], text))
            for name in dropped:
                self.event("dropped %s" % name)
            self.adopt({"attempt": attempt, "hosts": [self.names[i] for i in survivors],
                        "dropped": self.state["dropped"] + dropped,
                        "restarts": self.state["restarts"] + [text]})
            self.pending = (survivors, text)
            self.hosts = survivors
            self.phase, self.acks = "stopping", set()
            self.phase_deadline = now + self.cfg["grace"] + self.cfg["lost_after"]
            self.broadcast(t="restart", attempt=attempt, state=self.state)
            self.ranks.terminate(self.cfg["grace"])

    def tick_stopping(self, now):
        others = [i for i in self.hosts if i != self.me]
        if self.ranks.running() or (set(others) - self.acks and now < self.phase_deadline):
            return
        missing = [i for i in others if i not in self.acks]
        if missing:  # never confirmed their ranks stopped: lost
            survivors = [i for i in self.hosts if i not in missing]
            names = ", ".join(self.names[i] for i in missing)
            if len(survivors) < self.cfg["min_hosts"]:
                self.end("exhausted", "%s did not stop its ranks; %d host(s) left, job.min_hosts is %d"
                         % (names, len(survivors), self.cfg["min_hosts"]))
                return
            self.event("dropped %s" % names)
            self.hosts = survivors
            self.adopt({"hosts": [self.names[i] for i in survivors],
                        "dropped": self.state["dropped"] + [self.names[i] for i in missing]})
        self.relaunch(self.attempt + 1, self.hosts, self.pending[1])
        self.exits, self.first_failure = {}, None
        self.phase, self.phase_deadline = "starting", now + PORT_WAIT_S

    def tick_starting(self, now):
        if (self.cfg["wait_port"] and not listening(*self.cfg["master"]) and now < self.phase_deadline
                and self.ranks.running()):
            return
        self.phase = "run"
        self.broadcast(t="start", attempt=self.attempt, hosts=self.hosts, text=self.pending[1], state=self.state)

    def end(self, outcome, text):
        self.broadcast(t="end", outcome=outcome, text=text, state=self.state)
        self.begin_end(outcome, text)

    def readable(self, key):
        if key.data is None:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            link = Link(sock)
            self.sel.register(sock, selectors.EVENT_READ, link)
            return
        link = key.data
        msgs = link.receive()
        if msgs is None:
            if link.host is not None and self.links.get(link.host) is link:
                self.drop_link(link.host)
            else:
                self.sel.unregister(link.sock)
                link.close()
            return
        for msg in msgs:
            self.on_message(link, msg)

    def heartbeat(self):
        self.broadcast(t="hb")

    def farewell(self):
        """Close so that the last message arrives: unread input would make close() a reset."""
        deadline = time.monotonic() + 2.0
        for link in self.links.values():
            try:
                link.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        for link in self.links.values():
            while time.monotonic() < deadline:
                try:
                    link.sock.settimeout(max(0.01, deadline - time.monotonic()))
                    if not link.sock.recv(65536):
                        break
                except OSError:
                    break
            link.close()


class Member(Agent):
    """The agent on any other host: reports to the coordinator and does what it says."""

    def __init__(self, cfg):
        Agent.__init__(self, cfg)
        self.link = None
        self.cut_since = time.monotonic()
        self.next_try = 0.0
        self.restart_to = None  # the attempt being stopped for
        self.acked = False  # "stopped" sent for it

    def connect(self, now):
        if self.link is not None or now < self.next_try:
            return
        self.next_try = now + RETRY_S
        try:
            sock = socket.create_connection(tuple(self.cfg["coord"]), timeout=3)
        except OSError:
            return
        self.link = Link(sock)
        self.sel.register(sock, selectors.EVENT_READ, self.link)
        exits = [[r, c, t] for r, (c, t) in self.ranks.exits.items()]
        self.link.send(t="hello", host=self.me, attempt=self.attempt, exits=exits)
        if self.stop_requested():
            self.link.send(t="stopping")
        self.cut_since = None

    def disconnect(self):
        if self.link is not None:
            self.sel.unregister(self.link.sock)
            self.link.close()
            self.link = None
            self.cut_since = time.monotonic()

    def send(self, **msg):
        if self.link is not None and not self.link.send(**msg):
            self.disconnect()

    def on_message(self, msg):
        kind = msg.get("t")
        if "state" in msg:
            self.adopt(msg["state"])
        if kind == "restart" and self.outcome is None:
            self.restart_to, self.acked = msg["attempt"], False
            self.ranks.terminate(self.cfg["grace"])
        elif kind == "start" and self.outcome is None:
            self.restart_to = None
            self.relaunch(msg["attempt"], msg["hosts"], msg["text"])
        elif kind == "end":
            if msg["outcome"] == "dropped":
                self.event("dropped %s" % self.names[self.me])
            self.begin_end(msg["outcome"], msg.get("text", ""))

    def tick(self):
        now = time.monotonic()
        self.connect(now)
        if self.link is not None and now - self.link.heard > SILENT_S:
            self.disconnect()
        for rank, code, at in self.ranks.poll():
            if self.restart_to is None:
                self.send(t="exit", rank=rank, code=code, at=at, attempt=self.attempt)
        if self.restart_to is not None and not self.acked and not self.ranks.running() and self.link is not None:
            self.send(t="stopped", attempt=self.restart_to)
            self.acked = self.link is not None
        if self.stop_requested() and self.outcome is None:
            self.send(t="stopping")
            self.begin_end("stopped", "stopped by distctl stop")
        cut = None if self.cut_since is None else now - self.cut_since
        if (self.outcome is None and cut is not None and cut > self.cfg["lost_after"]
                and (not self.ranks.running() or any(c != 0 for c, _ in self.ranks.exits.values()))):
            self.begin_end("failed", "lost contact with the coordinator on %s for %gs" % (self.names[0], cut))

    def readable(self, key):
        msgs = self.link.receive() if self.link is not None else None
        if msgs is None:
            self.disconnect()
            return
        for msg in msgs:
            self.on_message(msg)

    def heartbeat(self):
        self.send(t="hb")

    def farewell(self):
        self.disconnect()


def listening(addr, port):
    try:
        socket.create_connection((addr, port), timeout=1).close()
    except OSError:
        return False
    return True


def serve(agent):
    beat = 0.0
    while not agent.finished():
        for key, _ in agent.sel.select(TICK_S):
            agent.readable(key)
        agent.tick()
        if time.monotonic() - beat >= HEARTBEAT_S:
            agent.heartbeat()
            beat = time.monotonic()
    agent.farewell()
    agent.log("done: %s" % agent.state["outcome"])


def main(argv):
    if len(argv) != 1:
        sys.stderr.write("usage: agent.py CONFIG_JSON\n")
        return 2
    cfg = json.loads(argv[0])
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    agent = Coordinator(cfg) if cfg["me"] == 0 else Member(cfg)
    try:
        serve(agent)
    except Exception as e:  # the ranks run on; what went wrong is on record
        agent.log("agent failed: %s: %s" % (type(e).__name__, e))
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
