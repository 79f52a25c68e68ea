"""Checkpoints: the first rank of each host writes them atomically, rank 0 reads the newest and
broadcasts it.

Files in ``--checkpoint-dir``: ``ckpt-EEEEEE-SSSSSS.pt`` (E epochs done, S steps into the next
epoch; names sort in training order) and ``latest.pt``, a hard link to the newest, swapped in
with ``os.replace``.  A reader never sees a half-written file: each is written to a temporary
name, flushed to disk and renamed.  A write that fails (a full disk) removes its temporary file
and raises the OS's reason: torch itself reports a short write only as ``[enforce fail at
inline_container.cc:672] . unexpected pos 5504 vs 5398`` and leaves the partial file behind
(measured on a full 1 MB tmpfs).  The previous checkpoint and ``latest.pt`` stay as they were.
The state holds only tensors and plain Python values, so it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import glob
import os
import random
import re
import socket
from typing import Any

import numpy as np
import torch

from trainer.errors import CheckpointError

FORMAT = 1
LATEST = "latest.pt"
TEMPORARY = re.compile(r"(?:ckpt-\d+-\d+\.pt|\.latest\.pt)\.tmp\.(.+)\.(\d+)")  # _temporary's names


def checkpoint_name(epochs_done: int, step: int) -> str:
    return f"ckpt-{epochs_done:06d}-{step:06d}.pt"


def capture_rng() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), Python and numpy, in weights_only-loadable form."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": [version, list(state), gauss],
            # numpy's stub types get_state() as its dict form; the default (legacy=True) is this tuple
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)),  # type: ignore[attr-defined]
                      pos, has_gauss, cached]}


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def save_checkpoint(directory: str, state: dict[str, Any], keep: int) -> str:
    """Write ``state`` atomically, point latest.pt at it, keep the newest ``keep``; returns the path."""
    os.makedirs(directory, exist_ok=True)
    _remove_stale(directory)
    path = os.path.join(directory, checkpoint_name(state["epoch"], state["step"]))
    tmp = _temporary(path)
    _write(tmp, state)
    os.replace(tmp, path)
    link = _temporary(os.path.join(directory, f".{LATEST}"))
    try:
        os.link(path, link)
    except OSError:  # file systems without hard links: a second copy
        _write(link, state)
    os.replace(link, os.path.join(directory, LATEST))
    for old in sorted(glob.glob(os.path.join(directory, "ckpt-*.pt")))[:-keep]:
        try:
            os.remove(old)
        except FileNotFoundError:  # another writer of a shared folder removed it first
            pass
    return path


def _temporary(path: str) -> str:
    """``path.tmp.HOST.PID``: this writer's own name, even in a folder that hosts share (NFS)."""
    return f"{path}.tmp.{socket.gethostname()}.{os.getpid()}"


def _remove_stale(directory: str) -> None:
    """Temporary files left by a writer of this host that was killed mid-write (its process is
    gone): another host's, or a live writer's, are not ours to remove."""
    host = socket.gethostname()
    for name in os.listdir(directory):
        found = TEMPORARY.fullmatch(name)
        if found and found[1] == host and not _alive(int(found[2])):
            _remove(os.path.join(directory, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # not ours to signal, but there
        return True
    return True


def _write(target: str, state: dict[str, Any]) -> None:
    """torch.save into ``target``, on disk before it returns; on failure ``target`` is removed and
    the OS's error raised (torch wraps it: ``unexpected pos N vs M``, the OSError as its context)."""
    try:
        with open(target, "wb") as f:
            torch.save(dict(state, format=FORMAT), f)
            f.flush()
            os.fsync(f.fileno())  # a full disk or a lost NFS server may say so only here
    except BaseException as exc:
        _remove(target)
        reason = _os_error(exc)
        if reason is None:
            raise
        raise reason from None


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError in ``exc``'s chain, if any."""
    while exc is not None and not isinstance(exc, OSError):
        exc = exc.__cause__ or exc.__context__
    return exc


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def load_latest(directory: str) -> dict[str, Any] | None:
    """The newest checkpoint's state, or None when the folder holds none."""
    path = os.path.join(directory, LATEST)
    if not os.path.exists(path):
        found = sorted(glob.glob(os.path.join(directory, "ckpt-*.pt")))
        if not found:
            return None
        path = found[-1]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {state.get('format')}, expected {FORMAT}")
    return dict(state, path=path)
