"""Progress lines a rank prints, as numbers for the charts (pure: a line in, a reading out).

Two shapes are read:
- `distctl: step=N [total=N] [KEY=NUMBER]...`: the progress format any program may print
  (issue 21); every numeric KEY becomes a curve over N;
- the bundled trainer's epoch line, `epoch=E rank=R loss=X samples_per_s=Y [test_accuracy=Z]`
  (trainer/log.py): its numbers become curves over the epoch.
A `--- distctl: ... ---` line (a restart or a resume, written into every rank log) is a mark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

PREFIX = "distctl: "
MARK = "--- distctl: "
NOT_CURVES = {"step", "total", "rank", "epoch"}  # what a line says about position, not a measurement


@dataclass(frozen=True)
class Reading:
    step: int
    values: dict[str, float] = field(default_factory=dict)
    total: int | None = None


@dataclass(frozen=True)
class Mark:
    text: str  # e.g. `restart 1/3 after node2 r1 exited 137`


def parse_progress(line: str) -> Reading | Mark | None:
    """The reading a line carries, a mark, or None for any other line."""
    if line.startswith(MARK):
        return Mark(line[len(MARK):].rstrip(" -"))
    if line.startswith(PREFIX + "step="):
        pairs = _pairs(line[len(PREFIX):])
        step, total = _integer(pairs.get("step")), _integer(pairs.get("total"))
        return None if step is None else Reading(step, _numbers(pairs), total)
    if line.startswith("epoch="):
        pairs = _pairs(line)
        epoch = _integer(pairs.get("epoch"))
        return None if epoch is None else Reading(epoch, _numbers(pairs))
    return None


def _pairs(text: str) -> dict[str, str]:
    """`k=v` words; quoted values (logfmt) are never numbers, so a plain split is enough."""
    return dict(word.split("=", 1) for word in text.split() if "=" in word)


def _integer(text: str | None) -> int | None:
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


def _numbers(pairs: dict[str, str]) -> dict[str, float]:
    out = {}
    for key, text in pairs.items():
        if key in NOT_CURVES:
            continue
        try:
            value = float(text)
        except ValueError:
            continue
        if math.isfinite(value):  # JSON carries no NaN; a NaN loss shows as the curve stopping
            out[key] = value
    return out
