"""The README's first command on the shipped inventory, and the torch-free workstation install."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import cannot_run
from e2e import digests
from trainer.log import parse_line

REPO = Path(__file__).resolve().parent.parent


def test_shipped_inventory_trains_offline_and_says_it_fell_back(real_trainer, tmp_path):
    """No network at all (a namespace with only loopback): MNIST can't be downloaded, the
    inventory's `fallback: generated` applies, and `up` says so in one line."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        cannot_run("needs root and unshare for a network namespace with only loopback")
    shutil.copy(REPO / "inventory.yaml", tmp_path / "inventory.yaml")
    env = {**os.environ, "HOME": str(tmp_path), "NO_COLOR": "1"}
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
         sys.executable, "-m", "orchestrator", "up", "inventory.yaml"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    # the trainer's own notice, once per host, says why in one short line (not urllib's error per mirror)
    [fallback] = [line for line in done.stdout.splitlines() if line.startswith("[local r0] fallback ")]
    reason = parse_line(fallback.partition("] ")[2])[1]["reason"]
    assert re.fullmatch(r"could not download MNIST into \S+: \[Errno -?\d+\] [^;<>]+", reason), reason
    notices = [line for line in done.stderr.splitlines() if "generated digits" in line]
    assert notices[0] == ("distctl: local: MNIST could not be had: training on generated digits, not MNIST "
                          "(job.fallback: generated; set job.data to push your copy of MNIST)")
    run_id = re.search(r"run (\S+) started", done.stderr)[1]
    assert notices[1:] == [f"distctl: run {run_id} finished: 2 rank(s) exited 0 (on generated digits, not MNIST: "
                           "MNIST could not be had)"]
    found = digests(done.stdout)
    assert sorted(found) == [0, 1] and len(set(found.values())) == 1
    accuracy = [float(a) for a in re.findall(r"\[local r0\] epoch=\d+ .*test_accuracy=([0-9.]+)", done.stdout)]
    assert len(accuracy) == 3 and accuracy[-1] > 0.9 and accuracy[0] < 1.0


def test_workstation_side_runs_without_torch(tmp_path):
    """Every command's --help, and a dry run, with torch made unimportable."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    for name in ("torch", "torchvision"):
        (blocker / f"{name}.py").write_text(f"raise ImportError('{name} must not be imported here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO)])}  # this checkout, torch blocked
    for command in ([], ["up"], ["check"], ["logs"], ["status"], ["stop"], ["pull"], ["init"], ["exec"], ["runs"],
                    ["web"]):
        done = subprocess.run([sys.executable, "-m", "orchestrator", *command, "--help"], env=env,
                              capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0 and "Example:" in done.stdout, (command, done.stderr)
    dry = subprocess.run([sys.executable, "-m", "orchestrator", "up", str(REPO / "inventory.yaml"), "--dry-run"],
                         env=env, capture_output=True, text=True, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr


def test_orchestrator_never_imports_the_trainer_or_torch():
    for path in (REPO / "orchestrator").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(torch|torchvision|trainer)\b", text, re.M), path
    for path in (REPO / "trainer").glob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+orchestrator\b", path.read_text(), re.M), path
