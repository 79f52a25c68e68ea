"""`distctl logs --grep/--collapse`: the host-side filter (hostside/follow.py) on real files, the
pure collapser, and both on the cluster with --host/--rank/--tail."""

from __future__ import annotations

import subprocess
import sys

import pytest

from orchestrator import hostside
from orchestrator.run.collapse import Collapser

from e2e import distctl, write_inventory


def follow(cwd, *args) -> str:
    return subprocess.run([sys.executable, "-c", hostside.source("follow"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, check=True).stdout


def test_grep_on_the_host_sends_matching_lines_and_where_it_got_to(tmp_path):
    (tmp_path / "rank0.log").write_text("loss 1\nnoise\nnoise\nloss 2\nnoise\n")
    assert follow(tmp_path, "replay", -1, "--grep", "^loss", "0:0") == (
        "0 loss 1\nat 0 3\n0 loss 2\nat 0 5\nexit 0 - -\n")
    # a follower reopened after 3 lines skips them; --tail counts the log's lines, then filters
    assert follow(tmp_path, "replay", -1, "--grep", "loss", "0:3") == "0 loss 2\nat 0 5\nexit 0 - -\n"
    assert follow(tmp_path, "replay", 1, "--grep", "loss", "0:0") == "at 0 3\n0 loss 2\nat 0 5\nexit 0 - -\n"
    assert follow(tmp_path, "replay", 2, "--grep", "loss", "0:0") == (
        "at 0 0\n0 loss 1\nat 0 3\n0 loss 2\nat 0 5\nexit 0 - -\n")  # the last 2 matching lines


def test_collapse_groups_alike_lines_by_occurrence_and_keeps_log_order():
    c = Collapser({0, 1, 2, 3})
    for rank in (0, 1, 2, 3):
        c.add(rank, "epoch 1", 0.0)
        c.add(rank, "loss 0.31" if rank != 2 else "loss 0.40", 0.0)
        c.add(rank, "epoch 1", 0.0)  # the second time: its own group
    assert c.release(0.0, everything=True) == [
        "[r0-3] epoch 1", "[r0-1,3] loss 0.31", "[r2] loss 0.40", "[r0-3] epoch 1"]


def test_collapse_live_releases_a_group_when_every_rank_has_it_or_after_the_window():
    c = Collapser({0, 1}, window=1.0)
    c.add(0, "a", 10.0)
    assert c.release(10.5) == []
    c.add(1, "a", 10.6)
    c.add(0, "b", 10.6)
    assert c.release(10.7) == ["[r0-1] a"]
    assert c.release(11.7) == ["[r0] b"]
    c.add(1, "x", 12.0)
    c.ended(0)  # rank 0's log ended: nothing waits for it
    assert c.release(12.0) == ["[r1] x"]


PROG = """import os
r = int(os.environ["RANK"])
for step in range(3):
    print("step %d loss %s" % (step, "0.5" if r != 3 else "9.9"), flush=True)
    print("noise from rank %d" % r, flush=True)
print("the end", flush=True)
"""


@pytest.mark.cluster
def test_logs_grep_and_collapse_on_the_cluster(cluster, tmp_path):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "prog.py").write_text(PROG)
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], slots=2, code="project",
                          command="python prog.py", wait_for_rank0=False)
    assert distctl("up", str(inv), cwd=tmp_path).returncode == 0
    done = distctl("logs", "--grep", "^step 2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [
        "[node1 r0] step 2 loss 0.5", "[node1 r1] step 2 loss 0.5", "[node2 r2] step 2 loss 0.5",
        "[node2 r3] step 2 loss 9.9"]
    one = distctl("logs", "--grep", "loss", "--rank", "3", "--tail", "2", cwd=tmp_path)
    assert one.stdout.splitlines() == ["[node2 r3] step 1 loss 9.9", "[node2 r3] step 2 loss 9.9"]
    host = distctl("logs", "--grep", "end", "--host", "node2", cwd=tmp_path)
    assert sorted(host.stdout.splitlines()) == ["[node2 r2] the end", "[node2 r3] the end"]
    collapsed = distctl("logs", "--grep", "loss|end", "--collapse", cwd=tmp_path)
    assert collapsed.stdout.splitlines() == [
        "[r0-2] step 0 loss 0.5", "[r3] step 0 loss 9.9", "[r0-2] step 1 loss 0.5", "[r3] step 1 loss 9.9",
        "[r0-2] step 2 loss 0.5", "[r3] step 2 loss 9.9", "[r0-3] the end"]
    bad = distctl("logs", "--grep", "(", cwd=tmp_path)
    assert bad.returncode == 2 and "is not a valid Python regex" in bad.stderr and "Traceback" not in bad.stderr
    live = distctl("logs", "-f", "--collapse", "--grep", "end", cwd=tmp_path)
    assert live.stdout.splitlines() == ["[r0-3] the end"]
