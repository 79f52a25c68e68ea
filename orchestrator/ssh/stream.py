"""Follow many rank logs at once: one `selectors` loop over raw streams, whole lines only.

Each stream gets its own incremental UTF-8 decoder, so a character split across
two reads is never mangled, and a partial line waits for its newline.
"""

from __future__ import annotations

import codecs
import selectors
import sys
import time
from dataclasses import dataclass, field
from typing import Protocol
from collections.abc import Callable

from orchestrator.ssh.remote import Stream


@dataclass
class Followed:
    """One followed stream: a host's rank logs (see plan.follow_script)."""

    host: str
    stream: Stream
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))
    _partial: str = ""

    def feed(self, data: bytes) -> list[str]:
        text = self._partial + self._decoder.decode(data, final=not data)
        lines = text.split("\n")
        self._partial = lines.pop()
        if not data and self._partial:
            lines.append(self._partial)
            self._partial = ""
        return [line.rstrip("\r") for line in lines]


class Links(Protocol):
    """What keeps followers alive across link faults (orchestrator/run/links.py)."""

    def take_new(self) -> list[Followed]: ...  # followers reopened since the last call
    def pending(self) -> bool: ...  # a host is being reconnected: keep going
    def closed(self, f: Followed) -> None: ...  # a follower's stream ended or stalled
    def stalled(self, f: Followed, quiet_s: float) -> bool: ...


def follow(streams: list[Followed], on_line: Callable[[Followed, str], None],
           tick: Callable[[], None] | None = None, tick_every: float = 0.25,
           links: Links | None = None, flush: Callable[[], None] | None = None) -> None:
    """Read every stream to its end, calling `tick()` periodically. With `links`, a stream
    that ends or goes quiet is handed to it, and the streams it reopens are followed on."""
    sel = selectors.DefaultSelector()
    heard: dict[int, float] = {}

    def add(f: Followed) -> None:
        sel.register(f.stream.fileno(), selectors.EVENT_READ, f)
        heard[id(f)] = time.monotonic()

    def drop(f: Followed) -> None:
        sel.unregister(f.stream.fileno())
        heard.pop(id(f), None)
        if links:
            links.closed(f)

    for f in streams:
        add(f)
    periodic = tick is not None or links is not None
    next_tick = time.monotonic() + tick_every
    try:
        while heard or (links and links.pending()):
            for f in links.take_new() if links else ():
                add(f)
            timeout = max(0.0, next_tick - time.monotonic()) if periodic else None
            for key, _ in sel.select(timeout):
                f = key.data
                try:
                    data = f.stream.read()
                except OSError:
                    data = b""
                heard[id(f)] = time.monotonic()
                for line in f.feed(data):
                    on_line(f, line)
                (flush or sys.stdout.flush)()  # once per chunk read, not per line
                if not data:
                    drop(f)
            if periodic and time.monotonic() >= next_tick:
                next_tick = time.monotonic() + tick_every
                if links:
                    now = time.monotonic()
                    for f in [k.data for k in sel.get_map().values()]:
                        if links.stalled(f, now - heard[id(f)]):
                            drop(f)
                if tick:
                    tick()
    finally:
        sel.close()
