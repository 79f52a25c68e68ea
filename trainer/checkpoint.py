"""Checkpoints: rank 0 writes them atomically, rank 0 reads the newest and broadcasts it.

Files in ``--checkpoint-dir``: ``ckpt-EEEEEE-SSSSSS.pt`` (E epochs done, S steps into the next
epoch; names sort in training order) and ``latest.pt``, a hard link to the newest, swapped in
with ``os.replace``.  A reader never sees a half-written file: each is written to a temporary
name and renamed.  The state holds only tensors and plain Python values, so it loads with
``torch.load(weights_only=True)``.
"""

import glob
import os
import random

import numpy as np
import torch

from trainer.errors import CheckpointError

FORMAT = 1
LATEST = "latest.pt"


def checkpoint_name(epochs_done, step):
    return f"ckpt-{epochs_done:06d}-{step:06d}.pt"


def capture_rng():
    """RNG states of torch (CPU and CUDA), Python and numpy, in weights_only-loadable form."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": [version, list(state), gauss],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}


def restore_rng(rng):
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def save_checkpoint(directory, state, keep):
    """Write ``state`` atomically, point latest.pt at it, keep the newest ``keep``; returns the path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, checkpoint_name(state["epoch"], state["step"]))
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save(dict(state, format=FORMAT), tmp)
    os.replace(tmp, path)
    link = os.path.join(directory, f".{LATEST}.tmp.{os.getpid()}")
    try:
        os.link(path, link)
    except OSError:  # file systems without hard links: a second copy
        torch.save(dict(state, format=FORMAT), link)
    os.replace(link, os.path.join(directory, LATEST))
    for old in sorted(glob.glob(os.path.join(directory, "ckpt-*.pt")))[:-keep]:
        try:
            os.remove(old)
        except FileNotFoundError:  # another writer of a shared folder removed it first
            pass
    return path


def load_latest(directory):
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
