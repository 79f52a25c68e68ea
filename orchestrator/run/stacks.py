"""`distctl stacks`: every rank's Python stacks, from every host at once, grouped.

Each host runs hostside/stacks.py, which signals the processes that hostside/sitecustomize.py
armed and returns what their faulthandler wrote. Here, pure: the dumps parsed, each rank's main
thread told apart (waiting in a collective, or busy somewhere), ranks with identical stacks
shown once with their rank list, and a roll-call first that names the odd ones out:
`ranks 0,2-7 wait in all_reduce (train.py:88); rank 1 on node2 is in load_batch (data.py:40)`.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

from orchestrator import shell
from orchestrator.ssh import group
from orchestrator.errors import HostError
from orchestrator.console.rankset import format_ranks, ranks_phrase
from orchestrator.ssh.remote import Connection
from orchestrator.hostside import program
from orchestrator.plan.state import HostState, RunState

DUMP_TIMEOUT_S = 2.0  # an armed process writes its dump within milliseconds; this bounds a stuck one
_THREAD = re.compile(r"^(Current thread|Thread) (0x[0-9a-fA-F]+)")
_FRAME = re.compile(r'^\s+File "(.*)", line (\d+) in (.*)$')
_LIBRARY = ("/site-packages/", "/dist-packages/", "/lib/python3", "/lib64/python3", "<frozen ")


@dataclass(frozen=True)
class Frame:
    file: str
    line: int
    function: str

    def where(self, workdir: str) -> str:
        """`train.py:88` for the run's code (relative to its working folder), else the file's name."""
        path = self.file[len(workdir):] if workdir and self.file.startswith(workdir) else self.file.rsplit("/", 1)[-1]
        return f"{path}:{self.line}"


@dataclass(frozen=True)
class Thread:
    ident: int
    frames: tuple[Frame, ...]  # innermost first, as faulthandler writes them


def parse_dump(text: str) -> list[Thread]:
    """faulthandler's `Thread 0x... (most recent call first):` blocks."""
    threads: list[Thread] = []
    for line in text.splitlines():
        head, frame = _THREAD.match(line), _FRAME.match(line)
        if head:
            threads.append(Thread(int(head.group(2), 16), ()))
        elif frame and threads:
            last = threads[-1]
            threads[-1] = Thread(last.ident, (*last.frames, Frame(frame[1], int(frame[2]), frame[3])))
    return threads


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    name: str
    main_ident: int | None
    threads: tuple[Thread, ...] = ()
    native: str | None = None
    why: str | None = None  # why it has no dump

    @property
    def main_thread(self) -> Thread | None:
        return next((t for t in self.threads if t.ident == self.main_ident), self.threads[0] if self.threads else None)


@dataclass(frozen=True)
class RankDump:
    host: str
    rank: int
    workdir: str  # the run's code on the host: its frames are shown relative to it
    processes: tuple[Process, ...] = ()  # tree order: the rank's own (first dumped) process first
    error: str | None = None  # why nothing was dumped
    samples: tuple[tuple[Thread, int], ...] = ()  # --samples: each main-thread stack seen, and how often

    @property
    def main(self) -> Process | None:
        return next((p for p in self.processes if p.threads), None)

    @property
    def children(self) -> list[Process]:
        main = self.main
        return [p for p in self.processes if p.threads and p is not main]


def stacks_command(hs: HostState, stamp: str, native: bool, ranks: list[int], samples: int = 1,
                   every: float = 0.1) -> str:
    return program(hs.python, "stacks", hs.rundir, stamp, int(native), DUMP_TIMEOUT_S, samples, every, *ranks)


def parse_host(host: str, workdir: str, output: str) -> tuple[list[RankDump], str | None]:
    """hostside/stacks.py's JSON lines: each rank's dump, and the host's note on native frames."""
    ranks, note = [], None
    for line in output.splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if "native" in data:
            note = str(data["native"])
            continue
        procs = tuple(Process(p["pid"], p["ppid"], p["name"], p.get("main"), tuple(parse_dump(p.get("dump") or "")),
                              p.get("native"), p.get("why")) for p in data.get("procs", []))
        samples = tuple((parse_dump(text)[0], int(n)) for text, n in data.get("samples", []) if parse_dump(text))
        ranks.append(RankDump(host, int(data["rank"]), workdir, procs, data.get("error"), samples))
    return ranks, note


@dataclass(frozen=True)
class Activity:
    """What a main thread is doing, in words: `wait in all_reduce (train.py:88)`."""

    waiting: bool  # in a torch.distributed call or a (DDP) backward
    text: str  # after the verb

    def sentence(self, count: int) -> str:
        verb = ("wait" if count > 1 else "waits") if self.waiting else ("are" if count > 1 else "is")
        return f"{verb} {self.text}"


def is_library(frame: Frame) -> bool:
    return any(mark in frame.file for mark in _LIBRARY)


def activity(thread: Thread, workdir: str) -> Activity:
    frames = thread.frames
    own = next((f for f in frames if not is_library(f)), None)
    at = f" ({own.where(workdir)})" if own else ""
    collective = [f for f in frames if "/torch/distributed/" in f.file]
    if collective:
        call = next((f for f in collective if f.function != "wrapper" and not f.function.startswith("_")),
                    collective[0])
        return Activity(True, f"in {call.function}{at}")
    if any("/torch/autograd/" in f.file and "backward" in f.function for f in frames):
        return Activity(True, f"in backward{at}")
    if not frames:
        return Activity(False, "in no Python frame")
    inner = frames[0]
    if own is None or inner is own:
        return Activity(False, f"in {inner.function} ({inner.where(workdir)})")
    return Activity(False, f"in {inner.function} ({inner.where(workdir)}) from {own.function}{at}")


def _hosts_phrase(dumps: list[RankDump]) -> str:
    hosts = sorted({d.host for d in dumps})
    return f" on {','.join(hosts)}" if len(hosts) <= 3 else f" on {len(hosts)} hosts"


def rollcall(dumps: list[RankDump]) -> str:
    """The majority's activity, then each other activity with its ranks and hosts, then the
    ranks that could not be dumped and why."""
    by_activity: dict[Activity, list[RankDump]] = {}
    for d in dumps:
        main = d.main
        if main and main.main_thread:
            by_activity.setdefault(activity(main.main_thread, d.workdir), []).append(d)
    ordered = sorted(by_activity.items(), key=lambda kv: (-len(kv[1]), min(d.rank for d in kv[1])))
    parts = []
    for i, (what, alike) in enumerate(ordered):
        hosts = _hosts_phrase(alike) if i > 0 or len(alike) == 1 else ""  # where the odd ones out are
        parts.append(f"{ranks_phrase(d.rank for d in alike)}{hosts} {what.sentence(len(alike))}")
    for d in dumps:
        if not (d.main and d.main.main_thread):
            parts.append(f"rank {d.rank} on {d.host}: not dumped ({d.error or 'no dump'})")
    return "; ".join(parts) or "no rank to dump"


def waiting_shares(dumps: list[RankDump]) -> dict[int, tuple[float, int]]:
    """rank -> (share of its samples in which the main thread waited in a collective, samples)."""
    out = {}
    for d in dumps:
        total = sum(n for _, n in d.samples)
        if total:
            waited = sum(n for thread, n in d.samples if activity(thread, d.workdir).waiting)
            out[d.rank] = (waited / total, total)
    return out


def waited_for(shares: dict[int, tuple[float, int]], rank: int, median_at_least: float = 0.5,
               own_at_most: float = 0.5) -> float | None:
    """The others' median share when `rank` is the one they wait for (that median is at least
    `median_at_least`, and its own share at most `own_at_most` of it), else None."""
    if rank not in shares or len(shares) < 2:
        return None
    median = statistics.median(share for r, (share, _) in shares.items() if r != rank)
    return median if median >= median_at_least and shares[rank][0] <= median * own_at_most else None


def straggler_rank(shares: dict[int, tuple[float, int]]) -> int | None:
    """The rank the others wait for: in synchronous training every rank advances at the slowest
    one's pace, so rates say nothing; but the others are mostly found waiting in a collective and
    it rarely is. Named when the others' median share is at least half and its own at most half
    of that median. `distctl stacks --samples` and the watch while `up` follows (stragglers.py)
    both judge by this rule."""
    if len(shares) < 2:
        return None
    slowest = min(shares, key=lambda r: (shares[r][0], r))
    return slowest if waited_for(shares, slowest) is not None else None


def straggler_line(rank: int, host: str, shares: dict[int, tuple[float, int]]) -> str:
    """`straggler: rank 2 on node2: waiting in a collective in 7% of 30 samples, the others 87% (median): ...`"""
    own, count = shares[rank]
    median = statistics.median(share for r, (share, _) in shares.items() if r != rank)
    return (f"straggler: rank {rank} on {host}: waiting in a collective in {own:.0%} of {count} samples, "
            f"the others {median:.0%} (median): they wait for it")


def straggler(dumps: list[RankDump]) -> str | None:
    """The straggler among sampled ranks (straggler_rank), in words; None when no rank stands out."""
    shares = waiting_shares(dumps)
    slowest = straggler_rank(shares)
    if slowest is None:
        return None
    return straggler_line(slowest, next(d.host for d in dumps if d.rank == slowest), shares)


@dataclass
class Section:
    """One stack as many ranks have it: which thread or process, and where."""

    title: str
    frames: tuple[Frame, ...]
    ranks: list[int] = field(default_factory=list)
    hosts: set[str] = field(default_factory=set)
    workdir: str = ""


def sections(dumps: list[RankDump]) -> list[Section]:
    """Main threads grouped by identical stacks, then other threads, then child processes'."""
    found: dict[tuple, Section] = {}

    def add(kind: str, thread: Thread, d: RankDump, title: str) -> None:
        key = (kind, tuple((f.file, f.line, f.function) for f in thread.frames))
        section = found.setdefault(key, Section(title, thread.frames, workdir=d.workdir))
        section.ranks.append(d.rank)
        section.hosts.add(d.host)

    for kind in ("main", "thread", "child"):
        for d in dumps:
            main = d.main
            if main is None or main.main_thread is None:
                continue
            if kind == "main":
                what = activity(main.main_thread, d.workdir)
                add(kind, main.main_thread, d, f"main thread: {'waiting ' if what.waiting else ''}{what.text}")
            elif kind == "thread":
                for t in main.threads:
                    if t is not main.main_thread:
                        add(kind, t, d, "other thread")
            else:
                for child in d.children:
                    for t in child.threads:
                        add(kind, t, d, f"child process {child.name}" + (" (main thread)" if t is child.main_thread
                                                                         else " (other thread)"))
    return list(found.values())


def render_text(dumps: list[RankDump], notes: dict[str, str], saved: str) -> list[str]:
    out = [rollcall(dumps)]
    shares = waiting_shares(dumps)
    if shares:
        slow = straggler(dumps)
        out += [slow or "no straggler: no rank is rarely waiting while the others mostly are",
                "waiting in a collective, share of samples: "
                + ", ".join(f"r{rank} {share:.0%}" for rank, (share, _) in sorted(shares.items()))]
    out += ["", "Each stack once, with the ranks that have it (most recent call first):", ""]
    for s in sections(dumps):
        count = Counter(s.ranks)
        many = "" if max(count.values()) == 1 else " (some ranks more than once)"
        out.append(f"{ranks_phrase(s.ranks)} ({', '.join(sorted(s.hosts))}): {s.title}{many}")
        out += [f"    {f.function} ({f.where(s.workdir)})" + ("" if is_library(f) else "  <- run's code")
                for f in s.frames] or ["    (no Python frame)"]
        out.append("")
    for d in dumps:
        for p in d.processes:
            if p.native:
                out += [f"rank {d.rank} on {d.host}, pid {p.pid}: native frames (py-spy)"]
                out += [f"    {line}" for line in p.native.splitlines()] + [""]
    out += [f"{host}: {note}" for host, note in sorted(notes.items())]
    out.append(saved)
    return out


def render_json(run_id: str, stamp: str, dumps: list[RankDump], notes: dict[str, str],
                unreachable: dict[str, str]) -> str:
    def frames(t: Thread) -> list[dict]:
        return [{"file": f.file, "line": f.line, "function": f.function} for f in t.frames]

    return json.dumps({
        "format": 1, "run_id": run_id, "stamp": stamp, "rollcall": rollcall(dumps), "straggler": straggler(dumps),
        "waiting_share": {str(r): share for r, (share, _) in waiting_shares(dumps).items()},
        "ranks": [{"host": d.host, "rank": d.rank, "dumped": bool(d.main), "why": d.error,
                   "processes": [{"pid": p.pid, "ppid": p.ppid, "name": p.name, "why": p.why, "native": p.native,
                                  "threads": [{"id": hex(t.ident), "main": t is p.main_thread, "frames": frames(t)}
                                              for t in p.threads]} for p in d.processes]} for d in dumps],
        "groups": [{"ranks": sorted(s.ranks), "ranks_text": format_ranks(s.ranks), "what": s.title,
                    "frames": [{"file": f.file, "line": f.line, "function": f.function} for f in s.frames]}
                   for s in sections(dumps)],
        "native": notes, "unreachable": unreachable,
    }, indent=1)


def collect(state: RunState, conns: dict[str, Connection], wanted: set[int], down: dict[str, str], stamp: str,
            native: bool, fanout: int, timeout: float = 60, samples: int = 1,
            every: float = 0.1) -> tuple[list[RankDump], dict[str, str]]:
    """Every wanted rank's dump, all hosts at once; a host that fails names its ranks' cause."""
    hosts = [hs for hs in state.hosts if any(r.rank in wanted for r in hs.ranks)]

    def one(hs: HostState) -> tuple[list[RankDump], str | None]:
        ranks = [r.rank for r in hs.ranks if r.rank in wanted]
        out = conns[hs.host.name].run(stacks_command(hs, stamp, native, ranks, samples, every),
                                      timeout=timeout + samples * (every + DUMP_TIMEOUT_S))
        if out.exit_code != 0:
            raise HostError(hs.host.name, f"stacks failed (exit {out.exit_code}): {out.stderr.strip()[-300:]}")
        return parse_host(hs.host.name, f"{hs.rundir}/work/", out.stdout)

    found = group.fan_out("stacks", [hs for hs in hosts if hs.host.name in conns], one, fanout,
                          lambda hs: hs.host.name)
    causes = {**down, **{name: e.cause for name, e in found.failed.items()}}
    dumps: list[RankDump] = []
    notes: dict[str, str] = {}
    for hs in hosts:
        name = hs.host.name
        if name in found.ok:
            dumps += found.ok[name][0]
            if found.ok[name][1]:
                notes[name] = str(found.ok[name][1])
        else:
            dumps += [RankDump(name, r.rank, "", error=f"host unreachable: {causes.get(name, '?')}")
                      for r in hs.ranks if r.rank in wanted]
    return sorted(dumps, key=lambda d: d.rank), notes


def new_stamp() -> str:
    """The dumps' folder name on each host, `<run dir>/stacks/<stamp>/` (UTC, sortable)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def saved_line(run_id: str, stamp: str) -> str:
    return f"saved on each host as <run dir>/stacks/{stamp}/rankR.txt; distctl pull {run_id} brings them back"


def take(state: RunState, wanted: set[int], stamp: str, native: bool, fanout: int, samples: int = 1,
         every: float = 0.1) -> tuple[list[RankDump], dict[str, str], dict[str, str]]:
    """`distctl stacks` from connecting to closing: (dumps, native notes, unreachable hosts' causes)."""
    hosts = [hs.host for hs in state.hosts if any(r.rank in wanted for r in hs.ranks)]
    connected = group.connect_each(hosts, state.ssh, fanout)
    down = {name: e.cause for name, e in connected.failed.items()}
    try:
        found, notes = collect(state, connected.ok, wanted, down, stamp, native, fanout, samples=samples, every=every)
    finally:
        group.close_all(connected.ok)
    return found, notes, down


HUNG_FILE = "hung"  # hostside/agent.py: one line per hang it judged, the stacks folder it took then


def saved(state: RunState, conns: dict[str, Connection], fanout: int, index: str) -> tuple[list[RankDump], list[str]]:
    """The dumps the hosts' agents saved (hostside/agent.py, RunDir.take_stacks): in each run
    directory the newest folder that `index` names; and those folders."""
    def one(hs: HostState) -> tuple[list[RankDump], str]:
        rundir = shell.join([hs.rundir])
        out = conns[hs.host.name].run(f'cd {rundir} 2>/dev/null && [ -f {index} ] && s=$(tail -n 1 {index}) && '
                                      f'echo "$s" && cat "stacks/$s/ranks.jsonl"; true', timeout=30)
        stamp, _, rest = out.stdout.partition("\n")
        return parse_host(hs.host.name, f"{hs.rundir}/work/", rest)[0], stamp.strip()

    found = group.fan_out(f"saved stacks ({index})", [hs for hs in state.hosts if hs.host.name in conns], one,
                          fanout, lambda hs: hs.host.name)
    dumps = sorted((d for ranks, _ in found.ok.values() for d in ranks), key=lambda d: d.rank)
    return dumps, sorted({stamp for _, stamp in found.ok.values() if stamp})


def hang_report(state: RunState, conns: dict[str, Connection], fanout: int) -> list[str]:
    """The roll-call of the stacks every host's agent took when it judged the run hung
    (job.hang_timeout), read from the run directories, and where they are kept."""
    dumps, stamps = saved(state, conns, fanout, HUNG_FILE)
    if not dumps:
        return []
    where = ", ".join(f"stacks/{s}/" for s in stamps)
    return [f"roll-call when it hung: {rollcall(dumps)}",
            f"stacks taken then: in each host's run directory, {where} (distctl pull brings them back)"]
