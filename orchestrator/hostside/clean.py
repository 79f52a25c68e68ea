"""What `distctl clean` may remove from one host's workdir, judged on the host itself.

    clean.py WORKDIR OLDER_S list
    clean.py WORKDIR OLDER_S remove ITEM...

A run directory (runs/ID) may go when none of its processes lives (the groups in rank*.pid
and agent.pid, each only while its leader works in that directory: a recycled id is not the
run) and nothing in it changed for OLDER_S seconds (and never one touched in the last
JUST_MADE_S: a run being prepared has no process yet), whoever started it. Then a shared
folder (code/D, data/D, setup/K) may go when no remaining run lists it in its `uses` file;
with a run that has no `uses` (made by an older distctl) its env file names its code and
data, and setup folders are all kept.

`list` prints `run ID AGE_S BYTES` and `folder PATH BYTES` (PATH relative to WORKDIR);
`remove` judges each ITEM (`run:ID`, `folder:PATH`) again, removes what still may go
(a folder after its `.complete` mark, so a half-removed folder is never taken for done) and
prints `removed ITEM BYTES` or `kept ITEM WHY`.
"""

import os
import re
import shutil
import sys
import time

JUST_MADE_S = 300.0
SHARED = ("code", "data", "setup")
DIGEST = re.compile(r"[0-9a-f]{16}\Z")


def group_alive(rundir, pidfile):
    """The process group in PIDFILE lives, and its leader works in RUNDIR (or cannot say)."""
    try:
        with open(os.path.join(rundir, pidfile)) as f:
            pgid = int(f.read())
        os.kill(-pgid, 0)
    except (OSError, ValueError):
        return False
    try:
        return os.path.realpath(os.readlink("/proc/%d/cwd" % pgid)) == os.path.realpath(rundir)
    except OSError:
        return True


def size_of(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def age_of(rundir, now):
    """Seconds since anything directly in the run directory changed (logs grow while ranks run)."""
    times = [os.lstat(rundir).st_mtime]
    for name in os.listdir(rundir):
        try:
            times.append(os.lstat(os.path.join(rundir, name)).st_mtime)
        except OSError:
            pass
    return max(0.0, now - max(times))


def run_may_go(rundir, older_s, now):
    """None when the run directory may be removed, else why it stays."""
    names = os.listdir(rundir)
    if any(group_alive(rundir, n) for n in names if n.endswith(".pid")):
        return "running"
    age = age_of(rundir, now)
    if age < max(older_s, JUST_MADE_S):
        return "changed %d s ago" % age
    return None


def uses_of(rundir, workdir):
    """The shared folders a run needs, relative to WORKDIR; None for setup: unknown (older run)."""
    try:
        with open(os.path.join(rundir, "uses")) as f:
            return set(relative(line.strip(), workdir) for line in f if line.strip()), True
    except OSError:
        pass
    found = set()
    try:
        with open(os.path.join(rundir, "env")) as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key in ("export DISTCTL_CODE", "DISTCTL_CODE", "export DISTCTL_DATA", "DISTCTL_DATA"):
                    found.add(relative(value.strip().strip("\"").strip(chr(39)), workdir))
    except OSError:
        pass
    return found, False


def relative(path, workdir):
    path = os.path.normpath(os.path.expanduser(path))
    return os.path.relpath(path, workdir) if path.startswith(workdir + os.sep) else path


def judge(workdir, older_s, now):
    """(runs that may go: id -> (age, bytes), folders that may go: path -> bytes, kept runs: id -> why)."""
    runs_dir = os.path.join(workdir, "runs")
    going, kept = {}, {}
    for run_id in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []:
        rundir = os.path.join(runs_dir, run_id)
        if not os.path.isdir(rundir) or os.path.islink(rundir):
            continue
        why = run_may_go(rundir, older_s, now)
        if why is None:
            going[run_id] = (age_of(rundir, now), size_of(rundir))
        else:
            kept[run_id] = why
    used, setup_known = set(), True
    for run_id in kept:
        found, complete = uses_of(os.path.join(runs_dir, run_id), workdir)
        used |= found
        setup_known = setup_known and complete
    folders = {}
    for kind in SHARED:
        if kind == "setup" and not setup_known:
            continue
        base = os.path.join(workdir, kind)
        for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            path = os.path.join(base, name)
            rel = kind + "/" + name
            if DIGEST.match(name) and os.path.isdir(path) and not os.path.islink(path) and rel not in used:
                folders[rel] = size_of(path)
    return going, folders, kept


def remove(workdir, older_s, items, now):
    going, folders, kept = judge(workdir, older_s, now)
    for item in items:
        kind, _, name = item.partition(":")
        if kind == "run" and name in going and "/" not in name:
            shutil.rmtree(os.path.join(workdir, "runs", name), ignore_errors=True)
            print("removed %s %d" % (item, going[name][1]))
        elif kind == "folder" and name in folders:
            path = os.path.join(workdir, name)
            try:
                os.remove(path + ".complete")
            except OSError:
                pass
            shutil.rmtree(path, ignore_errors=True)
            print("removed %s %d" % (item, folders[name]))
        else:
            print("kept %s %s" % (item, kept.get(name, "in use now")))


def main(argv):
    if len(argv) < 3 or argv[2] not in ("list", "remove"):
        sys.stderr.write("usage: clean.py WORKDIR OLDER_S list|remove [ITEM...]\n")
        return 2
    workdir = os.path.normpath(os.path.expanduser(argv[0]))
    older_s, now = float(argv[1]), time.time()
    if argv[2] == "remove":
        remove(workdir, older_s, argv[3:], now)
        return 0
    going, folders, kept = judge(workdir, older_s, now)
    for run_id, (age, size) in going.items():
        print("run %s %d %d" % (run_id, age, size))
    for path, size in folders.items():
        print("folder %s %d" % (path, size))
    for run_id, why in kept.items():
        print("keep %s %s" % (run_id, why))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
