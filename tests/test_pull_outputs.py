"""`pull` of job.outputs from two real SSH hosts: what lands where, what never lands, re-pulls."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from orchestrator.ssh import remote
from orchestrator.inventory.model import Host, Ssh
from orchestrator.results.outputs import format_report, pull_outputs
from orchestrator.plan.state import HostState, RankState, RunState

RUN = "t-20260101-000000-pull"
BIG = bytes(range(256)) * 20480  # 5 MiB, the same recipe as on the host below
ODD = "odd name 'q' \"dq\" $x `y` ü.txt"
PATTERNS = ["*.pt", "*.jsonl", "*.log", "*.txt", "*.out", "etc/*", "missing/*"]


def put(host, path: str, text: str) -> None:
    done = host.run(f"mkdir -p \"$(dirname {shlex.quote(path)})\" && cat > {shlex.quote(path)}", input=text)
    assert done.returncode == 0, done.stderr


def sh(host, command: str) -> None:
    done = host.run(command)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def run(cluster):
    """A run state for node1 + node2 whose work folders hold outputs, as ranks would leave them."""
    ssh = Ssh(known_hosts=(str(cluster.known_hosts),))
    states, conns = [], {}
    for i, name in enumerate(("node1", "node2")):
        h = cluster.host(name)
        host = Host(name, h.address, user=cluster.user, port=h.port, identity_file=str(cluster.key_path),
                    python=cluster.python, workdir=h.workdir)
        states.append(HostState(host, f"{h.workdir}/runs/{RUN}", (RankState(i, 0),)))
        conns[name] = remote.connect(host, ssh)
    n1, n2 = cluster.host("node1"), cluster.host("node2")
    w1, w2 = f"{states[0].rundir}/work", f"{states[1].rundir}/work"
    sh(n1, f"rm -rf {w1}")  # a fresh tree for each test (the cluster lives for the session)
    sh(n2, f"rm -rf {w2}")
    put(n1, f"{w1}/model.pt", "weights from node1")
    put(n2, f"{w2}/model.pt", "weights from node2")
    put(n1, f"{w1}/metrics.jsonl", '{"epoch": 1, "host": 1}\n')
    put(n2, f"{w2}/metrics.jsonl", '{"epoch": 1, "host": 2}\n')
    put(n1, f"{w1}/rank0.log", "rank 0 log\n")
    put(n2, f"{w2}/rank1.log", "rank 1 log\n")
    put(n1, f"{w1}/{ODD}", "odd\n")
    put(n1, f"{w1}/new\nline.txt", "a newline in the name\n")
    sh(n1, f"ln -s /etc/passwd {w1}/passwd.txt")
    sh(n2, f"ln -s /etc {w2}/etc")
    sh(n1, f"{shlex.quote(cluster.python)} -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 20480)'"
           f" > {w1}/big.out")
    state = RunState(RUN, "inventory.yaml", ssh, 2, n1.address, 0, tuple(states))
    yield state, conns
    for conn in conns.values():
        conn.close()


def tree(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath, name)
            out[str(path.relative_to(root))] = path.read_bytes()
    return out


EXPECTED = {
    "node1/model.pt": b"weights from node1", "node2/model.pt": b"weights from node2",
    "node1/metrics.jsonl": b'{"epoch": 1, "host": 1}\n', "node2/metrics.jsonl": b'{"epoch": 1, "host": 2}\n',
    "rank0.log": b"rank 0 log\n", "rank1.log": b"rank 1 log\n", ODD: b"odd\n", "big.out": BIG,
}


def test_pull_outputs_from_two_hosts_writes_exactly_what_is_safe_and_then_nothing(run, tmp_path):
    state, conns = run
    dest = tmp_path / "runs"
    report = pull_outputs(state, conns, PATTERNS, dest)
    root = dest / RUN
    assert tree(tmp_path) == {f"runs/{RUN}/{k}": v for k, v in EXPECTED.items()}  # nothing else, anywhere
    assert report.written == sorted((k, len(v)) for k, v in EXPECTED.items())
    assert report.unchanged == [] and report.errors == []
    assert sorted(report.refused) == [("node1", "new\nline.txt", "control character"),
                                      ("node1", "passwd.txt", "symlink")]
    assert report.unmatched == ["etc/*", "missing/*"]
    assert format_report(report) == [
        f"outputs: wrote 8 files (5.2 MB) into {root}/",
        "  big.out (5.2 MB)", "  node1/metrics.jsonl (24 B)", "  node1/model.pt (18 B)",
        "  node2/metrics.jsonl (24 B)", "  node2/model.pt (18 B)",
        f"  {ODD} (4 B)", "  rank0.log (11 B)", "  rank1.log (11 B)",
        "  not pulled: node1: 'new\\nline.txt': control character",
        "  not pulled: node1: passwd.txt: symlink",
        "  no host has a file matching 'etc/*'", "  no host has a file matching 'missing/*'"]

    again = pull_outputs(state, conns, PATTERNS, dest)
    assert again.written == [] and again.unchanged == sorted(EXPECTED)
    assert format_report(again)[0] == f"outputs: wrote 0 files (0 B) into {root}/, 8 already there unchanged"
    assert tree(tmp_path) == {f"runs/{RUN}/{k}": v for k, v in EXPECTED.items()}


def test_a_changed_file_is_pulled_again_and_a_local_symlink_is_never_written_through(run, cluster, tmp_path):
    state, conns = run
    dest = tmp_path / "runs"
    pull_outputs(state, conns, PATTERNS, dest)
    w1 = f"{state.hosts[0].rundir}/work"
    put(cluster.host("node1"), f"{w1}/rank0.log", "rank 0 log, longer now\n")
    put(cluster.host("node1"), f"{w1}/model.pt", "new weights from node1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    local = dest / RUN / "node1"
    for child in local.iterdir():
        child.unlink()
    local.rmdir()
    local.symlink_to(elsewhere)
    report = pull_outputs(state, conns, PATTERNS, dest)
    assert report.written == [("rank0.log", 23)]
    assert (dest / RUN / "rank0.log").read_bytes() == b"rank 0 log, longer now\n"
    assert sorted((h, n) for h, n, _ in report.refused if n in ("model.pt", "metrics.jsonl")) == [
        ("node1", "metrics.jsonl"), ("node1", "model.pt")]
    assert list(elsewhere.iterdir()) == []
