"""How far a rank got, read from its log as it grows: the parser and the per-rank tracker.

Progress lines, one parser for all (`parse`): a tqdm bar (`120/1000 [00:37<04:35, 3.20it/s]`,
`120it [00:37, 3.20it/s]`; each `\\r` redraw counts), and a program's own logfmt line on
stdout, `distctl: step=N [total=N] [KEY=NUMBER]...`, which the bundled trainer prints too.
The live view (web/progress.py) reads its curves with the same `parse`, imported on the workstation.

Each host's agent (agent.py) keeps one `ProgressFile` per rank: it reads rankR.log from where
the current attempt starts and rewrites rankR.progress (atomically, at most once a second, and
once more when the rank ended) with the step, the total, the rate in steps per second over the
last RATE_WINDOW seconds, the time of the last step (this host's clock) and the numbers of the
latest logfmt line. A step lower than the last one (a new tqdm bar, a restart) starts the rate
afresh. `distctl status` reads the file through progress.py.

On a host this file is part of the agent and of progress.py (hostside/__init__.py joins them).
"""

from __future__ import annotations

import os
import re
from typing import Dict, Optional, Tuple

LOGFMT = b"distctl: step="
TQDM = re.compile(rb"(\d+)/(\d+) \[[\d:]+<[\d:?]*")
TQDM_OPEN = re.compile(rb"(\d+)it \[[\d:]+[,\]]")
RATE_WINDOW = 30.0
WRITE_EVERY_S = 1.0
READ_AT_MOST = 8 << 20  # bytes of a log read at once: a rank far ahead is caught up over a few reads

Found = Tuple[int, Optional[int], Dict[str, float]]  # (step, total, metrics)


def as_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def parse(segment: bytes) -> Found | None:
    """(step, total or None, {key: number}) from one line or `\\r` redraw, or None."""
    if segment.startswith(LOGFMT):
        fields = {}
        for word in segment[len(b"distctl: "):].split():
            key, _, value = word.partition(b"=")
            found = as_number(value.decode("ascii", "replace"))
            if found is not None and key:
                fields[key.decode("ascii", "replace")] = found
        step = fields.pop("step", None)
        if step is None or step < 0 or step != int(step):
            return None
        total = fields.pop("total", None)
        return int(step), (int(total) if total is not None and total > 0 else None), fields
    bar = TQDM.search(segment)
    if bar:
        return int(bar.group(1)), int(bar.group(2)) or None, {}
    bar = TQDM_OPEN.search(segment)
    if bar:
        return int(bar.group(1)), None, {}
    return None


class Tracker:
    """The progress of one rank as its log grows (pure but for the clock it is given)."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.total: int | None = None
        self.at: float | None = None
        self.metrics: dict[str, float] = {}
        self.history: list[tuple[float, int]] = []  # (time, step) within RATE_WINDOW

    def feed(self, segment: bytes, now: float) -> bool:
        found = parse(segment)
        return found is not None and self.take(found, now)

    def take(self, found: Found, now: float) -> bool:
        step, total, metrics = found
        if self.step is not None and step < self.step:
            self.history = []
        if step != self.step:
            self.at = now
        self.step, self.total = step, total or (self.total if step >= (self.step or 0) else None)
        self.metrics.update(metrics)
        if self.history and self.history[-1][0] == now:  # one point per read of the log
            self.history[-1] = (now, step)
        else:
            self.history.append((now, step))
        while now - self.history[0][0] > RATE_WINDOW:
            self.history.pop(0)
        return True

    def rate(self) -> float | None:
        if len(self.history) < 2 or self.history[-1][0] <= self.history[0][0]:
            return None
        (t0, s0), (t1, s1) = self.history[0], self.history[-1]
        return (s1 - s0) / (t1 - t0)

    def line(self) -> str:
        words = ["step=%d" % (self.step or 0)]
        if self.total:
            words.append("total=%d" % self.total)
        rate = self.rate()
        words += ["rate=%.4g" % rate if rate is not None else "rate=-", "at=%.3f" % (self.at or 0.0)]
        words += ["%s=%.6g" % (k, v) for k, v in sorted(self.metrics.items())]
        return " ".join(words)


MARKS = (LOGFMT, b"it/s]", b"s/it]", b"it]")  # where a progress line may be


def latest(text: bytes) -> Found | None:
    """The last progress line or redraw in `text`, parsed (None: none). Only the segments
    around the last few marks are parsed: a chunk of 100,000 lines costs a few searches."""
    found = []
    for mark in MARKS:
        end = len(text)
        for _ in range(3):
            at = text.rfind(mark, 0, end)
            if at < 0:
                break
            start = max(text.rfind(b"\n", 0, at), text.rfind(b"\r", 0, at)) + 1
            found.append((at, start))
            end = start
    for _, start in sorted(found, reverse=True):
        stop = min([i for i in (text.find(b"\n", start), text.find(b"\r", start)) if i >= 0] or [len(text)])
        parsed = parse(text[start:stop])
        if parsed:
            return parsed
    return None


class ProgressFile:
    """rankR.progress kept from rankR.log (in the working directory), read from `offset` on."""

    def __init__(self, rank: int, offset: int) -> None:
        self.log, self.out = "rank%d.log" % rank, "rank%d.progress" % rank
        self.offset, self.tail = offset, b""
        self.tracker = Tracker()
        self.written, self.changed = 0.0, False

    def restart(self, offset: int) -> None:
        """A new attempt appends from `offset`: its steps continue the same file."""
        self.offset, self.tail = offset, b""

    def pump(self, now: float, final: bool = False) -> None:
        """Read what the log gained; write the file when a step changed, at most once a second
        (at once when `final`: the rank ended)."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self.offset)
                data = f.read(READ_AT_MOST)
        except OSError:
            data = b""
        self.offset += len(data)
        if data:
            # the last line so far, whole or not: a bar redrawn without a newline counts
            text = self.tail + data
            found = latest(text)
            cut = max(text.rfind(b"\n"), text.rfind(b"\r"))
            self.tail = text[cut + 1:][-4096:]
            if found:
                self.changed = self.tracker.take(found, now) or self.changed
        if self.changed and (final or now - self.written >= WRITE_EVERY_S):
            try:
                with open(self.out + ".tmp", "w") as f:
                    f.write(self.tracker.line() + "\n")
                os.replace(self.out + ".tmp", self.out)
            except OSError:
                return  # (a full disk: the next write tries again)
            self.written, self.changed = now, False
