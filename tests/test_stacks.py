"""`distctl stacks` without a cluster: the sitecustomize that arms a rank's Python processes,
the host-side collector against real processes on this machine, and the pure grouping and
roll-call; then on the cluster, torch-free programs blocked in C code and a gloo all_reduce."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import hostside
from orchestrator.console.rankset import format_ranks
from orchestrator.run.stacks import Frame, Process, RankDump, Thread, activity, parse_dump, parse_host, rollcall

from e2e import distctl, last_run_id, wait_for, write_inventory

SIG = signal.SIGRTMIN + 6


def arm_folder(tmp_path: Path) -> Path:
    """A run directory as the launch step leaves it: stacks/site/sitecustomize.py, stacks/live/."""
    (tmp_path / "stacks" / "live").mkdir(parents=True)
    (tmp_path / "stacks" / "site").mkdir()
    (tmp_path / "stacks" / "site" / "sitecustomize.py").write_text(hostside.site_source())
    return tmp_path


def armed_env(rundir: Path, pythonpath: str | None = None) -> dict[str, str]:
    site = str(rundir / "stacks" / "site")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(DISTCTL_STACKS=str(rundir / "stacks"), PYTHONPATH=site + (f":{pythonpath}" if pythonpath else ""))
    return env


# ------------------------------------------------------------------ sitecustomize.py


def test_the_site_file_imports_the_sitecustomize_it_shadows_and_leaves_the_path_as_it_was(tmp_path):
    rundir = arm_folder(tmp_path / "run")
    user = tmp_path / "user"
    user.mkdir()
    (user / "sitecustomize.py").write_text("import os\nos.environ['USER_SITE_RAN'] = 'yes'\n")
    code = ("import os, sys, sitecustomize; print(os.environ.get('USER_SITE_RAN'), sitecustomize.__file__, "
            "any('stacks/site' in p for p in sys.path))")
    out = subprocess.run([sys.executable, "-c", code], env=armed_env(rundir, str(user)), capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["yes", str(user / "sitecustomize.py"), "False"]


def test_an_armed_process_keeps_sigusr1_and_sigusr2_and_restarts_interrupted_calls(tmp_path):
    rundir = arm_folder(tmp_path)
    code = """
import ctypes, signal, sys
class Sigaction(ctypes.Structure):
    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p)]
libc = ctypes.CDLL(None, use_errno=True)
def flags(sig):
    old = Sigaction()
    assert libc.sigaction(sig, None, ctypes.byref(old)) == 0
    return old.handler, old.flags
print(signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL, signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL)
handler, fl = flags(signal.SIGRTMIN + 6)
print(bool(handler), bool(fl & 0x10000000))
"""
    out = subprocess.run([sys.executable, "-c", code], env=armed_env(rundir), capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "True", "True", "True"]  # SA_RESTART: interrupted system calls go on


def test_a_signalled_process_writes_every_thread_while_blocked_in_c_and_goes_on(tmp_path):
    rundir = arm_folder(tmp_path)
    code = ("import socket, threading, time\n"
            "def helper():\n    time.sleep(60)\n"
            "threading.Thread(target=helper, daemon=True).start()\n"
            "def read_peer(s):\n    return s.recv(1)\n"
            "a, b = socket.socketpair()\nprint('ready', flush=True)\nprint('got', read_peer(a), flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=armed_env(rundir), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        live = rundir / "stacks" / "live" / str(proc.pid)

        def dumped() -> str | None:  # asked again until the main thread has reached read_peer
            before = live.stat().st_size
            os.kill(proc.pid, SIG)

            def whole() -> str | None:  # both threads' outermost frames are in it
                text = live.read_text()[before:]
                return text if "in helper" in text and "in <module>" in text else None

            text = wait_for(whole, 10, "a whole dump")
            return text if "read_peer" in text else None

        threads = parse_dump(wait_for(dumped, 20, "a dump from inside read_peer"))
        assert {t.frames[0].function for t in threads} == {"read_peer", "helper"}
        assert proc.poll() is None  # not ended by the signal
    finally:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------ hostside/stacks.py


def collect(rundir: Path, *ranks: int) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", hostside.source("stacks"), str(rundir), "T1", "0", "5", "1", "0",
                          *map(str, ranks)], capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_the_collector_dumps_python_below_a_shell_never_the_shell_and_names_what_it_cannot(tmp_path):
    rundir = arm_folder(tmp_path)
    child = "import time\ndef in_child():\n    time.sleep(60)\nin_child()\n"
    prog = ("import subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, '-c', {child!r}])\n"
            "def load_batch():\n    time.sleep(60)\nload_batch()\n")
    (rundir / "prog.py").write_text(prog)
    # rank 0: a shell wrapper around a shell around python; rank 1: python -I (not armed); rank 2 exited
    wrappers = [subprocess.Popen(["sh", "-c", f"sh -c '{sys.executable} prog.py; true'"], cwd=rundir,
                                 env=armed_env(rundir), start_new_session=True),
                subprocess.Popen(["sh", "-c", f"{sys.executable} -I -c 'import time; time.sleep(60)'; true"],
                                 cwd=rundir, env=armed_env(rundir), start_new_session=True)]
    try:
        for rank, w in enumerate(wrappers):
            (rundir / f"rank{rank}.pid").write_text(f"{w.pid}\n")
        (rundir / "rank2.exit").write_text("1\n")
        wait_for(lambda: len(list((rundir / "stacks" / "live").iterdir())) == 2, 10, "two armed processes")
        found = {r["rank"]: r for r in collect(rundir, 0, 1, 2, 3)}
        assert found[0]["error"] is None
        procs = found[0]["procs"]
        assert [p["name"] for p in procs if p["armed"]] == [Path(sys.executable).name] * 2
        assert [p for p in procs if p["name"] == "sh"][0]["why"].startswith("not armed")
        assert "load_batch" in procs[1]["dump"] and "in_child" in procs[2]["dump"]
        assert found[1]["error"].startswith("no armed Python process among its processes")
        assert found[2]["error"] == "exited with code 1"
        assert found[3]["error"] == "not started"
        assert all(w.poll() is None for w in wrappers)  # nothing was ended by a signal
        saved = (rundir / "stacks" / "T1" / "rank0.txt").read_text()
        assert "load_batch" in saved and "# pid" in saved
    finally:
        for w in wrappers:
            os.killpg(w.pid, signal.SIGKILL)
            w.wait()


def test_native_frames_without_py_spy_say_so(tmp_path):
    rundir = arm_folder(tmp_path)
    bare = shutil.which("python3", path="/usr/bin:/bin")  # no py-spy beside it, none on PATH
    if bare is None:
        pytest.skip("no system python3")
    out = subprocess.run([bare, "-c", hostside.source("stacks"), str(rundir), "T2", "1", "1", "1", "0", "0"],
                         capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"}).stdout
    first, second = (json.loads(line) for line in out.splitlines())
    assert first == {"native": "py-spy not found on this host (pip install py-spy): no native frames"}
    assert second["error"] == "not started"


# ------------------------------------------------------------------ pure: parsing, grouping, roll-call

DUMP = """Thread 0x00007f230fe816c0 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 327 in wait
  File "/usr/lib/python3.11/threading.py", line 1002 in _bootstrap

Current thread 0x00007f23109dcb80 (most recent call first):
  File "/w/runs/r/work/train.py", line 88 in step
  File "/w/runs/r/work/train.py", line 120 in <module>
"""


def test_parse_dump_reads_faulthandlers_blocks():
    threads = parse_dump(DUMP)
    assert [t.ident for t in threads] == [0x7f230fe816c0, 0x7f23109dcb80]
    assert threads[1].frames[0] == Frame("/w/runs/r/work/train.py", 88, "step")


def test_format_ranks_writes_runs_of_ranks():
    assert format_ranks([9, 0, 2, 3, 4, 5, 6, 7, 3]) == "0,2-7,9"
    assert format_ranks([1]) == "1" and format_ranks([]) == ""


def rank(r: int, host: str, frames: list[tuple[str, int, str]]) -> RankDump:
    thread = Thread(1, tuple(Frame(*f) for f in frames))
    return RankDump(host, r, "/w/work/", (Process(100 + r, 1, "python", 1, (thread,)),))


ALL_REDUCE = [("/v/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py", 2500, "all_reduce"),
              ("/v/lib/python3.11/site-packages/torch/distributed/c10d_logger.py", 80, "wrapper"),
              ("/w/work/train.py", 88, "step")]


def test_the_roll_call_names_the_odd_rank_and_where_the_others_wait():
    dumps = [rank(r, "node1" if r < 4 else "node2", ALL_REDUCE) for r in (0, 2, 3, 4, 5, 6, 7)]
    dumps.append(rank(1, "node2", [("/w/work/data.py", 40, "load_batch"), ("/w/work/train.py", 80, "step")]))
    dumps.append(RankDump("node3", 8, "", error="host unreachable: timed out"))
    assert rollcall(sorted(dumps, key=lambda d: d.rank)) == (
        "ranks 0,2-7 wait in all_reduce (train.py:88); rank 1 on node2 is in load_batch (data.py:40); "
        "rank 8 on node3: not dumped (host unreachable: timed out)")


def test_a_library_frame_innermost_is_named_with_the_runs_frame_below_it():
    thread = Thread(1, (Frame("/usr/lib/python3.11/socket.py", 700, "readinto"), Frame("/w/work/x.py", 3, "fetch")))
    assert activity(thread, "/w/work/").sentence(1) == "is in readinto (socket.py:700) from fetch (x.py:3)"
    backward = Thread(1, (Frame("/v/site-packages/torch/autograd/graph.py", 8, "_engine_run_backward"),
                          Frame("/w/work/t.py", 9, "train")))
    assert activity(backward, "/w/work/").sentence(2) == "wait in backward (t.py:9)"


def test_parse_host_reads_the_collectors_lines():
    line = json.dumps({"rank": 3, "error": None, "procs": [
        {"pid": 7, "ppid": 6, "name": "python3", "armed": True, "main": 0x7f23109dcb80, "dump": DUMP,
         "native": None, "why": None}]})
    dumps, note = parse_host("node1", "/w/runs/r/work/", json.dumps({"native": "py-spy not found"}) + "\n" + line)
    assert note == "py-spy not found"
    assert dumps[0].main.main_thread.frames[0].function == "step"


# ------------------------------------------------------------------ on the cluster

# torch-free: rank 1 sleeps in load_batch (data.py) while the others block in a socket read (C
# code); rank 0 also has a Python child; every rank runs under a shell (`sh -c "python ..."`).
DATA = "import time\n\n\ndef load_batch():\n    time.sleep(600)  # stuck\n"
PROG = """import os, socket, subprocess, sys, threading, time
from data import load_batch

def heartbeat():
    while True:
        time.sleep(1)

def wait_for_peers(sock):
    return sock.recv(1)  # blocks in C

threading.Thread(target=heartbeat, daemon=True).start()
if os.environ["RANK"] == "0":
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("started", os.environ.get("USER_SITE"), flush=True)
if os.environ["RANK"] == "1":
    load_batch()
peer, us = socket.socketpair()  # nobody ever writes to `peer`
wait_for_peers(us)
"""


def project(tmp_path: Path, files: dict[str, str]) -> str:
    code = tmp_path / "project"
    code.mkdir()
    for name, text in files.items():
        (code / name).write_text(text)
    return "project"


def line_of(source: str, text: str) -> int:
    return next(i for i, line in enumerate(source.splitlines(), 1) if text in line)


@pytest.mark.cluster
def test_stacks_names_the_stuck_rank_and_groups_the_others_without_ending_any(cluster, tmp_path):
    user_site = tmp_path / "usersite"  # the inventory's PYTHONPATH, holding a sitecustomize of its own
    user_site.mkdir()
    (user_site / "sitecustomize.py").write_text("import os\nos.environ['USER_SITE'] = 'kept'\n")
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], slots=2,
                          code=project(tmp_path, {"prog.py": PROG, "data.py": DATA}),
                          command=["sh", "-c", f"{cluster.python} prog.py; true"], wait_for_rank0=False,
                          env={"PYTHONPATH": str(user_site)})
    assert distctl("up", str(inv), "--detach", cwd=tmp_path).returncode == 0
    try:
        wait_for(lambda: distctl("logs", cwd=tmp_path).stdout.count("started kept") == 4, 60, "4 ranks started")
        done = distctl("stacks", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0] == (f"ranks 0,2-3 are in wait_for_peers (prog.py:{line_of(PROG, 'sock.recv')}); "
                            f"rank 1 on node1 is in load_batch (data.py:{line_of(DATA, 'stuck')})")
        assert "rank 0 (node1): child process python" in done.stdout.replace("python3", "python")
        assert "ranks 0-3 (node1, node2): other thread" in done.stdout  # every rank's heartbeat, once
        one = json.loads(distctl("stacks", "--rank", "1", "--json", cwd=tmp_path).stdout)
        assert [(r["host"], r["rank"], r["dumped"]) for r in one["ranks"]] == [("node1", 1, True)]
        assert one["rollcall"].startswith("rank 1 on node1 is in load_batch")
        native = distctl("stacks", "--host", "node2", "--native", cwd=tmp_path)  # py-spy: the test extra
        assert native.returncode == 0 and "ranks 2-3" in native.stdout.splitlines()[0]
        assert "rank 2 on node2, pid " in native.stdout and "native frames (py-spy)" in native.stdout
        status = distctl("status", cwd=tmp_path)
        assert status.stdout.count("] running") == 4, status.stdout  # no rank was ended by a signal
        pulled = distctl("pull", cwd=tmp_path)
        assert pulled.returncode == 0, pulled.stderr
        saved = sorted(p.name for p in (tmp_path / "runs").glob("*/stacks/*/rank*.txt"))
        assert saved.count("rank1.txt") == 2 and "rank3.txt" in saved  # two dumps of rank 1, one of 3
    finally:
        distctl("stop", "--grace", "1", cwd=tmp_path)
    gone = distctl("stacks", cwd=tmp_path)
    assert gone.returncode == 12
    assert "rank 0 on node1: not dumped (exited with code" in gone.stdout.splitlines()[0]


GLOO = """import os, time
import torch, torch.distributed as dist

def load_batch():
    time.sleep(600)

dist.init_process_group("gloo")
print("joined", flush=True)
if dist.get_rank() == 1:
    load_batch()
dist.all_reduce(torch.ones(1))
"""


@pytest.mark.cluster
def test_stacks_says_which_ranks_wait_in_a_gloo_all_reduce(cluster, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], code=project(tmp_path, {"prog.py": GLOO}),
                          command="python prog.py", host_extra={"node1": {"slots": 2}})
    assert distctl("up", str(inv), "--detach", cwd=tmp_path).returncode == 0
    try:
        wait_for(lambda: distctl("logs", cwd=tmp_path).stdout.count("joined") == 3, 120, "3 ranks joined")
        expected = (f"ranks 0,2 wait in all_reduce (prog.py:{line_of(GLOO, 'all_reduce')}); "
                    f"rank 1 on node1 is in load_batch (prog.py:{line_of(GLOO, 'sleep')})")
        # all_reduce is entered right after "joined": ask until both waiting ranks are in it
        wait_for(lambda: distctl("stacks", cwd=tmp_path).stdout.startswith(expected), 60, expected)
    finally:
        distctl("stop", "--grace", "1", cwd=tmp_path)


def sampled(rank: int, waited: int, busy: int) -> RankDump:
    wait = Thread(1, (Frame("/v/site-packages/torch/distributed/distributed_c10d.py", 1, "all_reduce"),
                      Frame("/w/work/t.py", 9, "train")))
    work = Thread(1, (Frame("/w/work/t.py", 5, "slow_step"), Frame("/w/work/t.py", 8, "train")))
    return RankDump("node2" if rank == 2 else "node1", rank, "/w/work/", samples=((wait, waited), (work, busy)))


def test_the_straggler_is_the_rank_rarely_waiting_while_the_others_mostly_wait():
    from orchestrator.run.stacks import straggler

    assert straggler([sampled(0, 27, 3), sampled(1, 25, 5), sampled(2, 2, 28)]) == (
        "straggler: rank 2 on node2: waiting in a collective in 7% of 30 samples, the others 87% (median): "
        "they wait for it")
    assert straggler([sampled(0, 5, 25), sampled(1, 6, 24), sampled(2, 2, 28)]) is None  # nobody mostly waits
    assert straggler([sampled(0, 20, 10), sampled(1, 21, 9), sampled(2, 15, 15)]) is None  # no one stands out


LOCKSTEP = """import os, time
import torch, torch.distributed as dist

def slow_step():
    time.sleep(0.05)  # a sleep: CPU time alone cannot tell this rank

dist.init_process_group("gloo")
r, w = dist.get_rank(), dist.get_world_size()
print("joined", flush=True)
steps = 0
while True:
    if r == 2:
        slow_step()
    x = torch.full((1,), float(r + 1))
    dist.all_reduce(x)
    assert x.item() == w * (w + 1) / 2, x.item()
    done = torch.tensor([float(os.path.exists("done"))])
    dist.all_reduce(done, op=dist.ReduceOp.MAX)
    steps += 1
    if done.item():
        break
dist.destroy_process_group()  # a clean exit: gloo's teardown at interpreter exit may abort (once seen: 134)
print("ok steps=%d" % steps, flush=True)
"""


@pytest.mark.cluster
def test_sampling_names_the_slowed_rank_and_1000_dumps_break_no_collective(cluster, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"],
                          code=project(tmp_path, {"prog.py": LOCKSTEP}), command="python prog.py",
                          host_extra={"node1": {"slots": 2}})
    assert distctl("up", str(inv), "--detach", cwd=tmp_path).returncode == 0
    run_id = last_run_id(tmp_path)
    try:
        wait_for(lambda: distctl("logs", cwd=tmp_path).stdout.count("joined") == 3, 120, "3 ranks joined")
        sampled_out = distctl("stacks", "--samples", "30", "--every", "0.05", cwd=tmp_path)
        assert sampled_out.returncode == 0, sampled_out.stderr
        assert sampled_out.stdout.splitlines()[1].startswith("straggler: rank 2 on node2: waiting in a collective in ")
        found = json.loads(distctl("stacks", "--json", cwd=tmp_path).stdout)
        pids = [r["processes"][0]["pid"] for r in found["ranks"]]
        for _ in range(1000):  # 1,000 samples of every rank while they all_reduce
            for pid in pids:
                os.kill(pid, SIG)
            time.sleep(0.002)  # pacing the samples, not waiting for anything
        for name in ("node1", "node2"):
            h = cluster.host(name)
            h.run(f"touch {h.workdir}/runs/{run_id}/work/done", check=True)
        wait_for(lambda: distctl("logs", cwd=tmp_path).stdout.count("] ok steps=") == 3, 120, "every rank's ok")
        status = json.loads(distctl("status", "--json", cwd=tmp_path).stdout)
        assert [(r["rank"], r["exit_code"]) for r in status["ranks"]] == [(0, 0), (1, 0), (2, 0)], \
            distctl("logs", "--tail", "30", cwd=tmp_path).stdout
    finally:
        distctl("stop", "--grace", "1", cwd=tmp_path)
