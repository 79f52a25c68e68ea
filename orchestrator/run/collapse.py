"""`distctl logs --collapse`: a line that many ranks print alike is shown once, with its ranks
(`[r0-7,9] loss 0.31`, rank ranges as `rankset.format_ranks` writes them everywhere).

Pure. The k-th time a rank prints a text is grouped with the k-th time the others print it.
A group is released once every rank being followed printed it, or `window` seconds after it
first came (live), or at the end (replay); released groups come out in the order of their
lines' places in the logs."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.console.rankset import format_ranks

WINDOW_S = 1.0


@dataclass
class _Group:
    text: str
    first: float  # when its first line came
    place: int  # its smallest line number in any rank's log
    order: int  # arrival order, to break ties
    ranks: list[int] = field(default_factory=list)


class Collapser:
    def __init__(self, ranks: set[int], window: float = WINDOW_S) -> None:
        self.ranks = set(ranks)  # the ranks followed: a group with all of them is complete
        self.window = window
        self._count: dict[tuple[int, str], int] = {}  # (rank, text) -> times seen
        self._lines: dict[int, int] = {}  # rank -> lines seen
        self._open: dict[tuple[str, int], _Group] = {}
        self._arrived = 0

    def add(self, rank: int, text: str, now: float) -> None:
        k = self._count.get((rank, text), 0)
        self._count[(rank, text)] = k + 1
        place = self._lines.get(rank, 0)
        self._lines[rank] = place + 1
        group = self._open.get((text, k))
        if group is None:
            self._arrived += 1
            group = self._open[(text, k)] = _Group(text, now, place, self._arrived)
        group.place = min(group.place, place)
        group.ranks.append(rank)

    def ended(self, rank: int) -> None:
        """A rank's log ended: groups no longer wait for it."""
        self.ranks.discard(rank)

    def release(self, now: float, everything: bool = False) -> list[str]:
        """The lines of the groups that are complete, old enough, or all of them at the end."""
        done = [key for key, g in self._open.items()
                if everything or now - g.first >= self.window or self.ranks <= set(g.ranks)]
        groups = sorted((self._open.pop(key) for key in done), key=lambda g: (g.place, g.order))
        return [f"[r{format_ranks(g.ranks)}] {g.text}" for g in groups]
