"""Keeps a RunView current from the run's hosts, the way `logs -f` and `status` read them.

- At start, one command per host sends each rank's progress history (its progress lines, not
  the whole log) and the line count it read up to; then one follower per host (links.py, so
  link faults heal) goes on from exactly that count. A detached or finished run thus gets its
  whole curves for a few bytes a step, and the log pane loads a rank's last lines on demand.
- Every few seconds, one command per host: each rank's state (lifecycle.status_script, the
  restart agent's state with it) and the host's health (load, memory, the interface towards
  rank 0, GPU utilisation and memory where `nvidia-smi` answers).
- When no host can be reached, the logs `distctl pull` brought back stand in.
"""

from __future__ import annotations

import threading
from pathlib import Path

from orchestrator import shell
from orchestrator.ssh import group
from orchestrator.errors import DistctlError, HostError
from orchestrator.run.lifecycle import OURS, parse_agent, parse_status, status_script
from orchestrator.run.links import HostLinks
from orchestrator.ssh.remote import Connection, connect
from orchestrator.plan.state import HostState, RunState
from orchestrator.ssh.stream import follow
from orchestrator.run.watch import RankEvents
from orchestrator.console.ui import Ui
from orchestrator.web.view import RunView

POLL_S = 5.0
HISTORY_LINES = 20_000  # per rank: the newest progress lines a page starts with
PROGRESS_LINE = "^(epoch=|distctl: step=|--- distctl: )"  # progress.py's shapes


def history_script(hs: HostState) -> str:
    """`count R N` (lines of rankR.log read) then `h R LINE` for each progress line among them;
    `ended R` for a rank whose exit code is written while no restart agent lives (nothing more
    will come: it needs no follower)."""
    grep = shell.join(["grep", "-E", PROGRESS_LINE])
    return shell.lines(
        f"cd {shell.join([hs.rundir])} 2>/dev/null || exit 0",
        OURS,
        'agent=0; [ -f agent.pid ] && g=$(cat agent.pid) && ours "$g" && kill -0 -"$g" 2>/dev/null && agent=1',
        f"for r in {' '.join(str(r.rank) for r in hs.ranks)}; do",
        '  n=$(wc -l < "rank$r.log" 2>/dev/null) || n=0; echo "count $r $n"',
        '  [ $agent = 0 ] && [ -f "rank$r.exit" ] && echo "ended $r"',
        f'  head -n "$n" "rank$r.log" 2>/dev/null | {grep} | tail -n {HISTORY_LINES} | sed "s/^/h $r /"',
        "done; true")


def parse_history(output: str) -> tuple[dict[int, int], list[tuple[int, str]], set[int]]:
    """(lines read per rank, progress lines, ranks that ended)."""
    counts, lines, ended = {}, [], set()
    for line in output.splitlines():
        head, _, rest = line.partition(" ")
        rank, _, text = rest.partition(" ")
        if head == "count" and rank.isdigit() and text.strip().isdigit():
            counts[int(rank)] = int(text)
        elif head == "h" and rank.isdigit():
            lines.append((int(rank), text))
        elif head == "ended" and rank.isdigit():
            ended.add(int(rank))
    return counts, lines, ended


def health_script(master_addr: str) -> str:
    addr = shell.join([master_addr])
    return shell.lines(
        'echo "load $(cut -d" " -f1-3 /proc/loadavg 2>/dev/null)"',
        "awk '/^MemTotal:|^MemAvailable:/ {print \"mem\", $1, $2}' /proc/meminfo 2>/dev/null",
        f"i=$(ip -o -4 addr show to {addr} 2>/dev/null | awk '{{print $2; exit}}')",
        f"[ -n \"$i\" ] || i=$(ip -o -4 route get {addr} 2>/dev/null | sed -n 's/.* dev \\([^ ]*\\).*/\\1/p')",
        '[ -n "$i" ] && echo "iface $i"',
        "command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=utilization.gpu,memory.used,memory.total "
        "--format=csv,noheader,nounits 2>/dev/null | sed 's/^/gpu /'",
        "true")


def parse_health(output: str) -> dict:
    """load (1, 5, 15 min), mem_total/mem_available (kB), interface, gpus [{util, mem_used, mem_total}] (MiB)."""
    found: dict = {"gpus": []}
    for line in output.splitlines():
        head, _, rest = line.partition(" ")
        try:
            if head == "load" and rest.strip():
                found["load"] = [float(x) for x in rest.split()[:3]]
            elif head == "mem":
                key, value = rest.split()[:2]
                found["mem_total" if key == "MemTotal:" else "mem_available"] = int(value)
            elif head == "iface":
                found["interface"] = rest.strip()
            elif head == "gpu":
                util, used, total = (float(x) for x in rest.split(",")[:3])
                found["gpus"].append({"util": util, "mem_used": used, "mem_total": total})
        except ValueError:
            continue
    return found


class Notices(Ui):
    """What HostLinks says (`node2: connection lost, reconnecting`), as notices on the page."""

    def __init__(self, view: RunView):
        super().__init__(quiet=True)
        self.view = view

    def info(self, message: str) -> None:
        self.view.notice(message)

    warn = info


class Feed:
    def __init__(self, state: RunState, view: RunView, fanout: int, mask=lambda text: text, poll_s: float = POLL_S):
        self.state = state
        self.view = view
        self.fanout = fanout
        self.mask = mask
        self.poll_s = poll_s
        self.conns: dict[str, Connection] = {}
        self.done = threading.Event()
        self._links: HostLinks | None = None

    def connect(self) -> int:
        """Connect to every host at once; returns how many answered."""
        connected = group.connect_each([hs.host for hs in self.state.hosts], self.state.ssh, self.fanout)
        self.conns.update(connected.ok)
        for name, exc in connected.failed.items():
            self.view.unreachable(name, exc.cause)
        return len(self.conns)

    def start(self) -> None:
        threading.Thread(target=self._follow, name="web-follow", daemon=True).start()
        threading.Thread(target=self._poll, name="web-poll", daemon=True).start()

    def close(self) -> None:
        self.done.set()
        if self._links:
            self._links.stop()
        group.close_all(self.conns)

    # ------------------------------------------------------------------ rank logs

    def _follow(self) -> None:
        hosts = [hs for hs in self.state.hosts if hs.host.name in self.conns]
        counts, ended = self._history(hosts)
        # A finished rank needs no follower (its state comes with every poll): a finished run opens
        # no channel beyond the command session, and a view closed at once leaves no login shell
        # half way through its start-up (a pyenv rehash killed there leaves its lock behind).
        live = {r.rank for hs in hosts for r in hs.ranks} - ended
        if not live:
            return
        links = self._links = HostLinks(self.state, self.conns, Notices(self.view), self.state.ssh.reconnect_timeout,
                                        ranks=live)
        links.seen.update({r: n for r, n in counts.items() if r in links.seen})
        events = RankEvents(lambda host, rank, text: self.view.line(host, rank, self.mask(text)),
                            self.view.exit, self.view.event)
        try:
            followers = links.open_all()
            follow(followers, lambda f, text: links.line(f, text, events.line), links=links, flush=lambda: None)
        except DistctlError as exc:
            self.view.notice(f"following the logs failed: {exc}")

    def _history(self, hosts: list[HostState]) -> tuple[dict[int, int], set[int]]:
        def one(hs: HostState) -> str:
            return self.conns[hs.host.name].run(history_script(hs), timeout=120).stdout

        found = group.fan_out("history", hosts, one, self.fanout, lambda hs: hs.host.name)
        counts: dict[int, int] = {}
        ended: set[int] = set()
        for hs in hosts:
            if hs.host.name not in found.ok:
                continue
            host_counts, lines, host_ended = parse_history(found.ok[hs.host.name])
            counts.update(host_counts)
            ended |= host_ended
            for rank, text in lines:
                self.view.line(hs.host.name, rank, self.mask(text), live=False)
        return counts, ended

    # ------------------------------------------------------------------ status and health

    def _poll(self) -> None:
        while not self.done.is_set():
            self.poll_once()
            self.done.wait(self.poll_s)

    def poll_once(self) -> None:
        def one(hs: HostState) -> str:
            conn = self.conns.get(hs.host.name)
            if conn is None:  # not reachable at the start: try again, without following it
                conn = self.conns[hs.host.name] = connect(hs.host, self.state.ssh)
            command = shell.lines(health_script(self.state.master_addr),
                                  status_script(hs.rundir, [r.rank for r in hs.ranks]))
            return conn.run(command, timeout=30).stdout

        found = group.fan_out("poll", self.state.hosts, one, self.fanout, lambda hs: hs.host.name)
        for name, out in found.ok.items():
            self.view.health(name, parse_health(out))
            self.view.statuses(name, parse_status(out), parse_agent(out))
        for name, exc in found.failed.items():
            self.view.unreachable(name, exc.cause)

    # ------------------------------------------------------------------ on demand

    def log_tail(self, rank: int, lines: int) -> list[str]:
        """The last `lines` lines of a rank's log, from its host."""
        hs = next(hs for hs in self.state.hosts if any(r.rank == rank for r in hs.ranks))
        conn = self.conns.get(hs.host.name)
        if conn is None:
            raise HostError(hs.host.name, "unreachable")
        log = shell.join([f"{hs.rundir}/rank{rank}.log"])
        out = conn.run(f"tail -n {int(lines)} {log} 2>/dev/null", timeout=30).stdout
        return [self.mask(line) for line in out.splitlines()]


def pulled_folder(state: RunState, extra: Path | None = None) -> Path | None:
    """Where `distctl pull` put the run's files (`runs/<run id>/` under --to): looked for under
    `extra`, the directory the run was started from, and the current one."""
    for base in (extra, Path(state.cwd) if state.cwd else None, Path.cwd()):
        if base is not None and (base / "runs" / state.run_id).is_dir():
            return base / "runs" / state.run_id
    return None


class PulledFeed:
    """A finished run whose hosts are gone: its curves and last lines from the pulled rank logs."""

    def __init__(self, state: RunState, view: RunView, folder: Path, mask=lambda text: text):
        self.state, self.view, self.folder, self.mask = state, view, folder, mask

    def start(self) -> None:
        for hs in self.state.hosts:
            for r in hs.ranks:
                lines = self._read(r.rank)
                for text in lines:
                    self.view.line(hs.host.name, r.rank, text, live=False)
                self.view.log_lines(r.rank, lines[-200:])
                with self.view.lock:
                    self.view.ranks[r.rank].state = "unknown"
                    self.view.meta += 1
        self.view.notice(f"no host of the run could be reached: showing what distctl pull brought back ({self.folder})")

    def close(self) -> None:
        pass

    def log_tail(self, rank: int, lines: int) -> list[str]:
        return self._read(rank)[-lines:]

    def _read(self, rank: int) -> list[str]:
        try:
            text = (self.folder / f"rank{rank}.log").read_text(errors="replace")
        except OSError:
            return []
        return [self.mask(line) for line in text.splitlines()]

