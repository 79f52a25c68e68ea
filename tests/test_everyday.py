"""A user's own program, every day (issue 25), on the real SSH cluster: stop, resume and status
tell the truth; the host choices and script arguments a launcher user reaches for. Torch-free
stand-in programs: these are mechanisms, not numerics."""

from __future__ import annotations

import json
import re

import pytest

from e2e import distctl, kill_tree, run_pids, start_distctl, wait_for, write_inventory
from test_host_failures import _without_torch

pytestmark = pytest.mark.cluster

# Works until stopped; rank 1 turns SIGTERM into an error exit, as many programs do.
UNTIL_STOPPED = '''
import os, signal, sys, time
if os.environ["RANK"] == "1":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
print("working rank", os.environ["RANK"], flush=True)
while True:
    time.sleep(0.1)
'''


def project(tmp_path, source: str, name: str = "prog.py") -> str:
    code = tmp_path / "project"
    code.mkdir(exist_ok=True)
    (code / name).write_text(source)
    return "project"


def test_a_stop_is_a_stop_for_up_status_runs_and_json(cluster, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"],
                          code=project(tmp_path, UNTIL_STOPPED), command="python prog.py", wait_for_rank0=False)
    up = start_distctl("up", str(inv), cwd=tmp_path)
    try:
        lines: list[str] = []
        wait_for(lambda: lines.append(up.stdout.readline()) or sum("working rank" in x for x in lines) == 2,
                 120, "both ranks working")
        stopped = distctl("stop", "--grace", "5", cwd=tmp_path)
        assert stopped.returncode == 0, stopped.stderr
        out, err = up.communicate(timeout=120)
    finally:
        kill_tree(up)
    assert up.returncode == 14, err
    assert "failed first" not in err and "stopping the run on every host" not in err, err
    assert re.search(r"error: run \S+ was stopped by distctl stop; continue it with: distctl up .*inv.yaml --resume",
                     err), err
    status = distctl("status", cwd=tmp_path)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "stopped by distctl stop" in status.stdout and "first failure" not in status.stdout, status.stdout
    as_json = json.loads(distctl("status", "--json", cwd=tmp_path).stdout)
    assert (as_json["state"], as_json["first_failure"]) == ("stopped", None)
    runs = json.loads(distctl("runs", "--json", cwd=tmp_path).stdout)["runs"]
    assert [r["state"] for r in runs] == ["stopped"]
    run_id = runs[0]["run_id"]
    assert not any(run_pids(cluster, run_id).values())

    # Resumed, the earlier stop is history: a rank that now fails is a failure again.
    again = start_distctl("up", str(inv), "--resume", cwd=tmp_path)
    try:
        seen: list[str] = []
        wait_for(lambda: seen.append(again.stdout.readline()) or sum("working rank" in x for x in seen) == 2,
                 120, "both ranks working again")
        node2 = cluster.host("node2")
        for pid in run_pids(cluster, run_id)["node2"]:
            node2.run(f"kill -TERM {pid}")  # not distctl stop: rank 1 exits 1
        out, err = again.communicate(timeout=120)
    finally:
        kill_tree(again)
    assert again.returncode == 1, err
    assert "rank 1 on node2 failed first: exited with code 1" in err
    assert json.loads(distctl("status", "--json", cwd=tmp_path).stdout)["state"] == "failed"


def test_a_host_whose_run_directory_is_gone_is_shown_by_status_and_logs(cluster, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], code=project(
        tmp_path, "import os\nprint('hello from rank', os.environ['RANK'], flush=True)\n"),
        command="python prog.py", wait_for_rank0=False)
    done = distctl("up", str(inv), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # what went over the wire, in the units of `pushing code: 1 file, 55 B`, and to how many hosts
    assert re.search(r"^distctl: pushed \d+\.\d kB to 2 host\(s\) \(tar streams, headers and padding included\)$",
                     done.stderr, re.M), done.stderr
    run_id = re.search(r"run (\S+) started", done.stderr)[1]
    node2 = cluster.host("node2")
    node2.run(f"rm -rf {node2.workdir}/runs/{run_id}", check=True)  # reimaged, or its workdir cleaned

    status = distctl("status", cwd=tmp_path)
    assert status.returncode == 12, status.stderr
    assert "[node2 r1] missing  (run directory not found on node2: host reimaged or workdir cleaned)" in status.stdout
    assert f"status of run {run_id} is incomplete: run directory not found on node2" in status.stderr
    as_json = json.loads(distctl("status", "--json", cwd=tmp_path).stdout)
    assert [(r["host"], r["state"]) for r in as_json["ranks"]] == [("node1", "exited"), ("node2", "missing")]
    assert as_json["missing"] == ["node2"]

    only = distctl("logs", "--host", "node2", cwd=tmp_path)
    assert only.returncode == 12, only.stderr
    assert only.stdout == ""
    assert f"node2: run directory not found on node2 ({node2.workdir}/runs/{run_id})" in only.stderr
    every = distctl("logs", cwd=tmp_path)
    assert every.returncode == 12, every.stderr
    assert "[node1 r0] hello from rank 0" in every.stdout


# Says what it was started with, then fails: a run that can be resumed at once.
SAYS_ARGS = '''
import os, sys
print("args", sys.argv[1:], "FOO", os.environ.get("FOO"), flush=True)
sys.exit(3)
'''


def test_resume_runs_the_recorded_job_says_what_differs_and_refuses_other_hosts(cluster, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2", "node3"],
                          code=project(tmp_path, SAYS_ARGS), command="python prog.py --epochs 5",
                          wait_for_rank0=False)
    first = distctl("up", str(inv), "--exclude", "node3", "--set", "job.command=python prog.py --epochs 2",
                    "--", "--extra", "1", cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    ran = "args ['--epochs', '2', '--extra', '1'] FOO"
    assert first.stdout.count(ran) == 2 and "[node3" not in first.stdout, first.stdout

    again = distctl("up", str(inv), "--resume", "--set", "job.env.FOO=bar", cwd=tmp_path)
    assert again.returncode == 1, again.stderr
    assert f"{ran} bar" in again.stdout and "[node1 r0]" in again.stdout and "[node3" not in again.stdout, again.stdout
    assert "as it ran; it differs from" in again.stderr, again.stderr
    assert ("  job.command: python prog.py --epochs 2 --extra 1 (the file now: python prog.py --epochs 5)"
            in again.stderr), again.stderr
    assert "  hosts: node1 (1 slots), node2 (1 slots) (the file now: node1 (1 slots), node2 (1 slots), " \
           "node3 (1 slots))" in again.stderr
    assert "  job.env.FOO: bar (the file now: (unset))" in again.stderr

    third = distctl("up", str(inv), "--resume", cwd=tmp_path)  # the --set of the resume is kept too
    assert third.returncode == 1 and f"{ran} bar" in third.stdout, third.stderr

    other = distctl("up", str(inv), "--resume", "--only", "node1", cwd=tmp_path)
    assert other.returncode == 2, other.stderr
    assert "it ran on node1, node2; start a new run for other hosts" in other.stderr
    slots = distctl("up", str(inv), "--resume", "--set", "hosts.node2.slots=2", cwd=tmp_path)
    assert slots.returncode == 2, slots.stderr
    assert "with 2 slot(s) on node2: it ran 1 rank(s) there" in slots.stderr


def test_hosts_are_chosen_for_up_check_exec_and_up_filters_only_its_stream(cluster, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2", "node3"], code=project(
        tmp_path, "import os, sys\nprint('hello from rank', os.environ['RANK'], sys.argv[1:], flush=True)\n"),
        command="python prog.py", wait_for_rank0=False)
    ran = distctl("exec", str(inv), "--only", "node1,node3", "--exclude", "node3", "--", "hostname", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["[node1] node1"]
    alias = distctl("exec", str(inv), "--host", "node2", "--", "hostname", cwd=tmp_path)
    assert alias.stdout.splitlines() == ["[node2] node2"], alias.stderr
    checked = distctl("check", str(inv), "--exclude", "node2", "--json", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert [h["name"] for h in json.loads(checked.stdout)["hosts"]] == ["node1", "node3"]
    unknown = distctl("check", str(inv), "--only", "node9", cwd=tmp_path)
    assert unknown.returncode == 2 and "no host 'node9' (hosts: node1, node2, node3)" in unknown.stderr

    up = distctl("up", str(inv), "--exclude", "node2", "--rank", "1", "--", "--lr", "0.1", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    assert up.stdout.splitlines() == ["[node3 r1] hello from rank 1 ['--lr', '0.1']"]  # rank 0 ran, unshown
    logs = distctl("logs", cwd=tmp_path)
    assert "[node1 r0] hello from rank 0 ['--lr', '0.1']" in logs.stdout, logs.stderr
    record = json.loads(distctl("runs", "--json", cwd=tmp_path).stdout)["runs"][-1]
    assert record["hosts"] == ["node1", "node3"]


def test_check_fails_on_what_up_would_certainly_fail_on(cluster, tmp_path):
    code = project(tmp_path, "print('hi')\n", name="train.py")
    misspelt = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], code=code,
                               command="python trian.py --epochs 2", wait_for_rank0=False)
    checked = distctl("check", str(misspelt), cwd=tmp_path)
    assert checked.returncode == 5, checked.stderr
    assert (f"job.command runs trian.py, which job.code does not push: no such file in {tmp_path}/project; "
            "did you mean train.py?") in checked.stderr
    assert "check passed" not in checked.stderr

    (tmp_path / "project" / ".gitignore").write_text("train.py\n")
    ignored = distctl("check", str(misspelt), "--set", "job.command=python train.py", cwd=tmp_path)
    assert ignored.returncode == 5 and "it is there but ignored (.gitignore/.distctlignore)" in ignored.stderr
    (tmp_path / "project" / ".gitignore").unlink()

    # node2's python has no torch while node1's has: a torch program fails there at its first import
    python = _without_torch(tmp_path)
    no_torch = write_inventory(tmp_path / "inv2.yaml", cluster, ["node1", "node2"], code=code,
                               command="python train.py", wait_for_rank0=False,
                               host_extra={"node2": {"python": python}})
    checked = distctl("check", str(no_torch), cwd=tmp_path)
    assert checked.returncode == 5, checked.stderr
    assert f"node2: torch is not installed for {python} (python 3." in checked.stderr
    assert "but the other hosts have torch " in checked.stderr
    assert distctl("check", str(no_torch), "--only", "node2", cwd=tmp_path).returncode == 0  # torch-free there


# A progress bar redrawn with \r, a partial bar left at the end, then a deep traceback (rank 1).
BARS_THEN_CRASH = '''
import os, sys, time
for i in range(70):
    sys.stdout.write("\\rstep %d/70" % i)
    sys.stdout.flush()
if os.environ["RANK"] == "0":
    time.sleep(120)
def deep(n):
    if n == 0:
        raise RuntimeError("boom in rank")
    deep(n - 1)
sys.stdout.write("\\n")
sys.stdout.flush()
deep(12)
'''


def test_tails_read_like_the_stream_and_markers_get_their_own_line(cluster, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"],
                          code=project(tmp_path, BARS_THEN_CRASH), command="python prog.py", wait_for_rank0=False)
    up = distctl("up", str(inv), cwd=tmp_path)
    assert up.returncode == 1, up.stderr
    report = up.stderr.split("rank 1 on node2 failed first: exited with code 1; last lines of its log:\n")[1]
    lines = report.splitlines()
    shown = lines[:next((i for i, line in enumerate(lines) if not line.startswith("    ")), len(lines))]
    assert shown[0] == "    Traceback (most recent call last):", report  # the whole traceback, past 10 lines
    assert shown[-1] == "    RuntimeError: boom in rank" and len(shown) == 13, report
    # After the tail, what the others did (issue 21's culprit and collateral), each on its own line.
    others = "the other ranks, before the teardown: rank 0 on node1 is in <module> (prog.py:7)"
    assert lines[len(shown)] == others, report
    assert "step 3/70" not in report

    status = distctl("status", cwd=tmp_path)
    assert status.returncode == 1, status.stderr
    after = status.stdout.split("last lines of its log:\n")[1].splitlines()
    tail = after[:next((i for i, line in enumerate(after) if not line.startswith("    ")), len(after))]
    assert tail[0] == "    Traceback (most recent call last):" and tail[-1] == "    RuntimeError: boom in rank", tail
    assert not any("step" in line for line in tail), tail

    again = distctl("up", str(inv), "--resume", cwd=tmp_path)  # rank 0's log ended in a partial bar
    assert again.returncode == 1, again.stderr
    logs = distctl("logs", "--rank", "0", cwd=tmp_path).stdout
    assert re.search(r"^\[node1 r0\] --- distctl: resumed \S+ ---$", logs, re.M), repr(logs)


def test_hosts_that_failed_alike_are_named_once(cluster, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], code=project(tmp_path, "pass\n"),
                          command="python prog.py", setup="echo 'no wheel for this platform' >&2; exit 3\n")
    done = distctl("up", str(inv), cwd=tmp_path)
    assert done.returncode == 10, done.stderr
    assert "  node1, node2: job.setup exited with code 3; nothing was launched anywhere. Last lines:" in done.stderr
    assert done.stderr.count("    no wheel for this platform") == 1, done.stderr


# A bar that stays unfinished until the test says go (a file in the rank's working folder).
WAITING_BAR = '''
import os, sys, time
sys.stdout.write("\\rwarming 1/2")
sys.stdout.flush()
time.sleep(0.5)
sys.stdout.write("\\rwarming 2/2")
sys.stdout.flush()
while not os.path.exists("go"):
    time.sleep(0.1)
print(" done", flush=True)
'''


def test_a_live_redrawn_line_shows_on_a_terminal_before_its_newline(cluster, tmp_path):
    import os
    import pty
    import select
    import subprocess

    from e2e import DISTCTL

    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1"], code=project(tmp_path, WAITING_BAR),
                          command="python prog.py", wait_for_rank0=False)
    main, child = pty.openpty()
    up = subprocess.Popen([*DISTCTL, "up", str(inv)], cwd=tmp_path, stdin=child, stdout=child, stderr=child,
                          env={**os.environ, "NO_COLOR": "1"}, start_new_session=True)
    os.close(child)
    seen = bytearray()

    def read() -> bytes:
        while select.select([main], [], [], 0.1)[0]:
            try:
                chunk = os.read(main, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen.extend(chunk)
        return bytes(seen)

    try:
        wait_for(lambda: b"[node1 r0] warming 2/2" in read(), 60, "the unfinished bar on the terminal")
        assert b" done" not in seen  # the rank is still inside that line
        run_id = re.search(rb"run (\S+) started", seen)[1].decode()
        node1 = cluster.host("node1")
        node1.run(f"touch {node1.workdir}/runs/{run_id}/work/go", check=True)
        wait_for(lambda: up.poll() is not None and read() is not None, 60, "up to end")
        read()
    finally:
        kill_tree(up)
        os.close(main)
    assert up.returncode == 0, seen.decode(errors="replace")
    assert b"\r\x1b[K" in seen  # drawn in place, then overwritten by the whole line
    assert re.search(rb"\r\x1b\[K\[node1 r0\] warming 2/2 done\r?\n", seen), bytes(seen)
    # a pipe gets whole lines only, as the rank wrote them
    logs = distctl("logs", cwd=tmp_path)
    assert logs.stdout == "[node1 r0] \nwarming 1/2\nwarming 2/2 done\n", repr(logs.stdout)  # (\r read as \n)


def test_exec_groups_identical_outputs(cluster, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2", "node3"])
    node2 = cluster.host("node2")
    node2.run(f"touch {node2.workdir}/odd-one", check=True)
    script = f"echo same; echo line two; test -e {node2.workdir}/odd-one && echo odd; true"
    done = distctl("exec", str(inv), "-c", "--", "sh", "-c", script, cwd=tmp_path)
    node2.run(f"rm -f {node2.workdir}/odd-one", check=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[node1,node3] same", "[node1,node3] line two",
                                        "[node2] same", "[node2] line two", "[node2] odd"]


def test_clean_removes_old_finished_runs_and_unused_code_but_never_a_live_run(cluster, tmp_path):
    import os

    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"],
                          code=project(tmp_path, "print('finished', flush=True)\n"), command="python prog.py",
                          wait_for_rank0=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "prog.py").write_text("import time\nprint('live', flush=True)\ntime.sleep(600)\n")
    done = distctl("up", str(inv), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    old = re.search(r"run (\S+) started", done.stderr)[1]
    live_up = distctl("up", str(inv), "--detach", "--set", "job.code=other", cwd=tmp_path)
    assert live_up.returncode == 0, live_up.stderr
    live = re.search(r"run (\S+) started", live_up.stderr)[1]
    try:
        uses = {}
        for name in ("node1", "node2"):
            h = cluster.host(name)
            for run_id in (old, live):  # both look untouched for two hours; one still runs
                h.run(f"find {h.workdir}/runs/{run_id} -exec touch -d '2 hours ago' {{}} +", check=True)
            uses[name] = {run_id: h.run(f"cat {h.workdir}/runs/{run_id}/uses", check=True).stdout.split()
                          for run_id in (old, live)}
        old_code = os.path.basename(uses["node1"][old][0])
        live_code = os.path.basename(uses["node1"][live][0])
        assert old_code != live_code

        listed = distctl("clean", str(inv), "--older-than", "1h", "--dry-run", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        for name in ("node1", "node2"):
            assert re.search(rf"^{name}: run {old} \(unchanged for 2h\), \d", listed.stdout, re.M), listed.stdout
            assert f"{name}: code/{old_code} (no remaining run uses it), " in listed.stdout
        assert live not in listed.stdout and live_code not in listed.stdout
        assert "(dry run: nothing removed)" in listed.stderr
        asked = distctl("clean", str(inv), "--older-than", "1h", cwd=tmp_path)  # no terminal to ask on
        assert asked.returncode == 2 and "add --yes" in asked.stderr, asked.stderr

        removed = distctl("clean", str(inv), "--older-than", "1h", "--yes", cwd=tmp_path)
        assert removed.returncode == 0, removed.stderr
        for name in ("node1", "node2"):
            h = cluster.host(name)
            left = h.run(f"ls {h.workdir}/runs {h.workdir}/code", check=True).stdout.split()
            assert old not in left and old_code not in left and f"{old_code}.complete" not in left
            assert live in left and live_code in left and f"{live_code}.complete" in left
        pids = run_pids(cluster, live)
        assert pids["node1"] and pids["node2"]  # the live run was never touched
    finally:
        distctl("stop", live, "--grace", "1", cwd=tmp_path)
