"""Generated handwritten-looking digits, written in MNIST's own on-disk layout.

Used by ``--dataset generated`` and by ``--fallback generated`` when MNIST can neither be read
nor downloaded.  Each digit is a few pen strokes (polylines and arcs in a unit box) that are
jittered point by point, bent, scaled, sheared, rotated, shifted and drawn with a random pen
width at 3x resolution, then box-filtered down to 28x28 (anti-aliased like MNIST's scans), dimmed
and noised.  Everything is drawn from one seeded numpy generator, so the files are
byte-identical for the same seed and sizes.

The files are the uncompressed IDX files that ``torchvision.datasets.MNIST`` reads
(``<root>/MNIST/raw/train-images-idx3-ubyte`` ...), so the trainer's one data path serves both.
Needs numpy and Pillow only (no torch), so tests can call it cheaply.

Example::

    write_generated_mnist("data/generated/v1-seed0-12000-2000", seed=0, n_train=12000, n_test=2000)
"""

from __future__ import annotations

import os
import struct

import numpy as np
from PIL import Image, ImageDraw

SIZE = 28
SCALE = 3  # drawing resolution multiplier before the box filter
VERSION = 2  # bump when the drawing changes, so cached sets are not reused across versions


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, n: int = 14) -> np.ndarray:
    """Points on an elliptic arc; angles in degrees, counter-clockwise, y pointing down."""
    t = np.radians(np.linspace(start, end, n))
    return np.stack([cx + rx * np.cos(t), cy - ry * np.sin(t)], axis=1)


def _pts(*points: tuple[float, float]) -> np.ndarray:
    return np.array(points, dtype=float)


def _cat(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate(parts)


# Digit -> variants -> strokes (arrays of (x, y) in a unit box, y down).
GLYPHS = {
    0: [[_arc(0.5, 0.5, 0.3, 0.45, 95, 460)],
        [_arc(0.5, 0.5, 0.22, 0.46, 80, 445)]],
    1: [[_pts((0.5, 0.05), (0.5, 0.95))],
        [_pts((0.3, 0.25), (0.55, 0.05), (0.55, 0.95))],
        [_pts((0.3, 0.25), (0.55, 0.05), (0.55, 0.95)), _pts((0.3, 0.95), (0.8, 0.95))]],
    2: [[_cat(_arc(0.5, 0.3, 0.3, 0.25, 160, -40), _pts((0.15, 0.95), (0.88, 0.95)))],
        [_cat(_arc(0.5, 0.28, 0.3, 0.23, 170, -20), _pts((0.18, 0.92), (0.9, 0.88)))]],
    3: [[_cat(_arc(0.5, 0.28, 0.28, 0.22, 150, -90), _arc(0.5, 0.72, 0.3, 0.24, 90, -150))],
        [_cat(_pts((0.2, 0.05), (0.8, 0.05), (0.45, 0.42)), _arc(0.48, 0.7, 0.3, 0.26, 100, -150))]],
    4: [[_pts((0.62, 0.95), (0.62, 0.05), (0.12, 0.65), (0.88, 0.65))],
        [_pts((0.22, 0.05), (0.17, 0.58), (0.88, 0.58)), _pts((0.66, 0.25), (0.66, 0.95))]],
    5: [[_pts((0.3, 0.05), (0.82, 0.05)),
         _cat(_pts((0.3, 0.05), (0.26, 0.45)), _arc(0.48, 0.68, 0.3, 0.27, 130, -150))],
        [_cat(_pts((0.82, 0.05), (0.3, 0.05), (0.26, 0.45)), _arc(0.48, 0.68, 0.3, 0.27, 130, -150))]],
    6: [[_cat(_arc(0.58, 0.45, 0.35, 0.4, 70, 200), _arc(0.5, 0.7, 0.27, 0.25, 180, -180))],
        [_cat(_pts((0.7, 0.05)), _arc(0.5, 0.7, 0.28, 0.25, 165, -190))]],
    7: [[_pts((0.15, 0.05), (0.85, 0.05), (0.4, 0.95))],
        [_pts((0.15, 0.05), (0.85, 0.05), (0.45, 0.95)), _pts((0.38, 0.5), (0.8, 0.5))],
        [_pts((0.15, 0.2), (0.15, 0.05), (0.85, 0.05), (0.5, 0.95))]],
    8: [[_arc(0.5, 0.27, 0.22, 0.21, -90, 270), _arc(0.5, 0.71, 0.27, 0.24, 90, 450)],
        [_cat(_arc(0.5, 0.27, 0.22, 0.21, -90, 180), _arc(0.5, 0.71, 0.27, 0.24, 90, -270))]],
    9: [[_arc(0.5, 0.3, 0.25, 0.23, 0, 360), _pts((0.75, 0.3), (0.7, 0.95))],
        [_cat(_arc(0.5, 0.3, 0.25, 0.23, 10, 370), _arc(0.4, 0.3, 0.35, 0.65, 0, -80))]],
}


def _place(stroke: np.ndarray, rng: np.random.Generator, shape: np.ndarray) -> np.ndarray:
    """Jitter and bend one stroke, then map it to pixel coordinates with the glyph's shape."""
    height, aspect, shear, angle, shift_x, shift_y, bend = shape
    p = stroke + rng.normal(0.0, 0.02, stroke.shape)
    p[:, 0] += bend * (p[:, 1] - 0.5) ** 2
    xy = (p - 0.5) * (height * aspect, height)
    xy[:, 0] -= shear * xy[:, 1]
    c, s = np.cos(angle), np.sin(angle)
    xy = xy @ np.array([[c, s], [-s, c]]) + (SIZE / 2 + shift_x, SIZE / 2 + shift_y)
    return xy * SCALE


def _random_shapes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Per digit: height and aspect (px), shear, rotation, shift x/y (px), bend."""
    return np.column_stack([rng.uniform(17.0, 21.0, n), rng.uniform(0.75, 1.1, n), rng.uniform(-0.3, 0.3, n),
                            np.radians(rng.uniform(-11.0, 11.0, n)), rng.uniform(-1.2, 1.2, (n, 2)),
                            rng.uniform(-0.3, 0.3, n)])


def _draw(draw: ImageDraw.ImageDraw, xy: np.ndarray, width: int) -> None:
    """A pen stroke: straight segments with a round dot at every vertex (round joins and caps;
    cheaper than PIL's joint="curve", which computes each join in Python)."""
    draw.line(xy.ravel().tolist(), fill=255, width=width)
    r = width / 2.0
    for x, y in xy.tolist():
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)


def draw_ink(label: int, variant: int, shape: np.ndarray, width: int, rng: np.random.Generator) -> np.ndarray:
    """The anti-aliased pen strokes of one digit: uint8 [28,28], before dimming and noise."""
    variants = GLYPHS[label]
    canvas = Image.new("L", (SIZE * SCALE, SIZE * SCALE))
    draw = ImageDraw.Draw(canvas)
    for stroke in variants[variant % len(variants)]:
        _draw(draw, _place(stroke, rng, shape), width)
    if rng.random() < 0.2:  # a stray pen mark
        start = rng.uniform(2, SIZE - 2, 2)
        _draw(draw, np.stack([start, start + rng.normal(0, 4, 2)]) * SCALE, max(2, width // 2))
    # Pillow copies its Resampling members into the module at run time, unseen by type checkers
    return np.asarray(canvas.resize((SIZE, SIZE), Image.BOX))  # type: ignore[attr-defined]


def generate_digits(n: int, seed: int, split: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` balanced, shuffled (images uint8 [n,28,28], labels uint8 [n]) for split 0 or 1."""
    rng = np.random.default_rng([seed, split, VERSION])
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    variants = rng.integers(0, 6, n)  # 6: uniform over 2 or 3 variants alike
    shapes = _random_shapes(rng, n)
    widths = np.rint(rng.uniform(1.5, 3.6, n) * SCALE).astype(int)
    gains = rng.uniform(0.6, 1.0, (n, 1, 1)).astype(np.float32)
    sigmas = rng.uniform(0.0, 25.0, (n, 1, 1)).astype(np.float32)
    ink = np.stack([draw_ink(int(label), int(variant), shape, int(width), rng)
                    for label, variant, shape, width in zip(labels, variants, shapes, widths)])
    noisy = ink * gains + rng.standard_normal(ink.shape, dtype=np.float32) * sigmas
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), labels


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian dims, raw data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_generated_mnist(root: str, seed: int, n_train: int, n_test: int) -> str:
    """Write the four MNIST raw files under ``root/MNIST/raw``; returns that folder."""
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for prefix, n, split in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = generate_digits(n, seed, split)
        # Each file appears whole (rename); the set counts as complete once all four exist,
        # and the test labels come last, so a killed writer never leaves a "complete" set.
        _write_atomic(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), idx_bytes(images))
        _write_atomic(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), idx_bytes(labels))
    return raw
