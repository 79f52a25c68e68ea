"""The programs distctl runs on a host (orchestrator/hostside/), run here as a host runs them:
`python -c <source> ARGS` in a run directory, with real files, sockets and process groups."""

from __future__ import annotations

import ast
import json
import glob
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import time
import threading
from importlib import metadata
from pathlib import Path

import pytest
from conftest import cannot_run
from e2e import wait_for
from support.net import ephemeral_port

from orchestrator import hostside, shell
from orchestrator.hostside import wait_port
from orchestrator.run.lifecycle import status_script, stop_script
from orchestrator.plan.model import RankPlan
from orchestrator.plan.scripts import launch_script


def run(name: str, *args: object, cwd: Path | None = None, python: tuple[str, ...] = (sys.executable,),
        timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*python, "-c", hostside.source(name), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def start(name: str, *args: object, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", hostside.source(name), *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, text=True)


class Lines:
    """A running program's stdout lines, collected by a thread, waited on with deadlines."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.seen, self._q = proc, [], queue.Queue()
        threading.Thread(target=lambda: [self._q.put(line.rstrip("\n")) for line in proc.stdout],
                         daemon=True).start()

    def until(self, line: str, timeout: float = 30) -> list[str]:
        def found():
            while not self._q.empty():
                self.seen.append(self._q.get())
            return line in self.seen
        wait_for(found, timeout, f"{line!r} (seen {self.seen})", every=0.02)
        return self.seen


@pytest.fixture
def group(tmp_path):
    """A live process group of our own (a new session, like a detached rank), led by a process
    working in the test's run directory, tmp_path, as a rank's wrapper does in its run's."""
    proc = subprocess.Popen(["sleep", "300"], cwd=tmp_path, start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------ all programs


@pytest.mark.parametrize("name", hostside.PROGRAMS)
def test_each_program_is_a_stdlib_module_a_python_38_host_can_run(name):
    text = hostside.source(name)
    tree = ast.parse(text, feature_version=(3, 8))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    # collective.py imports torch inside main (`check --collective` needs it; others never do)
    assert imported <= sys.stdlib_module_names | {"__future__"} | ({"torch"} if name == "collective" else set()), \
        imported
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.NamedExpr, ast.Match))]
    assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)
    assert text.rstrip().endswith('if __name__ == "__main__":\n    sys.exit(main(sys.argv[1:]))')
    # Sent shell-quoted: a single quote would show as '"'"' in every dry run.
    assert "'" not in text
    assert f"-c {shell.join([text])}" in shell.join(["python", "-c", text])
    # exactly the module's code, without the docstring its readers have; a program of several
    # files (hostside.PARTS) is their code joined, without the imports between them
    file_text = (Path(hostside.__file__).parent / f"{name}.py").read_text()
    assert file_text.startswith('"""') and '"""' not in text[:3]
    assert file_text.endswith(text) if name not in hostside.PARTS else text.startswith(hostside.FUTURE)
    assert hostside.SIBLING not in text


def test_a_bad_command_line_is_a_usage_error_not_a_traceback():
    for name, args in (("follow", []), ("wait_port", ["127.0.0.1"]), ("port_check", ["listen"]),
                       ("detach", []), ("progress", []), ("collective", [])):
        done = run(name, *args)
        assert (done.returncode, done.stdout) == (2, ""), name
        assert done.stderr.startswith(f"usage: {name}.py "), done.stderr


def oldest_python() -> str | None:
    """A Python 3.8 to run the programs with, as an old host would (pyenv's, or on PATH)."""
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python")))
    return found[0] if found else shutil.which("python3.8")


def test_every_program_runs_on_python_38(tmp_path):
    python = oldest_python()
    if not python:
        cannot_run("no Python 3.8 here (pyenv or python3.8 on PATH)")
    (tmp_path / "rank0.log").write_bytes(b"a\nb")
    (tmp_path / "rank0.pid").write_text(str(dead_pid()))
    old = (python,)
    probe = run("probe", python=old)
    assert probe.stdout.startswith("python=3.8."), probe.stderr
    assert run("follow", "follow", -1, "0:0", cwd=tmp_path, python=old).stdout == "0 a\n0 b\nexit 0 - -\n"
    waited = run("wait_port", "127.0.0.1", ephemeral_port(), "rank0.pid", 30, cwd=tmp_path, python=old)
    assert waited.stdout == "exited\n"
    assert run("port_check", "connect", "127.0.0.1", ephemeral_port(), python=old).stdout == "fail Connection refused\n"
    detached = run("detach", "sleep", "300", python=old)
    os.killpg(int(detached.stdout), signal.SIGKILL)
    (tmp_path / "rank0.log").write_bytes(b"epoch=1 rank=0 loss=2.0\n")
    assert run("progress", tmp_path, 0, python=old).stdout == "progress 0 1 -\n"


# ------------------------------------------------------------------ follow


def test_replay_prints_every_rank_then_its_exit_record(tmp_path):
    (tmp_path / "rank0.log").write_bytes(b"seen\nb\nc\n")
    (tmp_path / "rank1.log").write_bytes(b"x\nhalf a line")  # still being written
    (tmp_path / "rank0.exit").write_text("0\n")
    os.utime(tmp_path / "rank0.exit", (1700000000.25, 1700000000.25))
    (tmp_path / "rank2.exit").write_text("143\n")  # no log at all
    os.utime(tmp_path / "rank2.exit", (1700000001, 1700000001))
    done = run("follow", "replay", -1, "0:1", "1:0", "2:0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "0 b", "0 c", "1 x", "1 half a line",
        "exit 0 0 1700000000.250", "exit 1 - -", "exit 2 143 1700000001.000"]


@pytest.mark.parametrize("tail, expected", [
    # `at R K`: the tail of rank R starts after its first K lines (a reopened follower skips to there)
    (0, ["at 0 4", "at 1 2", "1 half"]),
    (1, ["at 0 3", "0 d", "at 1 1", "1 y", "1 half"]),
    (9, ["at 0 0", "0 a", "0 b", "0 c", "0 d", "at 1 0", "1 x", "1 y", "1 half"]),
])
def test_tail_starts_each_log_at_its_last_complete_lines(tmp_path, tail, expected):
    (tmp_path / "rank0.log").write_bytes(b"a\nb\nc\nd\n")
    (tmp_path / "rank1.log").write_bytes(b"x\ny\nhalf")
    done = run("follow", "replay", tail, "0:3", "1:3", cwd=tmp_path)  # a tail ignores skips
    assert done.stdout.splitlines() == expected + ["exit 0 - -", "exit 1 - -"]


def test_a_follower_from_the_prepare_step_skips_what_it_recorded_and_says_so(tmp_path):
    """`R:from`: the count the prepare step wrote (rankR.from) before a resumed attempt's lines."""
    (tmp_path / "rank0.log").write_bytes(b"attempt 1\nattempt 1\n--- distctl: resumed ---\nattempt 2\n")
    (tmp_path / "rank0.from").write_text("2\n")
    (tmp_path / "rank1.log").write_bytes(b"only\n")  # no rankR.from: a fresh log, from its start
    done = run("follow", "replay", -1, "0:from", "1:from", cwd=tmp_path)
    assert done.stdout.splitlines() == ["at 0 2", "at 1 0", "0 --- distctl: resumed ---", "0 attempt 2",
                                        "1 only", "exit 0 - -", "exit 1 - -"]


def test_a_rank_under_a_live_restart_agent_is_followed_across_attempts(tmp_path, group):
    """While agent.pid's group lives, a rank whose own group is gone is not over (a restart
    starts it again); the agent's decisions come out as `ev` lines."""
    (tmp_path / "agent.pid").write_text(f"{group.pid}\n")
    (tmp_path / "rank0.log").write_bytes(b"attempt 0\n")
    (tmp_path / "rank0.exit").write_text("137\n")
    (tmp_path / "agent.events").write_text("restart 1/2 after node1 r0 exited 137\n")
    follower = start("follow", "follow", -1, "0:0", cwd=tmp_path)
    try:
        out = Lines(follower)
        out.until("ev restart 1/2 after node1 r0 exited 137")
        with open(tmp_path / "rank0.log", "ab") as log:
            log.write(b"attempt 1\n")
        out.until("0 attempt 1")
        assert not any(line.startswith("exit") for line in out.seen)
        group.kill()
        group.wait()
        at = f"{os.path.getmtime(tmp_path / 'rank0.exit'):.3f}"
        assert [line for line in out.until(f"exit 0 137 {at}") if line != "hb"] == [
            "ev restart 1/2 after node1 r0 exited 137", "0 attempt 0", "0 attempt 1", f"exit 0 137 {at}"]
    finally:
        follower.kill()
        follower.wait()


def test_follow_streams_a_live_rank_until_its_group_is_gone(tmp_path, group):
    (tmp_path / "rank0.pid").write_text(f"{group.pid}\n")
    (tmp_path / "rank0.log").write_bytes(b"old\n")
    (tmp_path / "rank1.log").write_bytes(b"from a rank without a pid file\n")
    follower = start("follow", "follow", -1, "0:1", "1:0", cwd=tmp_path)
    try:
        out = Lines(follower)
        # A rank whose pid file is missing is over at once; the live one goes on.
        assert out.until("exit 1 - -") == ["1 from a rank without a pid file", "exit 1 - -"]
        with open(tmp_path / "rank0.log", "ab") as log:
            log.write(b"new\nunfinished ")
            log.flush()
            out.until("0 new")
            log.write(b"line\nlast words")  # never ends with a newline
        (tmp_path / "rank0.exit").write_text("7\n")
        group.kill()
        group.wait()  # reaped: a zombie still counts as a member of its group
        out.until("0 last words")
        assert follower.wait(timeout=30) == 0
        at = os.path.getmtime(tmp_path / "rank0.exit")
        assert out.until(f"exit 0 7 {at:.3f}")[2:] == [
            # the unfinished line travels first as a partial record (`p`), then as the line
            "0 new", "p 0 unfinished ", "0 unfinished line", "0 last words", f"exit 0 7 {at:.3f}"]
    finally:
        follower.kill()
        follower.wait()


# ------------------------------------------------------------------ wait_port


def test_wait_port_is_ready_once_the_port_listens(tmp_path, group):
    (tmp_path / "rank0.pid").write_text(f"{group.pid}\n")
    with socket.create_server(("127.0.0.1", 0)) as server:
        done = run("wait_port", "127.0.0.1", server.getsockname()[1], "rank0.pid", 30, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, "ready\n")


def test_wait_port_says_exited_when_the_process_is_gone(tmp_path):
    (tmp_path / "rank0.pid").write_text(str(dead_pid()))
    done = run("wait_port", "127.0.0.1", ephemeral_port(), "rank0.pid", 30, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (3, "exited\n")


def test_wait_port_times_out_while_the_process_lives(tmp_path, group):
    (tmp_path / "rank0.pid").write_text(str(group.pid))
    done = run("wait_port", "127.0.0.1", ephemeral_port(), "rank0.pid", 0.3, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (4, "timeout\n")


@pytest.mark.parametrize("content", [None, "", "garbage"])
def test_wait_port_without_a_process_id_says_so(tmp_path, content):
    if content is not None:
        (tmp_path / "rank0.pid").write_text(content)
    done = run("wait_port", "127.0.0.1", ephemeral_port(), "rank0.pid", 30, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (5, "no-pid\n", "")


def test_wait_port_needs_no_proc_and_counts_another_users_process_as_alive(monkeypatch):
    def kill(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", kill)
    assert wait_port.alive(1)
    # (the prelude sent before it reads /proc only in group_alive, which wait_port does not call)
    own = (Path(hostside.__file__).parent / "wait_port.py").read_text()
    assert "/proc" not in own.replace("no /proc is needed", "")


def test_the_agent_leaves_a_recycled_process_group_alone(tmp_path, monkeypatch):
    """The agent's liveness and its signals (a restart's TERM, a stop's KILL) go through the
    prelude's group_alive: a pid file whose id now leads a stranger's group is a rank that
    ended; the stranger is never signalled. The run's own group is."""
    import subprocess

    from orchestrator.hostside import agent

    rundir, elsewhere = tmp_path / "run", tmp_path / "other"
    rundir.mkdir()
    elsewhere.mkdir()
    stranger = subprocess.Popen(["sleep", "60"], cwd=elsewhere, start_new_session=True)
    ours = subprocess.Popen(["sh", "-c", "sleep 60"], cwd=rundir, start_new_session=True)
    try:
        (rundir / "rank0.pid").write_text(f"{stranger.pid}\n")  # the recycled id
        (rundir / "rank1.pid").write_text(f"{ours.pid}\n")
        monkeypatch.chdir(rundir)
        assert (agent.group_alive(stranger.pid), agent.group_alive(ours.pid)) == (False, True)
        ranks = agent.Ranks({"ranks": [{"rank": 0}, {"rank": 1}]})
        assert ranks.poll() == [(0, None)] and ranks.running() == [1]
        ranks.exits.clear()  # as if rank 0 were still running: terminate must pass it over anyway
        ranks.terminate(0.0)
        assert ours.wait(timeout=10) == -signal.SIGTERM
        assert stranger.poll() is None
        ranks.signal(signal.SIGKILL)
        assert stranger.poll() is None
    finally:
        for proc in (stranger, ours):
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------ port_check


def test_listen_accepts_the_workers_and_counts_them():
    port = ephemeral_port()
    listener = start("port_check", "listen", "127.0.0.1", port, 2)
    try:
        out = Lines(listener)
        out.until("listening")
        dials = [run("port_check", "connect", "127.0.0.1", port) for _ in range(2)]
        assert [(d.returncode, d.stdout) for d in dials] == [(0, "ok\n")] * 2
        assert out.until("accepted 2") == ["listening", "accepted 2"]
        assert listener.wait(timeout=30) == 0
    finally:
        listener.kill()
        listener.wait()


def test_listen_reports_how_many_came_before_its_deadline():
    listener = start("port_check", "listen", "127.0.0.1", ephemeral_port(), 3, 0.5)
    out = Lines(listener)
    assert listener.wait(timeout=30) == 0
    assert out.until("accepted 0") == ["listening", "accepted 0"]


def test_listen_on_a_taken_port_says_busy():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        done = run("port_check", "listen", "127.0.0.1", taken.getsockname()[1], 1)
    assert (done.returncode, done.stdout) == (3, "busy Address already in use\n")


def test_connect_to_a_closed_port_says_why():
    done = run("port_check", "connect", "127.0.0.1", ephemeral_port())
    assert (done.returncode, done.stdout) == (3, "fail Connection refused\n")


# ------------------------------------------------------------------ probe


def test_probe_prints_the_interpreter_package_versions_and_the_hosts_clock():
    before = time.time()
    done = run("probe")
    v = sys.version_info
    *lines, clock = done.stdout.splitlines()
    assert lines == [f"python={v.major}.{v.minor}.{v.micro}",
                     f"torch={metadata.version('torch')}",
                     f"torchvision={metadata.version('torchvision')}",
                     "loopback=lo"]
    key, _, seconds = clock.partition("=")
    assert key == "time" and before <= float(seconds) <= time.time() and len(seconds.split(".")[1]) == 6


def test_probe_leaves_a_missing_package_empty():
    done = run("probe", python=(sys.executable, "-S", "-I"))  # no site-packages: no torch
    assert done.stdout.splitlines()[1:3] == ["torch=", "torchvision="]


# ------------------------------------------------------------------ detach


def test_detach_starts_a_new_session_and_prints_its_group_id(tmp_path):
    done = run("detach", "sh", "-c", 'echo "$$ $PPID" >started; exec sleep 300', cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    pgid = int(done.stdout)
    try:
        pid = int(wait_for(lambda: (tmp_path / "started").read_text().split()[:1] if (
            tmp_path / "started").exists() else None, 30, "the detached command")[0])
        assert pid == pgid == os.getpgid(pid) == os.getsid(pid)
        if os.path.isdir(f"/proc/{pid}/fd"):  # nothing of ours held open: stdio on /dev/null
            assert {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")} == {"/dev/null"}
    finally:
        os.killpg(pgid, signal.SIGKILL)


def test_detach_names_a_command_it_cannot_start():
    done = run("detach", "no-such-command-here", "x")
    assert (done.returncode, done.stdout) == (127, "")
    assert done.stderr == "detach: cannot run no-such-command-here: No such file or directory\n"


def rank_script(rundir: Path, code: str) -> str:
    ranks = [RankPlan(rank=r, local_rank=r, argv=("sh", "-c", code)) for r in (0, 1)]
    watcher = {"run": "t", "me": 0, "watch": True, "hosts": [{"name": "here", "ranks": [0, 1]}],
               "ranks": [{"rank": 0}, {"rank": 1}], "max_restarts": 0, "grace": 5.0, "teardown": 10.0}
    return launch_script(str(rundir), ranks, str(rundir / "code"), sys.executable, watcher)


def launch(rundir: Path, code: str) -> dict[int, int]:
    (rundir / "env").write_text("export WHO=rank\n")
    (rundir / "code").mkdir()
    done = subprocess.run(["sh", "-c", rank_script(rundir, code)], capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ["PATH"]})
    assert done.returncode == 0, done.stderr
    pgids = {r: int((rundir / f"rank{r}.pid").read_text()) for r in (0, 1)}
    agent = int((rundir / "agent.pid").read_text())
    assert done.stdout.splitlines() == [f"launched rank={r} pgid={pgids[r]}" for r in (0, 1)] + [
        f"launched agent pgid={agent}"]
    return pgids


def kill_groups(pgids: dict[int, int]) -> None:
    """What a test launched, gone whatever the test saw."""
    for pgid in pgids.values():
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def exit_of(rundir: Path, rank: int) -> str:
    """The exit code the rank's wrapper records, once it is there."""
    path = rundir / f"rank{rank}.exit"
    wait_for(path.exists, 30, f"rank {rank}'s exit code")
    return path.read_text()


def test_launched_ranks_log_and_record_their_exit_code(tmp_path):
    pgids = launch(tmp_path, 'echo "$WHO $0 says hi"; exit 3')
    for r in (0, 1):
        assert exit_of(tmp_path, r) == "3\n"
        assert (tmp_path / f"rank{r}.log").read_text() == "rank sh says hi\n"
    assert len(set(pgids.values())) == 2


def test_a_stopped_rank_outlives_its_wrapper_and_its_code_is_kept(tmp_path):
    """`stop` sends TERM to the group: the trainer ends, the wrapper (trapping TERM) records 143."""
    pgids = launch(tmp_path, "echo up; exec sleep 300")
    try:
        wait_for(lambda: (tmp_path / "rank1.log").exists() and (tmp_path / "rank1.log").read_text(), 30, "rank 1")
        assert os.getsid(pgids[1]) == pgids[1]
        os.killpg(pgids[1], signal.SIGTERM)
        assert exit_of(tmp_path, 1) == "143\n"
        assert not (tmp_path / "rank0.exit").exists()
    finally:
        kill_groups(pgids)


# ------------------------------------------------------------------ status and stop, by process group


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_status_and_stop_find_ranks_by_their_process_groups_with_this_machines_sh(tmp_path):
    """The rank groups here carry no run marker, so the /proc sweep cannot find them: what
    status and stop see is the groups alone, as on a host without /proc (macOS)."""
    pgids = launch(tmp_path, "echo up; exec sleep 300")
    try:
        wait_for(lambda: all((tmp_path / f"rank{r}.log").exists() for r in (0, 1)), 30, "both ranks")
        status = subprocess.run(["sh", "-c", status_script(str(tmp_path), [0, 1, 2])], capture_output=True,
                                text=True, timeout=30)
        lines = status.stdout.splitlines()
        assert lines[:3] == ["rank=0 state=running", "rank=1 state=running", "rank=2 state=not-started"]
        assert [line for line in lines[3:] if not line.startswith("agent {")] == ["agent-alive=1"]  # its watcher
        stop = subprocess.run(["sh", "-c", stop_script(str(tmp_path), "no-such-run", grace=10)],
                              capture_output=True, text=True, timeout=60)
        assert (stop.returncode, stop.stdout, stop.stderr) == (0, "left=0\n", "")
        assert [exit_of(tmp_path, r) for r in (0, 1)] == ["143\n"] * 2  # TERM reached each rank
        agent = int((tmp_path / "agent.pid").read_text())  # the stop killed the watcher first
        wait_for(lambda: not running(agent), 10, "the agent gone")
    finally:
        kill_groups(pgids)


@pytest.mark.parametrize("heartbeat", [[], ["--heartbeat=0.2"]])  # 2 s, or what the workstation says
def test_a_quiet_follower_sends_heartbeats(tmp_path, group, heartbeat):
    """`hb` after quiet seconds: the workstation tells a quiet run from a stalled link by it."""
    (tmp_path / "rank0.pid").write_text(f"{group.pid}\n")
    (tmp_path / "rank0.log").write_bytes(b"one\n")
    follower = start("follow", *heartbeat, "follow", -1, "0:0", cwd=tmp_path)
    try:
        assert Lines(follower).until("hb") == ["0 one", "hb"]
    finally:
        follower.kill()
        follower.wait()


def test_the_session_runs_commands_one_after_another_with_stdin_exit_codes_and_timeouts():
    """hostside/session.py: what SshConnection.run sends when a host has python3."""
    proc = subprocess.Popen([sys.executable, "-c", hostside.source("session")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    assert proc.stdin and proc.stdout
    try:
        assert proc.stdout.readline() == b"ready\n"

        def ask(cmd: str, data: bytes = b"", timeout: float | None = None) -> tuple[int, bytes, bytes]:
            assert proc.stdin and proc.stdout
            proc.stdin.write(json.dumps({"cmd": cmd, "stdin": len(data), "timeout": timeout}).encode() + b"\n" + data)
            proc.stdin.flush()
            answer = json.loads(proc.stdout.readline())
            assert answer["timed_out"] is (timeout is not None and answer["exit"] == 124)
            return answer["exit"], proc.stdout.read(answer["out"]), proc.stdout.read(answer["err"])

        assert ask("cat; echo oops >&2; exit 3", b"a\nb\x00c") == (3, b"a\nb\x00c", b"oops\n")
        assert ask("kill -TERM $$") == (143, b"", b"")  # as a shell reports a signal
        code, _, err = ask("echo started; sleep 30", timeout=0.5)
        assert (code, err.endswith(b"timed out\n")) == (124, True)
        assert ask("echo still here") == (0, b"still here\n", b"")  # the session survived all of it
        assert ask("exit 124") == (124, b"", b"")  # a command's own 124 is not a timeout
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0  # end of stdin ends it


def test_status_says_restarting_for_a_rank_between_attempts_of_a_live_agent(tmp_path, group):
    from orchestrator.run.lifecycle import parse_status, status_script

    (tmp_path / "agent.pid").write_text(f"{group.pid}\n")
    (tmp_path / "rank0.pid").write_text(f"{dead_pid()}\n")
    (tmp_path / "rank0.exit").write_text("137\n")  # failed: the agent restarts it
    (tmp_path / "rank1.pid").write_text(f"{dead_pid()}\n")
    (tmp_path / "rank1.exit").write_text("0\n")  # done: nothing to restart
    out = subprocess.run(["sh", "-c", status_script(str(tmp_path), [0, 1])], capture_output=True, text=True).stdout
    assert [(s.rank, s.state, s.code) for s in parse_status(out)] == [(0, "restarting", None), (1, "exited", 0)]
    (tmp_path / "agent.pid").write_text(f"{dead_pid()}\n")  # the agent gone: what the files say
    out = subprocess.run(["sh", "-c", status_script(str(tmp_path), [0, 1])], capture_output=True, text=True).stdout
    assert [(s.rank, s.state, s.code) for s in parse_status(out)] == [(0, "exited", 137), (1, "exited", 0)]


def test_stop_status_and_follow_leave_a_recycled_process_group_alone(tmp_path, monkeypatch):
    """A pid file outlives its process: after a reboot, or long after the run, its id may lead
    another program's group. stop must not signal it, status must not call the rank running,
    and a follower must not wait on it; the run's own group is still stopped."""
    import subprocess

    from orchestrator.hostside import follow
    from orchestrator.run.lifecycle import parse_left, parse_status, status_script, stop_script

    rundir, elsewhere = tmp_path / "run", tmp_path / "other"
    rundir.mkdir()
    elsewhere.mkdir()
    stranger = subprocess.Popen(["sleep", "60"], cwd=elsewhere, start_new_session=True)
    ours = subprocess.Popen(["sh", "-c", "sleep 60"], cwd=rundir, start_new_session=True)
    try:
        (rundir / "rank0.pid").write_text(f"{stranger.pid}\n")  # the recycled id
        (rundir / "rank1.pid").write_text(f"{ours.pid}\n")
        (rundir / "agent.pid").write_text(f"{stranger.pid}\n")

        def sh(script: str) -> str:
            return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60).stdout

        assert [(s.rank, s.state) for s in parse_status(sh(status_script(str(rundir), [0, 1])))] == [
            (0, "killed"), (1, "running")]
        monkeypatch.chdir(rundir)
        assert (follow.group_alive(stranger.pid), follow.group_alive(ours.pid)) == (False, True)
        assert parse_left(sh(stop_script(str(rundir), "run-x", 0.5))) == 0
        assert ours.wait(timeout=10) == -signal.SIGTERM
        assert stranger.poll() is None
    finally:
        for proc in (stranger, ours):
            proc.kill()
            proc.wait()
