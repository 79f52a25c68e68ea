"""One rank's values of one key, downsampled as they arrive to a bounded number of buckets.

A series holds at most `cap` buckets. Each bucket covers `stride` consecutive points and keeps
their last step and time, mean, minimum and maximum (the chart draws the mean and, where they
differ, the min-max band, so a spike merged into a bucket still shows). When a new point would
make `cap + 1` buckets, neighbouring buckets are merged in pairs and the stride doubles: memory
is fixed per series (44 bytes a bucket) however long the run, and every bucket covers the same
number of points. Only the last bucket is ever open (fewer than `stride` points); `gen` counts
the merges, so a reader that copied the buckets knows when its copy is stale.
"""

from __future__ import annotations

from array import array

CAP = 320  # buckets per series: wider than a chart's line needs on a laptop screen


class Series:
    __slots__ = ("cap", "stride", "gen", "version", "points", "step", "t", "mean", "lo", "hi", "n")

    def __init__(self, cap: int = CAP):
        if cap < 2 or cap % 2:
            raise ValueError("cap must be an even number >= 2")
        self.cap = cap
        self.stride = 1
        self.gen = 0  # merges so far
        self.version = 0  # points added so far
        self.step, self.t = array("d"), array("d")  # t: NaN where the time is unknown (a replayed log)
        self.mean, self.lo, self.hi = array("d"), array("d"), array("d")
        self.n = array("I")

    def __len__(self) -> int:
        return len(self.n)

    def add(self, step: float, t: float, value: float) -> None:
        self.version += 1
        if self.n and self.n[-1] < self.stride:
            k = self.n[-1]
            self.mean[-1] += (value - self.mean[-1]) / (k + 1)
            self.lo[-1], self.hi[-1] = min(self.lo[-1], value), max(self.hi[-1], value)
            self.step[-1], self.t[-1], self.n[-1] = step, t, k + 1
            return
        if len(self.n) == self.cap:
            self._halve()
        for column, v in ((self.step, step), (self.t, t), (self.mean, value), (self.lo, value), (self.hi, value)):
            column.append(v)
        self.n.append(1)

    def complete(self) -> int:
        """Buckets that will not change again until the next merge."""
        return len(self.n) if self.n and self.n[-1] == self.stride else max(0, len(self.n) - 1)

    def buckets(self, start: int = 0) -> list[tuple[float, float, float, float, float]]:
        """(step, t, mean, lo, hi) from bucket `start` on."""
        return list(zip(self.step[start:], self.t[start:], self.mean[start:], self.lo[start:], self.hi[start:]))

    def _halve(self) -> None:
        """Merge buckets 2i and 2i+1 (all complete: only called when the last one is full)."""
        for column, merge in ((self.step, _later), (self.t, _later), (self.lo, min), (self.hi, max)):
            column[:] = array("d", (merge(column[i], column[i + 1]) for i in range(0, len(column), 2)))
        self.mean[:] = array("d", ((self.mean[i] + self.mean[i + 1]) / 2 for i in range(0, len(self.mean), 2)))
        self.n[:] = array("I", (self.n[i] + self.n[i + 1] for i in range(0, len(self.n), 2)))
        self.stride *= 2
        self.gen += 1


def _later(a: float, b: float) -> float:
    return b
