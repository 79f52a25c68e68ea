"""The quickstart on a workstation that lacks the Linux-only tools, as a Mac does.

A real Mac is not available here; the proxy is a PATH holding only the commands a Mac has
too, so neither `setsid` nor `ip` (nor GNU-only tools) can be reached. Measured: with
the seed's `setsid sh -c ...` launch this failed with "rank 0 did not open 127.0.0.1:<port>
(exited)", the real cause (`setsid: not found`) hidden in the rank's log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from e2e import digests, wait_for
from support.net import ephemeral_port

REPO = Path(__file__).resolve().parent.parent
# Everything a `connection: local` run calls by name, found by running it with less:
# prepare (mkdir, chmod, cat), push (tar, touch, rm, mv), the work copy (cp), the ranks'
# `env RANK=...` prefix, log line counts (wc); stop's grace loop sleeps.
MAC_TOOLS = ("sh", "cat", "chmod", "cp", "env", "mkdir", "mv", "rm", "tar", "touch", "wc", "sleep")


@pytest.fixture
def mac_like(tmp_path):
    """An environment whose PATH has only MAC_TOOLS (symlinks), and a private HOME."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    missing = [t for t in MAC_TOOLS if not shutil.which(t)]
    assert not missing, f"this machine lacks {missing}"
    for tool in MAC_TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": str(bin_dir), "HOME": str(home), "NO_COLOR": "1", "LANG": "C.UTF-8",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for tool in ("setsid", "ip", "stat", "grep", "sed"):
        assert subprocess.run(["sh", "-c", f"command -v {tool}"], env=env).returncode != 0, tool
    return env


def distctl(env: dict, cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_quickstart_trains_to_the_end_without_setsid_or_ip(mac_like, tmp_path):
    """The shipped inventory (generated digits and one epoch, to keep it short; a free port,
    because other runs may share this machine's loopback)."""
    inv = yaml.safe_load((REPO / "inventory.yaml").read_text())
    inv["job"].update(port=ephemeral_port(), dataset="generated", train={**inv["job"]["train"], "epochs": 1})
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump(inv))

    done = distctl(mac_like, tmp_path, "up", "inventory.yaml")
    assert done.returncode == 0, done.stderr
    found = digests(done.stdout)
    assert sorted(found) == [0, 1] and len(set(found.values())) == 1
    assert done.stderr.splitlines()[-1].endswith("finished: 2 rank(s) exited 0")

    status = distctl(mac_like, tmp_path, "status", timeout=120)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[1:] == ["  [local r0] exited 0, epoch 1", "  [local r1] exited 0, epoch 1"]
    logs = distctl(mac_like, tmp_path, "logs", "--tail", "1", timeout=120)
    assert logs.returncode == 0, logs.stderr
    assert sorted(logs.stdout.splitlines()) == sorted(ln for ln in done.stdout.splitlines() if "] done rank=" in ln)


SLEEPER = """
import os, socket, time
if os.environ["RANK"] == "0":
    server = socket.create_server((os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])))
print("up", flush=True)
time.sleep(300)
"""


def test_stop_ends_a_detached_run_by_its_process_groups(mac_like, tmp_path):
    """A program of the user's (no torch needed) that runs until stopped; rank 0 opens the
    rendezvous port as a torch.distributed program would."""
    inv = {"hosts": [{"name": "local", "connection": "local", "slots": 2}],
           "job": {"name": "sleepy", "port": ephemeral_port(), "code": "code", "command": "python sleeper.py"}}
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "sleeper.py").write_text(SLEEPER)
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump(inv))

    started = distctl(mac_like, tmp_path, "up", "--detach", "inventory.yaml", timeout=120)
    assert started.returncode == 0, started.stderr
    rundir = next((Path(mac_like["HOME"]) / ".distctl" / "runs").iterdir())
    pgids = [int((rundir / f"rank{r}.pid").read_text()) for r in (0, 1)]
    wait_for(lambda: all((rundir / f"rank{r}.log").exists() and (rundir / f"rank{r}.log").read_text()
                         for r in (0, 1)), 60, "both ranks to start")
    assert [os.getsid(g) for g in pgids] == pgids  # each rank leads its own session

    stopped = distctl(mac_like, tmp_path, "stop", timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    for g in pgids:  # killed and reaped (pid 1 reaps orphans within seconds here)
        _wait_gone(g)


def _wait_gone(pgid: int) -> None:
    def gone() -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, 30, f"process group {pgid} to be gone")


@pytest.mark.usefixtures("torch")  # trainer.run imports it
def test_the_trainer_counts_its_cores_without_sched_getaffinity(monkeypatch):
    from trainer.run import usable_cores

    assert usable_cores() == len(os.sched_getaffinity(0))
    monkeypatch.delattr(os, "sched_getaffinity")  # as on macOS
    assert usable_cores() == os.cpu_count()
