"""Rank ranges, written one way everywhere (`stacks`' roll-call, `logs --collapse`):
sorted, runs of consecutive ranks as `first-last`, joined by commas: `0,2-7,9`."""

from __future__ import annotations

from collections.abc import Iterable


def format_ranks(ranks: Iterable[int]) -> str:
    """`[0, 2, 3, 4, 9]` -> `0,2-4,9` (duplicates count once)."""
    runs: list[list[int]] = []
    for rank in sorted(set(ranks)):
        if runs and rank == runs[-1][1] + 1:
            runs[-1][1] = rank
        else:
            runs.append([rank, rank])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def ranks_phrase(ranks: Iterable[int]) -> str:
    """`rank 3` or `ranks 0,2-7`."""
    ranks = sorted(set(ranks))
    return f"rank{'s' if len(ranks) != 1 else ''} {format_ranks(ranks)}"
