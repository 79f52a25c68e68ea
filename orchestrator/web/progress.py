"""Progress lines a rank prints, as numbers for the charts (pure: a line in, a reading out).

The progress lines themselves are read by the parser the rest of distctl uses
(hostside/progress.py's `parse`, which `distctl status` and each rank's tracker run too):
- `distctl: step=N [total=N] [KEY=NUMBER]...`: the progress format any program may print
  (issue 21); every numeric KEY becomes a curve over N;
- a tqdm bar (`120/1000 [00:37<04:35, 3.20it/s]`): a step and a total, no curve.
What only the view reads is here:
- the bundled trainer's epoch line, `epoch=E rank=R loss=X samples_per_s=Y [test_accuracy=Z]`
  (trainer/log.py): its numbers become curves over the epoch;
- a `--- distctl: ... ---` line (a restart or a resume, written into every rank log): a mark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from orchestrator.hostside import tracking as shared

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
    if line.startswith("epoch="):
        pairs = _pairs(line)
        epoch = _integer(pairs.get("epoch"))
        return None if epoch is None else Reading(epoch, _numbers(pairs))
    found = shared.parse(line.encode("utf-8", "replace"))
    if found is None:
        return None
    step, total, values = found
    return Reading(step, {k: v for k, v in values.items() if k not in NOT_CURVES}, total)


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
