"""The straggler watch (run/stragglers.py): the verdict and its hysteresis over a window of
samples (pure), the `straggler` file as `status` reads and shows it, the host-side collector's
no-save samples and bounded dump files; then on the cluster, a torch-free lockstep program whose
rank 2 sleeps before each collective: `up` names it (not its waiting peers), `status` marks it,
and `up` says when it recovers."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from orchestrator import hostside
from orchestrator.cli import render
from orchestrator.run.stacks import straggler_rank, waited_for
from orchestrator.run.status import RankRow, RunStatus, parse_progress
from orchestrator.run.lifecycle import RankStatus
from orchestrator.run.stragglers import Judge, Verdict, Watch, parse_record, watching
from orchestrator.ssh.remote import Result
from orchestrator.timers import TEST_TIMERS

from e2e import distctl, kill_tree, last_run_id, start_distctl, wait_for, write_inventory
from support.fakes import FakeConnection, RecordingUi
from support.watched import a_run
from test_stacks import arm_folder, armed_env, project

HOSTS = {0: "node1", 1: "node1", 2: "node2"}


def rounds(judge: Judge, n: int, slow: int | None, start: float = 0.0) -> list[tuple[str, int]]:
    """`n` rounds in which every rank waits but `slow` (None: nobody is slow); the changes seen."""
    changes = []
    for i in range(n):
        for kind, verdict in judge.add({r: r != slow for r in HOSTS}, start + i):
            changes.append((kind, verdict.rank))
    return changes


# ------------------------------------------------------------------ pure: the rule, the window


def test_stacks_and_the_watch_judge_by_one_rule():
    shares = {0: (0.9, 20), 1: (0.85, 20), 2: (0.05, 20)}
    assert straggler_rank(shares) == 2 and waited_for(shares, 2) == pytest.approx(0.875)
    assert waited_for(shares, 0) is None  # a waiting rank is never the one waited for
    assert straggler_rank({0: (0.9, 20), 1: (0.05, 20)}) == 1
    assert straggler_rank({0: (0.3, 20), 1: (0.3, 20), 2: (0.0, 20)}) is None  # the others mostly busy
    assert straggler_rank({2: (0.0, 20)}) is None  # one rank: nobody to wait for it


def test_a_rank_is_named_once_the_window_judges_and_once_more_when_it_recovers():
    judge = Judge(HOSTS, window=20, min_samples=10)
    assert rounds(judge, 9, slow=2) == []  # not judged on fewer than 10 samples
    assert rounds(judge, 1, slow=2, start=9) == [("named", 2)]
    assert judge.current and (judge.current.host, judge.current.since) == ("node2", 9)
    assert rounds(judge, 30, slow=2) == []  # said once, not every round
    # It catches up: said only once the loose rule fails (its share above 3/4 of the others')
    changes = rounds(judge, 20, slow=None)
    assert changes == [("recovered", 2)] and judge.current is None
    assert rounds(judge, 40, slow=None) == []


def test_the_verdict_does_not_flap_at_the_rules_edge():
    judge = Judge(HOSTS, window=20, min_samples=10)
    rounds(judge, 20, slow=2)
    # Rank 2 now waits every other round: 50% against the others' 100%, at the edge of the rule
    # that named it, and well inside the looser one it must fail to recover: no line at all
    changes = []
    for i in range(60):
        changes += judge.add({0: True, 1: True, 2: i % 2 == 0}, 100 + i)
    assert changes == [] and judge.current is not None and judge.current.rank == 2


def test_a_watch_on_a_program_with_no_collective_names_nobody():
    judge = Judge(HOSTS, window=20, min_samples=10)
    for i in range(30):
        assert judge.add({r: False for r in HOSTS}, i) == []
    assert judge.judging() and judge.current is None


def test_the_record_is_what_status_reads():
    verdict = Verdict(2, "node2", 1_800_000_000.0, {0: (0.9, 20), 1: (0.85, 20), 2: (0.05, 20)})
    record = parse_record(verdict.record())
    assert record is not None
    assert (record["host"], record["rank"], record["since"], record["samples"]) == (
        "node2", 2, "2027-01-15T08:00:00Z", 20)
    assert record["shares"] == {"0": 0.9, "1": 0.85, "2": 0.05}
    assert record["line"] == ("straggler: rank 2 on node2: waiting in a collective in 5% of 20 samples, "
                              "the others 88% (median): they wait for it")
    assert verdict.recovered() == "rank 2 on node2 is no longer a straggler"
    assert parse_record("not json") is None and parse_record('{"rank": "2"}') is None


def test_status_marks_the_straggler_row_and_says_since_when():
    state = a_run(node1=(0, 1), node2=(2,))
    rows = [RankRow(host, RankStatus(rank, "running"), progress=parse_progress(f"step {rank} step=7")[rank])
            for rank, host in HOSTS.items()]
    record = parse_record(Verdict(2, "node2", 1_800_000_000.0, {0: (0.9, 20), 1: (0.85, 20),
                                                                   2: (0.05, 20)}).record())
    found = RunStatus(state, rows, straggler=record)
    lines = render.status_lines(found, lambda host, rank: f"[{host} r{rank}]")
    assert lines[1:] == ["  [node1 r0] running, step 7", "  [node1 r1] running, step 7",
                         "  [node2 r2] running, step 7, straggler"]
    assert render.status_rows(found)[2][2] == "running, straggler"
    assert render.status_straggler(found)[0].startswith("straggler: rank 2 on node2: waiting in a collective in 5%")
    assert "(since 2027-01-15 " in render.status_straggler(found)[0]
    shown = json.loads(render.status_json(found, None))
    assert [r["straggler"] for r in shown["ranks"]] == [False, False, True]
    assert shown["straggler"]["rank"] == 2 and shown["straggler"]["host"] == "node2"
    assert render.status_straggler(RunStatus(state, rows)) == []


# ------------------------------------------------------------------ the watch over fake hosts

WAIT = [("/v/site-packages/torch/distributed/distributed_c10d.py", 2500, "all_reduce"), ("/w/work/t.py", 9, "train")]
WORK = [("/w/work/t.py", 5, "slow_step"), ("/w/work/t.py", 8, "train")]


def collector_says(busy: set[int], ranks: tuple[int, ...], python: bool = True):
    """A host's answer to the stacks collector: each rank's main thread waiting, or in `busy` at work."""
    def answer(call) -> Result:
        lines = []
        for rank in ranks:
            frames = WORK if rank in busy else WAIT
            dump = "Current thread 0x0000000000000001 (most recent call first):\n" + "".join(
                f'  File "{f}", line {n} in {fn}\n' for f, n, fn in frames)
            procs = [{"pid": 100 + rank, "ppid": 1, "name": "python3", "armed": True, "main": 1, "dump": dump,
                      "native": None, "why": None}]
            lines.append(json.dumps({"rank": rank, "error": None, "procs": procs} if python else
                                    {"rank": rank, "error": "no armed Python process among its processes (sh)",
                                     "procs": []}))
        return Result(0, "\n".join(lines) + "\n", "")
    return answer


def test_the_watch_says_each_change_once_and_keeps_the_verdict_in_rank_0s_run_directory():
    busy: set[int] = {2}
    node1 = FakeConnection("node1").answer("main_block", lambda call: collector_says(busy, (0, 1))(call))
    node2 = FakeConnection("node2").answer("main_block", lambda call: collector_says(busy, (2,))(call))
    ui = RecordingUi()
    watch = Watch(a_run(node1=(0, 1), node2=(2,)), {"node1": node1, "node2": node2}, ui, every=3.0)
    for _ in range(12):
        watch.judge_round(watch.sample())
    assert ui.warnings == ["straggler: rank 2 on node2: waiting in a collective in 0% of 10 samples, the others "
                           "100% (median): they wait for it"]
    (kept,) = [c for c in node1.calls if "straggler.tmp" in c.command]
    assert kept.command.startswith("cat >/w/runs/t-1/straggler.tmp && mv ")
    assert parse_record(kept.stdin.decode())["rank"] == 2
    assert not [c for c in node2.calls if "straggler" in c.command]  # rank 0's host keeps it
    busy.clear()
    for _ in range(20):
        watch.judge_round(watch.sample())
    assert ui.lines[-1] == ("info", "rank 2 on node2 is no longer a straggler")
    assert [c for c in node1.commands if "main_block" not in c][-2:] == [kept.command, "rm -f /w/runs/t-1/straggler"]


def test_a_watch_that_finds_no_straggler_removes_a_verdict_an_earlier_watch_kept():
    node1 = FakeConnection("node1").answer("main_block", collector_says(set(), (0, 1)))
    node2 = FakeConnection("node2").answer("main_block", collector_says(set(), (2,)))
    ui = RecordingUi()
    watch = Watch(a_run(node1=(0, 1), node2=(2,)), {"node1": node1, "node2": node2}, ui, every=3.0)
    for _ in range(15):
        watch.judge_round(watch.sample())
    assert ui.lines == []
    assert [c for c in node1.commands if "main_block" not in c] == ["rm -f /w/runs/t-1/straggler"]  # once


def test_the_watch_of_a_program_that_is_not_python_says_nothing_and_keeps_nothing():
    node1 = FakeConnection("node1").answer("main_block", collector_says(set(), (0, 1), python=False))
    node2 = FakeConnection("node2").answer("main_block", collector_says(set(), (2,), python=False))
    ui = RecordingUi()
    watch = Watch(a_run(node1=(0, 1), node2=(2,)), {"node1": node1, "node2": node2}, ui, every=3.0)
    assert watch.sample() == {}  # the loop then waits twice as long, up to IDLE_MAX_S
    assert ui.lines == [] and all("main_block" in c for c in node1.commands + node2.commands)


def test_an_opted_out_watch_starts_nothing():
    with watching(a_run(node1=(0,)), {}, RecordingUi(), enabled=False) as watch:
        assert watch is None
    before = threading.active_count()
    with watching(a_run(node1=(0,)), {}, RecordingUi()) as watch:
        assert watch is not None and threading.active_count() == before + 1
    assert threading.active_count() == before  # idle between rounds: it ends at once


# ------------------------------------------------------------------ hostside/stacks.py


def test_a_sample_saves_nothing_and_a_live_file_is_cut_back_to_its_header(tmp_path):
    rundir = arm_folder(tmp_path)
    prog = "import time\ndef busy():\n    time.sleep(60)\nbusy()\n"
    wrapper = subprocess.Popen(["sh", "-c", f"{sys.executable} -c '{prog}'; true"], cwd=rundir,
                               env=armed_env(rundir), start_new_session=True)
    try:
        (rundir / "rank0.pid").write_text(f"{wrapper.pid}\n")
        live = wait_for(lambda: next((rundir / "stacks" / "live").iterdir(), None), 10, "the program armed")
        header = live.read_text()
        with live.open("a") as f:  # as if it had answered a few thousand samples
            f.write("Current thread 0x1 (most recent call first):\n" * 30000)
        out = subprocess.run([sys.executable, "-c", hostside.source("stacks"), str(rundir), "-", "0", "5", "1", "0",
                              "0"], capture_output=True, text=True, check=True).stdout
        (program,) = [p for p in json.loads(out)["procs"] if p["armed"]]
        assert "in busy" in program["dump"]
        assert sorted(p.name for p in (rundir / "stacks").iterdir()) == ["live", "lock", "site"]  # nothing saved
        assert live.read_text() == header  # cut back once read: the handler writes on at the end
        again = subprocess.run([sys.executable, "-c", hostside.source("stacks"), str(rundir), "-", "0", "5", "1",
                                "0", "0"], capture_output=True, text=True, check=True).stdout
        assert ["in busy" in (p["dump"] or "") for p in json.loads(again)["procs"]] == [True]  # still answering
    finally:
        os.killpg(wrapper.pid, 9)
        wrapper.wait()


def test_collectors_on_one_host_take_turns(tmp_path):
    """A collector waits while another holds stacks/lock (so none reads a dump another asked for)."""
    import fcntl

    rundir = arm_folder(tmp_path)
    fd = os.open(rundir / "stacks" / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    collector = subprocess.Popen([sys.executable, "-c", hostside.source("stacks"), str(rundir), "-", "0", "5", "1",
                                  "0", "0"], stdout=subprocess.PIPE, text=True)
    try:
        # /proc/locks lists a process blocked on a lock as `-> FLOCK ... PID ...`
        wait_for(lambda: any(line.split()[1] == "->" and line.split()[5] == str(collector.pid)
                             for line in Path("/proc/locks").read_text().splitlines()), 20, "the collector waiting")
        assert collector.poll() is None
    finally:
        os.close(fd)
    out, _ = collector.communicate(timeout=20)
    assert json.loads(out)["error"] == "not started"


# ------------------------------------------------------------------ on the cluster

# A collective without torch: every rank meets rank 0 over TCP. Its file lies in a folder named
# torch/distributed, as torch's own does, which is what makes a frame in it "waiting in a
# collective" (stacks.activity): the program stands in for a torch.distributed one.
COLLECTIVE = '''import os, socket, struct, time

_peers = []


def init_process_group():
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    address = (os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
    if rank == 0:
        server = socket.create_server(address)
        while len(_peers) < world - 1:
            peer = server.accept()[0]
            peer.settimeout(10)
            try:  # a peer says hello; distctl's probe of the port (job.wait_for_rank0) does not
                if _exact(peer, 5) == b"hello":
                    peer.settimeout(None)
                    _peers.append(peer)
            except (OSError, SystemExit):
                peer.close()
        return
    for _ in range(600):
        try:
            _peers.append(socket.create_connection(address))
            _peers[0].sendall(b"hello")
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("rank 0 never answered")


def _exact(sock, n):
    data = b""
    while len(data) < n:
        more = sock.recv(n - len(data))  # blocks in C: where the waiting ranks are found
        if not more:
            raise SystemExit("peer lost")
        data += more
    return data


def all_reduce(value):
    """The sum over every rank, returned to every rank."""
    if int(os.environ["RANK"]) == 0:
        total = value + sum(struct.unpack("!d", _exact(p, 8))[0] for p in _peers)
        for p in _peers:
            p.sendall(struct.pack("!d", total))
        return total
    _peers[0].sendall(struct.pack("!d", value))
    return struct.unpack("!d", _exact(_peers[0], 8))[0]
'''

LOCKSTEP = '''import os, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "standin"))
import torch.distributed as dist


def slow_step():
    time.sleep(0.05)  # a sleep: CPU time alone cannot tell this rank


dist.init_process_group()
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
print("joined", flush=True)
steps = 0
while True:
    if rank == 2 and not os.path.exists("recovered"):
        slow_step()
    assert dist.all_reduce(rank + 1.0) == world * (world + 1) / 2
    steps += 1
    if dist.all_reduce(float(os.path.exists("done"))):
        break
print("ok steps=%d" % steps, flush=True)
'''


class Said:
    """What an attached `up` prints on stderr, collected by a thread, waited on with deadlines."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._q: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=lambda: [self._q.put(line.rstrip("\n")) for line in proc.stderr],
                                        daemon=True)
        self._reader.start()

    def everything(self) -> list[str]:
        """Every line, once the program ended."""
        self._reader.join(timeout=30)
        while not self._q.empty():
            self.lines.append(self._q.get())
        return self.lines

    def line(self, start: str, timeout: float) -> str:
        def found() -> str | None:
            while not self._q.empty():
                self.lines.append(self._q.get())
            return next((line for line in self.lines if line.startswith(start)), None)
        try:
            return wait_for(found, timeout, f"a line {start!r}", every=0.05)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; up said: {self.lines}") from None


@pytest.mark.cluster
def test_up_names_the_slowed_rank_marks_it_in_status_and_says_when_it_recovers(cluster, tmp_path, monkeypatch):
    code = project(tmp_path, {"prog.py": LOCKSTEP})
    (tmp_path / code / "standin" / "torch" / "distributed").mkdir(parents=True)
    (tmp_path / code / "standin" / "torch" / "__init__.py").write_text("")
    (tmp_path / code / "standin" / "torch" / "distributed" / "__init__.py").write_text(COLLECTIVE)
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], code=code,
                          command=["python", "prog.py"], host_extra={"node1": {"slots": 2}})
    monkeypatch.setenv(TEST_TIMERS, "straggler_every=0.1")
    up = start_distctl("up", str(inv), cwd=tmp_path)
    said, follower = Said(up), None
    try:
        said.line("distctl: run ", 60)  # started: `logs -f` finds it, and watches too
        follower = start_distctl("logs", "-f", cwd=tmp_path)
        followed = Said(follower)
        named = said.line("distctl: straggler: ", 90)
        assert named.startswith("distctl: straggler: rank 2 on node2: waiting in a collective in "), named
        status = distctl("status", cwd=tmp_path)
        marked = [line for line in status.stdout.splitlines() if line.endswith(", straggler")]
        assert [line.split("]")[0] for line in marked] == ["  [node2 r2"], status.stdout
        found = json.loads(distctl("status", "--json", cwd=tmp_path).stdout)
        assert (found["straggler"]["host"], found["straggler"]["rank"]) == ("node2", 2)
        assert [r["rank"] for r in found["ranks"] if r["straggler"]] == [2]
        assert followed.line("distctl: straggler: ", 60).startswith("distctl: straggler: rank 2 on node2: ")

        run_id = last_run_id(tmp_path)
        node2 = cluster.host("node2")
        node2.run(f"touch {node2.workdir}/runs/{run_id}/work/recovered", check=True)
        said.line("distctl: rank 2 on node2 is no longer a straggler", 60)
        followed.line("distctl: rank 2 on node2 is no longer a straggler", 60)
        wait_for(lambda: json.loads(distctl("status", "--json", cwd=tmp_path).stdout)["straggler"] is None, 30,
                 "the straggler file removed")  # both watchers keep it: the later one may still be writing
        for name in ("node1", "node2"):
            h = cluster.host(name)
            h.run(f"touch {h.workdir}/runs/{run_id}/work/done", check=True)
        assert up.wait(timeout=60) == 0, said.everything()
        assert follower.wait(timeout=60) == 0, followed.everything()
        assert [line for line in said.everything() if "straggler" in line] == [
            named, "distctl: rank 2 on node2 is no longer a straggler"]  # each said once
    finally:
        kill_tree(up)
        if follower:
            kill_tree(follower)
        distctl("stop", "--grace", "1", cwd=tmp_path)


def test_the_opt_out_is_a_flag_of_up_and_logs():
    for command in ("up", "logs"):
        out = subprocess.run([sys.executable, "-m", "orchestrator", command, "--help"], capture_output=True,
                             text=True, env={**os.environ, "COLUMNS": "200"}).stdout
        assert "--straggler-watch / --no-straggler-watch" in out, out
