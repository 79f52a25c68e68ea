"""Launch cost: `distctl up --detach` of a torch-free user program against `pdsh -R ssh true`
on the same hosts.

The program only opens MASTER_PORT on rank 0 (what `init_process_group()` does first) and
sleeps, so the figure is distctl's own cost, not torch's import: connect, discover, preflight,
prepare (the code is already there: an untimed first `up` pushed it), launch rank 0, wait for
its port, launch the other hosts, verify every rank runs. Each timed `up` is followed by an
untimed `distctl stop --grace 0`. Cases alternate round by round (interleaved).

Each `up` runs with `-v` and every line it prints is stamped on arrival, which splits its time
into steps (medians over the rounds):

  imports + load   interpreter start, imports, inventory (until `connecting to N host(s)`)
  to pushed        connect, discover, route lookup, preflight, prepare, push (a 0-byte push)
  rank 0 launched  rank 0's host started it
  ranks launched   rank 0's port listened, every other host started its ranks
  verified         every rank's status read back (`up --detach` returns)

Run (root, for network namespaces; needs Debian's pdsh):
    .venv/bin/python bench/bench_launch.py                 # 16 hosts, 5 rounds
    .venv/bin/python bench/bench_launch.py --hosts 4 --reps 3
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import DISTCTL, ROOT, cluster_of, distctl, interleaved, pdsh_argv, print_table, write_inventory

PROGRAM = '''
import os, socket, time
if os.environ["RANK"] == "0":  # what init_process_group's store does first
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", int(os.environ["MASTER_PORT"])))
    s.listen(64)
time.sleep(3600)
'''

STEPS = (("imports + load", re.compile(r"distctl: connecting to ")),
         ("to pushed", re.compile(r"distctl: pushed ")),
         ("rank 0 launched", re.compile(r"distctl: .*rank 0 started; waiting")),
         ("ranks launched", re.compile(r"distctl: run \S+ started")))


def up_timeline(inv: str, cwd: Path, marks: list[dict[str, float]]):
    """`distctl -v up --detach` once, the arrival time of each step's line kept in `marks`."""
    def run() -> None:
        start = time.perf_counter()
        proc = subprocess.Popen([*DISTCTL, "-v", "up", inv, "--detach"], cwd=cwd, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True,
                                env={"DISTCTL_STATE_DIR": str(cwd / ".distctl-state"), **os.environ,
                                     "NO_COLOR": "1", "PYTHONPATH": str(ROOT)})  # as common.distctl: stop finds it
        seen, lines = {}, []
        for line in proc.stderr:
            lines.append(line)
            for name, pattern in STEPS:
                if name not in seen and pattern.match(line):
                    seen[name] = time.perf_counter() - start
        if proc.wait() != 0:
            raise RuntimeError(f"distctl up --detach exited {proc.returncode}:\n{''.join(lines[-20:])}")
        seen["verified"] = time.perf_counter() - start
        marks.append(seen)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--trace", action="store_true",
                        help="then one `up --detach` in-process, every SSH connect and remote command timed")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    atexit.register(shutil.rmtree, work, True)
    (work / "prog").mkdir()
    (work / "prog" / "listen.py").write_text(PROGRAM)
    with cluster_of(args.hosts) as cluster:
        names = [h.name for h in cluster.hosts]
        inv = str(write_inventory(work / "inv.yaml", cluster, names, code="prog", command="python listen.py"))
        argv, env = pdsh_argv(cluster, names, "true")
        marks: list[dict[str, float]] = []
        stop = lambda: distctl("stop", "--grace", "0", cwd=work)  # noqa: E731
        cases = {"pdsh -R ssh true": lambda: subprocess.run(argv, env=env, check=True, capture_output=True),
                 "distctl up --detach": up_timeline(inv, work, marks)}
        for fn in cases.values():  # untimed: the first up pushes the code; caches warm
            fn()
        stop()
        marks.clear()
        times = interleaved(cases, args.reps, after={"distctl up --detach": stop})
        if args.trace:
            trace(inv, work)
            stop()
    base = statistics.median(times["pdsh -R ssh true"])
    print(f"{args.hosts} hosts, 1 rank each; median of {args.reps} interleaved rounds; "
          f"{'namespaced' if cluster.isolated else 'loopback'} hosts on this machine\n")
    print_table(("command", "wall s", "vs pdsh"),
                [(name, f"{statistics.median(v):.2f}", f"{statistics.median(v) / base:.2f}x")
                 for name, v in times.items()])
    rows, before = [], 0.0
    for name in [s for s, _ in STEPS] + ["verified"]:
        values = [m[name] for m in marks if name in m]
        if values:
            at = statistics.median(values)
            rows.append((name, f"{at:.2f}", f"+{at - before:.2f}"))
            before = at
    print()
    print_table(("`up --detach` step", "s since start", "step"), rows)


def trace(inv: str, work: Path) -> None:
    """Run `up --detach` in this process with every connect, remote command and stream open
    timed; print the remote commands per host and, per kind of command, when the first started
    and the last ended (a step's span across all hosts)."""
    from orchestrator.ssh import group
    from orchestrator.ssh import remote
    from orchestrator.cli.main import cli

    events: list[tuple[str, str, float, float]] = []  # host, what, start, end
    t0 = time.perf_counter()

    def timed(what_of, fn):
        def wrapper(*a, **kw):
            start = time.perf_counter() - t0
            try:
                return fn(*a, **kw)
            finally:
                host, what = what_of(*a, **kw)
                events.append((host, what, start, time.perf_counter() - t0))
        return wrapper

    signatures = (("has_ip=", "discover"), ("route get", "route lookup"), ("s.listen(64)", "preflight listen"),
                  ("create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)", "preflight connect"),
                  ("tar -xf", "push"), ("setsid sh -c", "launch"), ("/env", "prepare"),
                  ("pidfile, deadline", "wait for rank 0's port"), ("state=running", "verify (status)"))

    def kind(command: str) -> str:
        return next((name for mark, name in signatures if mark in command), command.split()[0][:30])

    patches = {
        (group, "connect"): lambda host, ssh: (host.name, "connect"),
        (remote.SshConnection, "run"): lambda self, command, *a, **kw: (self.name, kind(command)),
        (remote.SshConnection, "open_stream"): lambda self, command: (self.name, "stream " + kind(command)),
    }
    saved = {k: getattr(*k) for k in patches}
    for (owner, name), what_of in patches.items():
        setattr(owner, name, timed(what_of, saved[(owner, name)]))
    cwd = os.getcwd()
    os.chdir(work)
    try:
        cli.main(["up", inv, "--detach"], prog_name="distctl", standalone_mode=False)
    finally:
        os.chdir(cwd)
        for key, fn in saved.items():
            setattr(*key, fn)
    total = time.perf_counter() - t0
    per_host: dict[str, int] = {}
    spans: dict[str, list[float]] = {}
    for host, what, start, end in events:
        per_host[host] = per_host.get(host, 0) + (what != "connect")
        span = spans.setdefault(what, [start, end, 0.0, 0])
        span[0], span[1] = min(span[0], start), max(span[1], end)
        span[2] += end - start
        span[3] += 1
    print(f"\ntrace of one `up --detach` in-process: {total:.2f} s; remote commands per host: "
          f"{sorted(set(per_host.values()))}\n")
    print_table(("step (remote command)", "calls", "first start s", "last end s", "median call s"),
                [(what, n, f"{a:.2f}", f"{b:.2f}",
                  f"{statistics.median(e - s for h, w, s, e in events if w == what):.2f}")
                 for what, (a, b, _, n) in sorted(spans.items(), key=lambda kv: kv[1][0])])


if __name__ == "__main__":
    main()
