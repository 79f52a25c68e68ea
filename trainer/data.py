"""The data path: MNIST (or generated digits) read by torchvision, decoded once into tensors.

One process per host prepares the files: every rank that may write (``--download``, generated
digits) takes an fcntl lock in the data folder (it works before and without the process
group), so the first one there, normally local rank 0, downloads or generates while the others
wait, then read what it wrote.  The decoded images are normalised
like the seed's ``ToTensor() + Normalize((0.1307,), (0.3081,))`` (bit for bit) and kept on the
training device; the loop only indexes them, no per-sample PIL transforms and no DataLoader.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import socket
from typing import TYPE_CHECKING

from trainer.errors import DataError
from trainer.generated import VERSION, write_generated_mnist

if TYPE_CHECKING:
    from collections.abc import Iterator

    import torch

MEAN, STD = 0.1307, 0.3081
LOCK_NAME = ".distctl-data.lock"
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclasses.dataclass(frozen=True)
class RawData:
    """uint8 images [N,28,28] and int64 labels [N] of both splits, as torchvision decodes them."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    def fingerprint(self) -> str:
        """Short digest of all four tensors: ranks compare it to catch different copies."""
        digest = hashlib.sha256()
        for t in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            digest.update(memoryview(t.contiguous().numpy()).cast("B"))
        return digest.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class DeviceData:
    """Normalised float images [N,784] and labels on the training device."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


@contextlib.contextmanager
def data_lock(folder: str) -> Iterator[None]:
    """Exclusive lock on ``folder/.distctl-data.lock``; released when the holder exits or dies."""
    try:
        os.makedirs(folder, exist_ok=True)
        handle = open(os.path.join(folder, LOCK_NAME), "a+")  # noqa: SIM115 - the `with` below closes it
    except OSError as exc:
        raise DataError(f"cannot use data folder {folder}: {exc.strerror or exc}") from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _condense(exc: BaseException, limit: int = 160) -> str:
    """The last cause of an error, in one short line: the innermost exception of its chain, and
    of its message the last line. torchvision's download error lists every mirror it tried with
    urllib's error for each (``<urlopen error [Errno -3] Temporary failure ...>``); the last
    one says why, unwrapped."""
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]  # the loop's condition: one is set
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    if text.startswith("<urlopen error ") and text.endswith(">"):
        text = text[len("<urlopen error "):-1]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _read(root: str, name: str) -> RawData:
    from torchvision import datasets

    train = datasets.MNIST(root, train=True)
    test = datasets.MNIST(root, train=False)
    return RawData(name, train.data, train.targets, test.data, test.targets)


def _missing_message(root: str) -> str:
    raw = os.path.join(root, "MNIST", "raw")
    return (f"MNIST not found in {raw} (needs {', '.join(RAW_FILES)}); pass --download to fetch "
            "it, push a copy to the hosts with distctl's job.data, or use --fallback generated")


def _download(root: str, timeout_s: float) -> None:
    from torchvision import datasets

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(min(timeout_s, 60.0))  # torchvision's urlopen has none
    try:
        datasets.MNIST(root, train=True, download=True)  # no network when the files exist
    except Exception as exc:  # URLError, HTTP errors, checksum, disk full ...
        raise DataError(f"could not download MNIST into {root}: {_condense(exc)}") from exc
    finally:
        socket.setdefaulttimeout(previous)


def read_mnist(root: str, download: bool, timeout_s: float) -> RawData:
    """MNIST from ``root/MNIST/raw``, downloading first (under the lock) when asked and missing.

    Without --download nothing on this host writes MNIST files, so no lock is taken and a
    read-only data folder works.
    """
    with data_lock(root) if download else contextlib.nullcontext():
        if download:
            _download(root, timeout_s)
        if not all(os.path.exists(os.path.join(root, "MNIST", "raw", f)) for f in RAW_FILES):
            raise DataError(_missing_message(root))
        try:
            return _read(root, "mnist")
        except Exception as exc:  # truncated or foreign files
            raise DataError(f"could not read MNIST in {root}/MNIST/raw: {_condense(exc)}") from exc


def generated_root(data_dir: str, seed: int, n_train: int, n_test: int) -> str:
    return os.path.join(data_dir, "generated", f"v{VERSION}-seed{seed}-{n_train}-{n_test}")


def read_generated(data_dir: str, seed: int, n_train: int, n_test: int) -> RawData:
    """The generated set, written once per host (under the data folder's lock) and then read."""
    root = generated_root(data_dir, seed, n_train, n_test)
    with data_lock(data_dir):
        try:
            if not all(os.path.exists(os.path.join(root, "MNIST", "raw", f)) for f in RAW_FILES):
                write_generated_mnist(root, seed, n_train, n_test)
            return _read(root, "generated")
        except OSError as exc:
            raise DataError(f"could not write generated digits to {root}: {_condense(exc)}") from exc


def to_device(raw: RawData, device: torch.device) -> DeviceData:
    """Normalise once, as ToTensor()+Normalize would per sample, on ``device``."""
    def images(t: torch.Tensor) -> torch.Tensor:
        x = t.to(device).float().div_(255).sub_(MEAN).div_(STD)
        return x.reshape(len(t), -1)

    return DeviceData(raw.name, images(raw.train_images), raw.train_labels.to(device),
                      images(raw.test_images), raw.test_labels.to(device))
