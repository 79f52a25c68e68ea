"""trainer/checkpoint.py on a file system that refuses a write: the previous checkpoint stays whole
and loadable, latest.pt keeps pointing at it, no partial file is left, and the OS's reason comes out.
The refusal is a file size limit (RLIMIT_FSIZE: EFBIG, no root needed); the cluster test in
test_faults.py fills a real disk (ENOSPC)."""

from __future__ import annotations

import errno
import os
import resource
import signal
import socket
import subprocess
from contextlib import contextmanager

import pytest


@pytest.fixture
def checkpoint(torch):
    """trainer/checkpoint.py, which imports torch."""
    from trainer import checkpoint

    return checkpoint


def state(torch, epoch: int) -> dict:
    return {"epoch": epoch, "step": 0, "model": {"w": torch.full((64, 1024), float(epoch))},
            "optimizer": {}, "rng": {}, "seed": 0, "world_size": 1, "batch_size": 64,
            "dataset": "d", "fingerprint": "f", "partial": []}


@contextmanager
def file_size_limit(limit: int):
    """Writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored, as a rank would not die of it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_refused_write_keeps_the_previous_checkpoint_and_leaves_no_partial_file(checkpoint, torch, tmp_path):
    first = checkpoint.save_checkpoint(str(tmp_path), state(torch, 1), keep=3)
    with file_size_limit(64 << 10), pytest.raises(OSError) as refused:  # a checkpoint is 256 KB
        checkpoint.save_checkpoint(str(tmp_path), state(torch, 2), keep=3)
    assert refused.value.errno == errno.EFBIG  # the OS's reason, not torch's "unexpected pos"
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000001-000000.pt", "latest.pt"]
    assert os.path.samefile(tmp_path / "latest.pt", first)
    assert checkpoint.load_latest(str(tmp_path))["epoch"] == 1


def test_temporary_files_of_a_killed_writer_of_this_host_are_removed_by_the_next_save(checkpoint, torch,
                                                                                         tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    me = socket.gethostname()
    left = [f"ckpt-000003-000000.pt.tmp.{me}.{gone.pid}", f".latest.pt.tmp.{me}.{gone.pid}"]
    kept = [f"ckpt-000003-000000.pt.tmp.other-host.{gone.pid}",  # a folder shared with another host
            f"ckpt-000003-000000.pt.tmp.{me}.{os.getppid()}",  # a writer still at work
            "notes.tmp.txt"]
    for name in left + kept:
        (tmp_path / name).write_bytes(b"partial")
    checkpoint.save_checkpoint(str(tmp_path), state(torch, 4), keep=3)
    assert sorted(os.listdir(tmp_path)) == sorted(kept + ["ckpt-000004-000000.pt", "latest.pt"])
