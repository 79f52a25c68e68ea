"""A user program that prints as fast as it can: every line reaches the workstation once, in
order, whole; and `up` ends soon after the ranks do (a hang guard, not a timing test)."""

from __future__ import annotations

import re
import time
from collections import defaultdict

import pytest

from e2e import distctl, write_inventory

pytestmark = pytest.mark.cluster

LINES = 100_000

# Even ranks print line by line (one write each, PYTHONUNBUFFERED); odd ranks write blocks of
# 4093 bytes, so lines (and the two-byte ü) are cut across writes and must be joined again.
PROGRAM = '''
import os, sys, time
rank, n = int(os.environ["RANK"]), int(sys.argv[1])
lines = ["r%d n%06d %s ü" % (rank, i, "x" * (i % 61)) for i in range(n)]
if rank % 2 == 0:
    for line in lines:
        print(line)
else:
    data = ("\\n".join(lines) + "\\n").encode()
    for at in range(0, len(data), 4093):
        sys.stdout.buffer.write(data[at:at + 4093]); sys.stdout.buffer.flush()
print("END %.3f" % time.time(), flush=True)
'''


def expected(rank: int) -> list[str]:
    return [f"r{rank} n{i:06d} {'x' * (i % 61)} ü" for i in range(LINES)]


def test_fast_printing_ranks_reach_the_workstation_line_for_line_and_up_ends_with_them(cluster, tmp_path):
    code = tmp_path / "project"
    code.mkdir()
    (code / "spew.py").write_text(PROGRAM)
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], slots=2, code="project",
                          command=["python", "spew.py", str(LINES)], wait_for_rank0=False)
    done = distctl("up", str(inv), cwd=tmp_path, timeout=600)
    exited = time.time()
    assert done.returncode == 0, done.stderr[-3000:]

    seen: dict[tuple[str, int], list[str]] = defaultdict(list)
    for line in done.stdout.split("\n")[:-1]:
        m = re.match(r"\[(node\d) r(\d)\] (.*)\Z", line)
        assert m, f"a line without its prefix (cut or merged): {line[:200]!r}"
        seen[(m[1], int(m[2]))].append(m[3])
    assert sorted(seen) == [("node1", 0), ("node1", 1), ("node2", 2), ("node2", 3)]
    ends = []
    for (host, rank), lines in sorted(seen.items()):
        assert lines[-1].startswith("END "), (host, rank, lines[-1][:200])
        ends.append(float(lines.pop().split()[1]))
        want = expected(rank)
        if lines != want:  # name the first difference, not a 100,000-line diff
            first = next((i for i, (a, b) in enumerate(zip(lines, want)) if a != b), min(len(lines), len(want)))
            pytest.fail(f"rank {rank}: {len(lines)} lines, {len(want)} expected; first difference at "
                        f"line {first}: got {lines[first:first + 2]!r}, want {want[first:first + 2]!r}")
    print(f"{4 * LINES} lines, {len(done.stdout) / 1e6:.1f} MB; up returned {exited - max(ends):.2f} s "
          "after the last rank ended")  # shown with pytest -s
    # Hosts are namespaces of this machine: one clock. Generous: only a hang would fail it.
    assert exited - max(ends) < 15, f"up returned {exited - max(ends):.1f} s after the last rank ended"
