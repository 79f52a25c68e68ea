"""What a pulled checkpoint of the bundled trainer is, read on the workstation without torch.

`torch.save` writes a zip whose `<name>/data.pkl` pickles the state dict; tensors are only
references (persistent ids) to other zip members. The trainer's plain values (`epoch`: epochs
done, `step`: steps into the next epoch, non-zero only for a checkpoint written when a run was
stopped mid-epoch) sit in that pickle as ints. An unpickler whose every class is an inert stub
reads them: nothing is imported and no code from the file runs, so a hostile file can at
worst make us print "unknown". No sidecar file is needed, and the label always describes the
very bytes that were pulled.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

MAX_PICKLE_BYTES = 64 * 1024 * 1024  # the trainer's is a few kB: tensors live outside it


class _Inert:
    """Stands for any class or function the pickle names; accepts and ignores everything."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setstate__(self, state):
        pass


class _Dict(dict):
    """An OrderedDict (state dicts are): a mapping still; its attributes (`_metadata`) dropped."""

    def __setstate__(self, state):
        pass


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return _Dict
        return _Inert

    def persistent_load(self, pid):
        return _Inert()


def read_state(path: Path) -> dict | None:
    """The checkpoint's top-level dict with its plain values, or None if it is not one."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(names) != 1 or z.getinfo(names[0]).file_size > MAX_PICKLE_BYTES:
                return None
            data = z.read(names[0])
        state = _Unpickler(io.BytesIO(data)).load()
    except Exception:  # not a zip, a broken pickle, anything: "unknown", never a crash
        return None
    return state if isinstance(state, dict) else None


def describe_checkpoint(path: Path) -> str | None:
    """`epoch 3 (end of epoch)`, `epoch 4 step 120 (mid-epoch checkpoint of a stopped run)`,
    or None when the file is not a checkpoint of the bundled trainer.

    The epoch is 1-based as in the trainer's log lines: a mid-epoch checkpoint with 3 epochs
    done was written in epoch 4, as the trainer's `stopped ... epoch=4 step=120` line says.
    """
    state = read_state(path)
    if state is None:
        return None
    epoch, step = state.get("epoch"), state.get("step")
    if type(epoch) is not int or type(step) is not int or epoch < 0 or step < 0:
        return None
    if step == 0:
        return f"epoch {epoch} (end of epoch)"
    return f"epoch {epoch + 1} step {step} (mid-epoch checkpoint of a stopped run)"
