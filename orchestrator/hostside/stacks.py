"""Every rank's Python stacks on this host, from the handler sitecustomize.py armed.

Usage: stacks.py RUNDIR STAMP NATIVE TIMEOUT SAMPLES EVERY RANK...

For each rank: its process tree (the wrapper recorded in rankR.pid and everything below it,
by parent pid, so a child that left the group is still found), the processes in it that are
armed (their `stacks/live/<pid>` file says so and /proc says the handler is installed), one
signal to each of them (all ranks at once), and the text each wrote. The rank's shell
wrapper and any process that is not armed are never signalled: a real-time signal's default
action would end them. With NATIVE=1, `py-spy dump --native` of each rank's main process,
where py-spy is found (on PATH or beside this python).

Prints one JSON line per rank: {"rank", "error" (why nothing was dumped, or null), "procs":
[{"pid", "ppid", "name", "armed", "main" (the main thread's id), "dump", "native", "why"}]}
in tree order (the rank's own process first), and `{"native": ...}` first when NATIVE=1 and
py-spy is missing. Each rank's dumps are also saved as stacks/STAMP/rankR.txt (not when STAMP
is `-`: the straggler watch samples every few seconds and keeps nothing).

Collectors take turns (`distctl stacks`, the straggler watch, the restart agent's hang stacks,
the stacks before a teardown): each signal-and-read holds stacks/lock, so no collector reads
a dump another one asked for. A process's stacks/live/<pid> grows by one dump per signal:
past LIVE_MAX it is cut back to its header line (the handler appends, so it writes on at the
new end).

SAMPLES > 1 then signals each rank's main process SAMPLES-1 more times, EVERY seconds apart,
and adds "samples": [[MAIN THREAD BLOCK, COUNT]...]: how often each distinct main-thread stack
was seen, the first dump included (`distctl stacks --samples`: who waits for whom).
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time

SETTLE = 0.05  # a dump is whole once its file stopped growing for this long
LIVE_MAX = 1 << 20  # bytes: about 300 dumps of a rank with a few threads
NO_SAVE = "-"


class Turn:
    """stacks/lock held: one collector signals and reads at a time (none where it cannot be had)."""

    fd = None  # type: int | None

    def __enter__(self):
        try:
            self.fd = os.open(os.path.join("stacks", "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            self.fd = None
            return self
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock


def trim(pids):
    """Cut each live file past LIVE_MAX back to its header line, when that line is its only header
    (a program that exec-ed another armed twice: left as it is)."""
    for pid in pids:
        path = os.path.join("stacks", "live", str(pid))
        try:
            if os.path.getsize(path) <= LIVE_MAX:
                continue
            with open(path, "rb") as f:
                head = f.readline()
                if not head.startswith(b"distctl-stacks ") or b"\ndistctl-stacks " in f.read():
                    continue
            os.truncate(path, len(head))
        except OSError:
            continue


def processes():
    """pid -> (ppid, state, name) of every process /proc shows."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                stat = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        found[int(entry)] = (int(fields[1]), fields[0], name)
    return found


def tree(root, procs):
    """`root` and its descendants, parents before children."""
    children = {}  # type: dict
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    order, queue = [], [root]
    while queue:
        pid = queue.pop(0)
        order.append(pid)
        queue += sorted(children.get(pid, []))
    return order


def armed(pid):
    """(signal, main thread id, file size) when `pid` armed the handler and still has it, else None."""
    path = os.path.join("stacks", "live", str(pid))
    try:
        with open(path) as f:
            header = [line for line in f if line.startswith("distctl-stacks pid=%d " % pid)]
        with open("/proc/%d/status" % pid) as f:
            caught = [line.split()[1] for line in f if line.startswith("SigCgt:")]
    except OSError:
        return None
    if not header or not caught:
        return None
    fields = dict(word.split("=", 1) for word in header[-1].split()[1:])
    sig = int(fields["signal"])
    if not int(caught[0], 16) & (1 << (sig - 1)):
        return None
    return sig, int(fields["main"]), os.path.getsize(path)


def wait_dumps(sizes, timeout):
    """pid -> text written after the signal, once each file stopped growing (or the deadline)."""
    deadline = time.monotonic() + timeout
    seen = {pid: (size, time.monotonic()) for pid, size in sizes.items()}
    while time.monotonic() < deadline:
        pending = False
        for pid, start in sizes.items():
            size = os.path.getsize(os.path.join("stacks", "live", str(pid)))
            if size != seen[pid][0]:
                seen[pid] = (size, time.monotonic())
            if size == start or time.monotonic() - seen[pid][1] < SETTLE:
                pending = True
        if not pending:
            break
        time.sleep(0.01)
    out = {}
    for pid, start in sizes.items():
        with open(os.path.join("stacks", "live", str(pid)), "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", "replace")
        out[pid] = text or None
    return out


def py_spy():
    found = shutil.which("py-spy")
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return found or (beside if os.access(beside, os.X_OK) else None)


def native(tool, pid):
    try:
        done = subprocess.run([tool, "dump", "--native", "--pid", str(pid)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "py-spy failed: %s" % exc
    return done.stdout.decode("utf-8", "replace")


def rank_tree(rank, procs):
    """(error, [pid...]) for one rank: the tree below its wrapper, the wrapper left out."""
    if os.path.exists("rank%s.exit" % rank):
        with open("rank%s.exit" % rank) as f:
            return "exited with code %s" % (f.read().strip() or "?"), []
    try:
        with open("rank%s.pid" % rank) as f:
            leader = int(f.read().strip())
    except (OSError, ValueError):
        return "not started", []
    here = os.path.realpath(".")
    try:
        ours = os.path.realpath("/proc/%d/cwd" % leader) == here
    except OSError:
        ours = False
    if leader not in procs or not ours:
        return "gone without an exit code (host rebooted or processes killed)", []
    pids = tree(leader, procs)[1:]
    return (None if pids else "no process below its wrapper"), pids


def describe(pid, procs, marks):
    ppid, state, name = procs[pid]
    why = None
    if pid not in marks:
        why = "not armed (not Python, or Python started with -I, -S or -E)"
    elif state == "T":
        why = "stopped (SIGSTOP or a debugger): it cannot run its handler"
    return {"pid": pid, "ppid": ppid, "name": name, "armed": pid in marks and why is None,
            "main": marks[pid][1] if pid in marks else None, "dump": None, "native": None, "why": why}


def signal_all(ranks, marks):
    """One signal to every armed process of every rank at once; pid -> the size of its file before."""
    sizes = {}
    for r in ranks:
        for p in r["procs"]:
            if not p["armed"]:
                continue
            sig, _, size = marks[p["pid"]]
            try:
                os.kill(p["pid"], sig)
                sizes[p["pid"]] = size
            except OSError as exc:
                p["armed"], p["why"] = False, "cannot be signalled: %s" % exc.strerror
    return sizes


def save(r, stamp):
    """One rank: its dumps as stacks/STAMP/rankR.txt, each process under a header line."""
    if stamp == NO_SAVE:
        return
    parts = []
    for p in r["procs"]:
        parts.append("# pid %d (parent %d) %s: %s\n" % (p["pid"], p["ppid"], p["name"],
                                                       "dumped" if p["dump"] else p["why"] or "no dump"))
        parts += [p["dump"] or "", p["native"] or ""]
    if r["error"]:
        parts.append("# not dumped: %s\n" % r["error"])
    folder = os.path.join("stacks", stamp)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "rank%d.txt" % r["rank"]), "w") as f:
        f.write("".join(parts))


def main_block(dump, ident):
    """The block of the thread `ident` in a faulthandler dump (its header line included)."""
    blocks, current = [], []
    for line in (dump or "").splitlines(True):
        if line.startswith(("Thread 0x", "Current thread 0x")):
            current = [line]
            blocks.append(current)
        elif current:
            current.append(line)
    for block in blocks:
        words = block[0].split()
        hexid = words[2] if block[0].startswith("Current") else words[1]
        if int(hexid, 16) == ident:
            return "".join(block).rstrip("\n") + "\n"
    return None


def sample(ranks, marks, samples, every, timeout):
    """SAMPLES-1 more dumps of the main process of each rank; counts of its main-thread stacks."""
    mains = {r["rank"]: next((p for p in r["procs"] if p["dump"]), None) for r in ranks}
    counts = {rank: {} for rank in mains}  # type: dict
    for rank, p in mains.items():
        block = p and main_block(p["dump"], p["main"])
        if block:
            counts[rank][block] = 1
    for _ in range(samples - 1):
        time.sleep(every)
        sizes = {}
        with Turn():
            for p in mains.values():
                if p:
                    try:
                        sizes[p["pid"]] = os.path.getsize(os.path.join("stacks", "live", str(p["pid"])))
                        os.kill(p["pid"], marks[p["pid"]][0])
                    except OSError:
                        sizes.pop(p["pid"], None)
            dumps = wait_dumps(sizes, timeout)
            trim(sizes)
        for rank, p in mains.items():
            block = p and main_block(dumps.get(p["pid"]), p["main"])
            if block:
                counts[rank][block] = counts[rank].get(block, 0) + 1
    for r in ranks:
        r["samples"] = sorted(counts[r["rank"]].items(), key=lambda kv: -kv[1])


def main(argv):
    if len(argv) < 6:
        sys.stderr.write("usage: stacks.py RUNDIR STAMP NATIVE TIMEOUT SAMPLES EVERY RANK...\n")
        return 2
    rundir, stamp, want_native, timeout = argv[0], argv[1], argv[2] == "1", float(argv[3])
    samples, every, wanted = int(argv[4]), float(argv[5]), argv[6:]
    os.chdir(rundir)
    if not os.path.isdir("/proc/self"):
        for rank in wanted:
            print(json.dumps({"rank": int(rank), "error": "no /proc on this host", "procs": []}))
        return 0
    tool = py_spy() if want_native else None
    if want_native and not tool:
        print(json.dumps({"native": "py-spy not found on this host (pip install py-spy): no native frames"}))
    procs, ranks, marks = processes(), [], {}
    for rank in wanted:
        error, pids = rank_tree(rank, procs)
        for pid in pids:
            mark = armed(pid)
            if mark:
                marks[pid] = mark
        ranks.append({"rank": int(rank), "error": error, "procs": [describe(p, procs, marks) for p in pids]})
    with Turn():
        sizes = signal_all(ranks, marks)
        dumps = wait_dumps(sizes, timeout)
        trim(sizes)
    for r in ranks:
        for p in r["procs"]:
            if p["armed"]:
                p["dump"] = dumps.get(p["pid"])
                p["why"] = None if p["dump"] else "armed, but wrote no dump within %gs" % timeout
        first = next((p for p in r["procs"] if p["armed"]), None)
        if tool and first:
            first["native"] = native(tool, first["pid"])
        if not r["error"] and not any(p["dump"] for p in r["procs"]):
            names = ", ".join(sorted(set(p["name"] for p in r["procs"])))
            r["error"] = "no armed Python process among its processes (%s)" % names
        save(r, stamp)
    if samples > 1:
        sample(ranks, marks, samples, every, timeout)
    for r in ranks:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
