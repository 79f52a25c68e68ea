"""The examples/ projects run as their READMEs say: under distctl on the SSH cluster and
under a plain torchrun, to the same parameters."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from e2e import digests, distctl, write_inventory

REPO = Path(__file__).resolve().parent.parent
TORCHRUN_DDP = REPO / "examples" / "torchrun-ddp"
FAST = ["--epochs", "1", "--samples", "2048"]  # the example's own options, made small


def example_command(folder: Path) -> list[str]:
    """job.command of the example's own inventory, as distctl splits it."""
    command = yaml.safe_load((folder / "inventory.yaml").read_text())["job"]["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def test_torchrun_example_trains_to_the_same_parameters_under_distctl_and_torchrun(cluster, real_trainer, tmp_path):
    data = tmp_path / "data"
    made = subprocess.run([sys.executable, str(TORCHRUN_DDP / "train.py"), "--write-data", str(data), *FAST[2:]],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], code=str(TORCHRUN_DDP),
                          command=example_command(TORCHRUN_DDP) + FAST, data=str(data), outputs=["model.pt"],
                          # torchrun's value for 2 ranks on one machine; the thread count changes
                          # the float rounding of a matmul, so the digests compare only with it
                          env={"OMP_NUM_THREADS": "1"})
    done = distctl("up", str(inv), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # rank 0 read the pushed copy of job.data, found through $DISTCTL_DATA
    source = re.search(r"^\[node1 r0\] data=(\S+)/dataset.pt samples=2048 world_size=2$", done.stdout, re.M)
    assert source and source[1].startswith(cluster.host("node1").workdir + "/data/"), done.stdout
    assert "[node1 r0] epoch=1 loss=" in done.stdout
    under_distctl = digests(done.stdout)
    assert sorted(under_distctl) == [0, 1] and len(set(under_distctl.values())) == 1

    # The same script, unchanged, under torchrun on one machine: the same parameters.
    work = tmp_path / "torchrun"
    work.mkdir()
    torchrun = Path(sys.executable).with_name("torchrun")
    plain = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", str(TORCHRUN_DDP / "train.py"),
                            *FAST, "--out", str(work / "model.pt")],
                           cwd=work, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert plain.returncode == 0, plain.stderr
    under_torchrun = {int(r): d for r, d in re.findall(r"^done rank=(\d+) param_sha256=(\w+)$", plain.stdout, re.M)}
    assert under_torchrun == under_distctl


def test_torchrun_example_inventory_loads_and_plans_as_shipped(tmp_path):
    """The example's own inventory, as a user runs it (`connection: local`), in a dry run."""
    done = subprocess.run([sys.executable, "-m", "orchestrator", "up", str(TORCHRUN_DDP / "inventory.yaml"),
                           "--dry-run"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NO_COLOR": "1", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert "2 rank(s)" in done.stdout
    assert f"{shlex.quote(sys.executable)} train.py --epochs 3" in done.stdout
