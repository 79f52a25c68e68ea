"""Watch a run's ranks on their host and restart them after a failure, without the workstation.

    agent.py CONFIG_JSON

Started detached by the launch step of every run, right after the host's ranks (attempt 0)
were started; it adopts them through their rankR.pid files.

Without job.max_restarts or job.hang_timeout (config "watch") the agent is a Watcher
(agent_policy.py): alone on its host, no port, no peers. It records how the ranks here ended
in agent.state and, a while after one of them failed, stops the others here.

Otherwise the agent on rank 0's host is the coordinator: it listens on rank 0's address at
job.port + 1, every other agent connects to it, reports its ranks' exits and sends a
heartbeat. The coordinator alone decides (agent_policy.decide, a pure function):

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

With job.hang_timeout (config "hang_timeout"), each agent also reads its ranks' logs as they
grow (Ranks.progressed, Ranks.joined) and members tell the coordinator in their heartbeats how
long their ranks have been quiet; when no rank progressed for that long, every host takes its
ranks' stacks (RunDir.take_stacks) and the run restarts or ends as `hung`. With max_restarts 0
the agent only watches: it never restarts, it stops the other ranks when one fails or it hangs.

The decisions are agent_policy.py (Coordinator, Member, Watcher: pure code over the Ranks and Host
interfaces and a clock, returning the messages to send); this file is the I/O: the rank
processes, the run directory's files, and one loop over the sockets. On a host both are one
program (hostside/__init__.py joins them). An agent that dies stops nothing: the others treat
its host as silent (README, "Restarts and lost hosts").
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

from orchestrator.hostside.prelude import group_alive, listening, read_int
from orchestrator.hostside.tracking import ProgressFile
from orchestrator.hostside.agent_policy import (COORDINATOR, Action, Close, Coordinator, Exit, Member, Msg,
                                                Send, Watcher)

TICK_S = 0.2
PROGRESS_S = 0.5  # how often the logs of the ranks are read for their progress
STACKS_TIMEOUT_S = 20.0  # the stacks of the ranks of a hung run: bounded, the run is torn down after
RETRY_S = 1.0
MAX_PENDING = 32  # connections not yet authenticated; past it, the oldest is closed


# ---------------------------------------------------------------- the ranks of this host

def append(path: str, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def write_atomic(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


class Ranks:
    """The ranks of this host: started, watched, stopped; files as the launch step writes them."""

    def __init__(self, cfg: Msg) -> None:
        self.cfg = cfg
        self.slots: list[int] = [r["rank"] for r in cfg["ranks"]]
        self.pgid: dict[int, int | None] = {r: read_int("rank%d.pid" % r) for r in self.slots}
        self.exits: dict[int, Exit] = {}  # rank -> (code, time) of this attempt
        self.kill_at: float | None = None
        # The hang watch (job.hang_timeout): how far each log was read, and what it showed.
        self.join_line = (cfg.get("join_line") or "").encode()
        self.offset: dict[int, int] = {r: attempt_start("rank%d.log" % r, read_int("rank%d.from" % r) or 0)
                                       for r in self.slots}
        self.carry: dict[int, bytes] = {r: b"" for r in self.slots}
        self.joins: set[int] = set()
        self.fresh: set[int] = set()
        # The progress of each rank (rankR.progress), from where the current attempt starts.
        self.progress = {r: ProgressFile(r, self.offset[r]) for r in self.slots}
        self.tracked: set[int] = set()  # ranks whose end the progress file has caught up with
        self.next_track = 0.0
        self.track_every = float(cfg.get("progress", PROGRESS_S))  # 0: off (the baseline of a benchmark)

    def track(self, final: bool = False) -> None:
        """Keep the progress file of each rank, every PROGRESS_S; a rank that ended once more, at
        once (its last step); every rank when `final` (the agent ends)."""
        now = time.time()
        ended = [r for r in self.exits if r not in self.tracked]
        if not self.track_every or (not final and not ended and now < self.next_track):
            return
        self.next_track = now + self.track_every
        for rank, progress in self.progress.items():
            progress.pump(now, final=final or rank in ended)
        self.tracked.update(ended)

    def poll(self) -> list[tuple[int, int | None]]:
        """Ranks that ended since the last call: [(rank, code)]."""
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
            new.append((rank, code))
        if self.kill_at is not None and time.monotonic() >= self.kill_at:
            self.signal(signal.SIGKILL)
            self.kill_at = None
        return new

    def running(self) -> list[int]:
        return [r for r in self.slots if r not in self.exits]

    def progressed(self) -> list[int]:
        """Ranks whose log grew since the last call (the `--- distctl:` lines of distctl aside)."""
        for rank in self.slots:
            self.read_log(rank)
        out, self.fresh = sorted(self.fresh), set()
        return out

    def joined(self) -> list[int]:
        return sorted(self.joins)

    def read_log(self, rank: int) -> None:
        path = "rank%d.log" % rank
        try:
            size = os.path.getsize(path)
            if size <= self.offset[rank]:
                self.offset[rank] = min(size, self.offset[rank])
                return
            with open(path, "rb") as f:
                f.seek(self.offset[rank])
                data = f.read(min(size - self.offset[rank], 1 << 20))
        except OSError:
            return
        self.offset[rank] += len(data)
        *lines, rest = (self.carry[rank] + data).split(b"\n")
        self.carry[rank] = rest[-4096:]
        own = [line for line in lines if not line.startswith(MARK)]
        if own or (rest and not rest.startswith(MARK) and not MARK.startswith(rest)):
            self.fresh.add(rank)
            if not self.join_line or any(line.startswith(self.join_line) for line in own):
                self.joins.add(rank)

    def signal(self, sig: int) -> None:
        """Signal the group of every running rank while it is ours (never a recycled id)."""
        for rank in self.running():
            pgid = self.pgid[rank]
            if pgid is not None and group_alive(pgid):
                try:
                    os.killpg(pgid, sig)
                except OSError:
                    pass

    def terminate(self, grace: float) -> None:
        self.signal(signal.SIGTERM)
        self.kill_at = time.monotonic() + grace

    def start(self, attempt: int, env: dict[int, dict[str, int]], marker: str) -> None:
        """Attempt N of every rank: its exports in rankR.env and a marker in its log, then the
        RESTART step of the plan starts them, each in a new group (`launched rank=R pgid=N`)."""
        for rank in sorted(self.slots):
            values = dict(env[rank], TORCHELASTIC_RESTART_COUNT=attempt)
            write_atomic("rank%d.env" % rank,
                         "export %s\n" % " ".join("%s=%s" % kv for kv in sorted(values.items())))
            self.progress[rank].pump(time.time(), final=True)  # what the attempt that ends wrote last
            append("rank%d.log" % rank, "--- distctl: %s ---\n" % marker)
            self.pgid[rank] = None  # a rank the step does not start counts as ended (no code)
            self.offset[rank] = os.path.getsize("rank%d.log" % rank)  # the hang watch starts here
            self.progress[rank].restart(self.offset[rank])
            self.carry[rank] = b""
        self.joins, self.fresh = set(), set()
        out = run_step(self.cfg["restart"])
        for rank, pgid in launched(out):
            if rank in self.pgid:
                self.pgid[rank] = pgid
        self.exits = {}
        self.tracked = set()
        self.kill_at = None


MARK = b"--- distctl: "  # a line distctl writes into a rank log: no progress of the rank


def attempt_start(path: str, lines: int) -> int:
    """The byte offset after the first `lines` lines of `path` (what earlier attempts wrote)."""
    offset = 0
    try:
        with open(path, "rb") as f:
            for _ in range(lines):
                line = f.readline()
                if not line:
                    break
                offset += len(line)
    except OSError:
        pass
    return offset


def run_step(command: str) -> str:
    """The shell command of a plan step, run here; what it printed (its errors go to agent.log)."""
    proc = subprocess.run(["sh", "-c", command], stdin=subprocess.DEVNULL, capture_output=True,
                          close_fds=True, text=True)
    if proc.returncode != 0:
        append("agent.log", "restart step exited %d: %s\n" % (proc.returncode, proc.stderr.strip()))
    return proc.stdout


def launched(text: str) -> list[tuple[int, int]]:
    """[(rank, pgid)] from the `launched rank=R pgid=N` lines of a launch or restart step."""
    out = []
    for line in text.splitlines():
        words = dict(w.split("=", 1) for w in line.split()[1:] if "=" in w)
        if line.startswith("launched ") and words.get("rank", "").isdigit() and words.get("pgid", "").isdigit():
            out.append((int(words["rank"]), int(words["pgid"])))
    return out


class RunDir:
    """The agent files of the run directory: the Host of the policy."""

    def __init__(self, cfg: Msg) -> None:
        self.cfg = cfg
        self.paused: list[str] = []

    def log(self, text: str) -> None:
        append("agent.log", "%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), text))

    def event(self, text: str) -> None:
        append("agent.events", text + "\n")
        self.log(text)

    def write_state(self, state: Msg) -> None:
        write_atomic("agent.state", json.dumps(state) + "\n")

    def stop_requested(self) -> bool:
        return os.path.exists("stopping")

    def master_listening(self) -> bool:
        return listening(self.cfg["master"][0], self.cfg["master"][1])

    def take_stacks(self, why: str = "hang") -> None:
        """The stacks of the ranks of this host, as `distctl stacks` takes them (hostside/stacks.py), saved in
        stacks/WHY-TIME/ (rankR.txt for each rank, and the JSON lines of the program in ranks.jsonl);
        the name of the folder goes to the `hung` file (WHY hang) or the `failure-stacks` file
        (WHY failure: the ranks still running when one here failed), where `up` and `status` find it."""
        if not self.cfg.get("stacks"):
            return
        stamp = "%s-%s-%d" % (why, time.strftime("%Y%m%dT%H%M%S"), os.getpid())
        before, after = self.cfg["stacks"]
        try:
            proc = subprocess.run(["sh", "-c", "%s %s %s" % (before, stamp, after)], stdin=subprocess.DEVNULL,
                                  capture_output=True, close_fds=True, text=True, timeout=STACKS_TIMEOUT_S)
            out, problem = proc.stdout, proc.stderr.strip()[-300:] if proc.returncode else ""
        except (OSError, subprocess.TimeoutExpired) as e:
            out, problem = "", str(e)
        os.makedirs(os.path.join("stacks", stamp), exist_ok=True)
        write_atomic(os.path.join("stacks", stamp, "ranks.jsonl"), out)
        append("hung" if why == "hang" else "failure-stacks", stamp + "\n")
        self.log("stacks taken: stacks/%s%s" % (stamp, "; " + problem if problem else ""))

    def pause(self, moment: str) -> None:
        """Stop here while `agent.paused` exists, so that a test kills the agent at a moment it
        chooses, never by timing. Only where the config key "pause" names this host and moment."""
        me = self.cfg["hosts"][self.cfg["me"]]["name"]
        if moment not in self.cfg.get("pause", {}).get(me, []) or moment in self.paused:
            return
        self.paused.append(moment)
        append("agent.paused", moment + "\n")
        self.log("paused at %s (test hook)" % moment)
        while os.path.exists("agent.paused"):
            time.sleep(0.05)


# ---------------------------------------------------------------- messages

MAX_LINE = 16384  # bytes: no agent message comes near it
KEY_LINE = "distctl_agent_key="  # in the env file of the run directory (0600): the secret of the run


def run_key() -> bytes | None:
    """The secret the workstation wrote into `env` over SSH for this run (never on a command line)."""
    try:
        with open("env") as f:
            for line in f:
                if line.startswith(KEY_LINE):
                    return line[len(KEY_LINE):].strip().encode()
    except OSError:
        pass
    return None


def mac(key: bytes, nonce: str, body: Msg) -> str:
    text = nonce + json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


class Link:
    """A line-delimited JSON connection, authenticated with the key of the run: each side first sends
    a fresh nonce; every message after that carries a sequence number and an HMAC-SHA256 (the
    key, the nonce of the receiver, the message), so none can be forged, replayed or reordered.
    Anything else ends the connection: `why` says what, the policy never sees it."""

    def __init__(self, sock: socket.socket, key: bytes | None, peer: str = "") -> None:
        self.sock, self.key, self.peer = sock, key, peer
        self.buf = b""
        self.why = ""  # why the connection was dropped, when it was
        self.mine = os.urandom(16).hex()
        self.theirs: str | None = None
        self.sent = self.got = 0
        self.queue: list[Msg] = []  # sent before the nonce of the peer arrived
        self.opened = time.monotonic()
        sock.setblocking(False)
        if key is not None:
            self.write({"t": "nonce", "n": self.mine})

    @property
    def authenticated(self) -> bool:
        return self.key is None or self.got > 0

    def send(self, msg: Msg) -> bool:
        if self.key is None:
            return self.write(msg)
        if self.theirs is None:
            self.queue.append(msg)
            return True
        self.sent += 1
        body = dict(msg, seq=self.sent)
        body["mac"] = mac(self.key, self.theirs, body)
        return self.write(body)

    def write(self, msg: Msg) -> bool:
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

    def receive(self) -> list[Msg] | None:
        """Messages now readable; None when the connection ended or was dropped (see `why`)."""
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return None
        if not data:
            return None
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        if len(self.buf) > MAX_LINE:
            self.drop("a line longer than %d bytes" % MAX_LINE)
            return None
        out = []
        for line in lines:
            try:
                msg = json.loads(line) if len(line) <= MAX_LINE else None
            except ValueError:
                msg = None
            if not isinstance(msg, dict):
                self.drop("not a JSON object")
                return None
            if self.key is not None:
                checked = self.check(msg)
                if checked is None:
                    return None
                if not checked:
                    continue  # the nonce
            out.append(msg)
        return out

    def check(self, msg: Msg) -> bool | None:
        """True: an authentic message (its seq and mac removed); False: the nonce of the peer; None: dropped."""
        assert self.key is not None
        if self.theirs is None:
            nonce = msg.get("n")
            if msg.get("t") != "nonce" or not isinstance(nonce, str) or len(nonce) != 32:
                self.drop("no nonce first")
                return None
            self.theirs = nonce
            for queued in self.queue:
                self.send(queued)
            self.queue = []
            return False
        given = msg.pop("mac", None)
        expected = mac(self.key, self.mine, msg)
        authentic = isinstance(given, str) and given.isascii() and hmac.compare_digest(given, expected)
        if not authentic:
            self.drop("bad or missing MAC (not an agent of this run)")
            return None
        if msg.pop("seq", None) != self.got + 1:
            self.drop("a message out of sequence")
            return None
        self.got += 1
        return True

    def drop(self, why: str) -> None:
        self.why = why

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------- the loop

class Loop:
    """Sockets for a policy (Coordinator or Member): what arrives goes to it, what it returns is done."""

    def __init__(self, cfg: Msg, policy: Coordinator | Member | Watcher, ranks: Ranks) -> None:
        self.cfg, self.policy, self.ranks = cfg, policy, ranks
        self.sel = selectors.DefaultSelector()
        self.links: dict[int, Link] = {}
        self.ids = itertools.count(1)
        self.listener: socket.socket | None = None
        self.next_try = 0.0
        self.key = run_key()
        if self.key is None and not isinstance(policy, Watcher):
            policy.host.log("no run key in env: messages between agents are not authenticated")
        if isinstance(policy, Coordinator):
            addr, port = cfg["coord"][0], cfg["coord"][1]
            self.listener = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((addr, port))
            self.listener.listen(64)
            self.listener.setblocking(False)
            self.sel.register(self.listener, selectors.EVENT_READ, None)

    def add(self, link_id: int, sock: socket.socket, peer: str) -> None:
        self.links[link_id] = Link(sock, self.key, peer)
        self.sel.register(sock, selectors.EVENT_READ, link_id)

    def drop(self, link_id: int) -> None:
        link = self.links.pop(link_id, None)
        if link is not None:
            self.sel.unregister(link.sock)
            link.close()

    def do(self, actions: list[Action]) -> None:
        while actions:
            action = actions.pop(0)
            if isinstance(action, Send):
                link = self.links.get(action.link)
                if link is not None and not link.send(action.msg):
                    self.drop(action.link)
                    actions += self.policy.closed(action.link)
            elif isinstance(action, Close):
                self.drop(action.link)

    def connect(self) -> None:
        """A member: (re)connect to the coordinator, at most once every RETRY_S."""
        policy = self.policy
        if not isinstance(policy, Member) or not policy.wants_link() or time.monotonic() < self.next_try:
            return
        self.next_try = time.monotonic() + RETRY_S
        try:
            sock = socket.create_connection((self.cfg["coord"][0], self.cfg["coord"][1]), timeout=3)
        except OSError:
            return
        self.add(COORDINATOR, sock, "the coordinator")
        self.do(policy.connected())

    def readable(self, link_id: int | None) -> None:
        policy = self.policy
        if link_id is None:
            assert self.listener is not None and isinstance(policy, Coordinator)
            try:
                sock, addr = self.listener.accept()
            except OSError:
                return
            pending = sorted((lk.opened, i) for i, lk in self.links.items() if not lk.authenticated)
            if len(pending) >= MAX_PENDING:  # a flood of strangers: the oldest of them goes
                oldest = pending[0][1]
                policy.host.log("dropped a connection from %s: more than %d not authenticated"
                                % (self.links[oldest].peer, MAX_PENDING))
                self.drop(oldest)
                self.do(policy.closed(oldest))
            new = next(self.ids)
            self.add(new, sock, str(addr[0]))
            policy.opened(new)
            return
        link = self.links.get(link_id)
        msgs = link.receive() if link is not None else None
        if msgs is None:
            if link is not None and link.why:
                policy.host.log("dropped a connection from %s: %s" % (link.peer, link.why))
            self.drop(link_id)
            self.do(policy.closed(link_id))
            return
        for msg in msgs:
            self.do(policy.receive(link_id, msg))

    def serve(self) -> None:
        while not self.policy.finished():
            self.connect()
            for key, _ in self.sel.select(TICK_S):
                self.readable(key.data)
            self.do(self.policy.tick())
            self.ranks.track()
        self.ranks.track(final=True)
        self.farewell()
        self.policy.host.log("done: %s" % self.policy.state["outcome"])

    def farewell(self) -> None:
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


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: agent.py CONFIG_JSON\n")
        return 2
    cfg = json.loads(argv[0])
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if cfg.get("hang_timeout") and os.path.exists("hung"):
        os.remove("hung")  # left by an earlier attempt (up --resume): not of this run
    rundir = RunDir(cfg)
    kind = Watcher if cfg.get("watch") else Coordinator if cfg["me"] == 0 else Member
    ranks = Ranks(cfg)
    policy = kind(cfg, ranks, rundir, time.monotonic)
    try:
        Loop(cfg, policy, ranks).serve()
    except Exception as e:  # the ranks run on; what went wrong is on record
        rundir.log("agent failed: %s: %s" % (type(e).__name__, e))
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
