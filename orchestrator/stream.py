"""Follow many rank logs at once: one `selectors` loop over raw streams, whole lines only.

Each stream gets its own incremental UTF-8 decoder, so a character split across
two reads is never mangled, and a partial line waits for its newline.
"""

from __future__ import annotations

import codecs
import selectors
import time
from dataclasses import dataclass, field
from typing import Callable

from orchestrator.remote import Stream


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


def follow(streams: list[Followed], on_line: Callable[[Followed, str], None],
           tick: Callable[[], None] | None = None, tick_every: float = 0.25) -> None:
    """Read every stream to its end, calling `tick()` periodically."""
    sel = selectors.DefaultSelector()
    for f in streams:
        sel.register(f.stream.fileno(), selectors.EVENT_READ, f)
    open_count = len(streams)
    next_tick = time.monotonic() + tick_every
    try:
        while open_count:
            timeout = max(0.0, next_tick - time.monotonic()) if tick else None
            for key, _ in sel.select(timeout):
                f: Followed = key.data
                try:
                    data = f.stream.read()
                except OSError:
                    data = b""
                for line in f.feed(data):
                    on_line(f, line)
                if not data:
                    sel.unregister(key.fileobj)
                    open_count -= 1
            if tick and time.monotonic() >= next_tick:
                next_tick = time.monotonic() + tick_every
                tick()
    finally:
        sel.close()
