"""Small MNIST-format data for tests: uncompressed IDX files that torchvision's MNIST reads.

Written independently of ``trainer.generated`` (numpy only), so the trainer's reader is checked
against a second writer.  The images are class-dependent blobs: each digit class has its own
spot on a 3x4 grid, jittered and noised, so the seed's MLP learns them in a few small epochs.

Example::

    write_blob_mnist(tmp_path, n_train=2048, n_test=512)
    torchvision.datasets.MNIST(tmp_path, train=True)   # reads tmp_path/MNIST/raw/*-ubyte
"""

import os
import struct

import numpy as np

CENTERS = [(5 + 6 * (c % 4), 6 + 8 * (c // 4)) for c in range(10)]  # (x, y) per class


def idx_bytes(array):
    """IDX: two zero bytes, type 0x08 (uint8), ndim, big-endian uint32 dims, then the data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist_raw(root, train_images, train_labels, test_images, test_labels):
    """The four files torchvision expects under ``root/MNIST/raw``; returns that folder."""
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for name, array in (("train-images-idx3-ubyte", train_images), ("train-labels-idx1-ubyte", train_labels),
                        ("t10k-images-idx3-ubyte", test_images), ("t10k-labels-idx1-ubyte", test_labels)):
        with open(os.path.join(raw, name), "wb") as f:
            f.write(idx_bytes(array))
    return raw


def blob_digits(n, seed):
    """(images uint8 [n,28,28], labels uint8 [n]): a noisy Gaussian spot at the class's place."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    centers = np.array(CENTERS, dtype=float)[labels] + rng.uniform(-2.0, 2.0, (n, 2))
    yy, xx = np.mgrid[0:28, 0:28]
    d2 = (xx[None] - centers[:, 0, None, None]) ** 2 + (yy[None] - centers[:, 1, None, None]) ** 2
    images = 255.0 * np.exp(-d2 / (2 * 2.5 ** 2)) + rng.normal(0.0, 25.0, (n, 28, 28))
    return np.clip(images, 0, 255).astype(np.uint8), labels


def write_blob_mnist(root, n_train=2048, n_test=512, seed=0):
    """Blob digits in MNIST's layout under ``root``; returns the raw folder."""
    train = blob_digits(n_train, seed)
    test = blob_digits(n_test, seed + 1)
    return write_mnist_raw(root, *train, *test)
