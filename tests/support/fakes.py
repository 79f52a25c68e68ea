"""Stand-ins for a host connection and for the user's terminal, for unit tests of pure logic.

What a test can do with them is what orchestrator/ssh/remote.py's `Connection` offers: `run` a
command (answered from rules, every call recorded) and `open_stream` one (handing out
scripted `FakeStream`s, also recorded). A `FakeStream` gives its bytes through a real pipe,
so the `selectors` loop of orchestrator/ssh/stream.py watches it like an SSH channel.

Behaviour a user relies on is tested on the real cluster (tests/cluster.py); these are for
decisions that can be driven without one (STYLE.md: "Fakes are for unit tests of pure logic").

Example: a host whose follower reports rank 0 joining and exiting 0, and whose stop reports
nothing left::

    node1 = FakeConnection("node1", streams=[FakeStream(said(0, "joined rank=0"), exited(0, 0))])
    node1.answer("kill -TERM", Result(0, "left=0\\n", ""))
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from orchestrator.errors import HostError
from orchestrator.ssh.remote import Result

OK = Result(0, "", "")
HEARTBEAT = b"hb\n"  # what hostside/follow.py writes when its ranks are quiet


def said(rank: int, *lines: str) -> bytes:
    """A follower's output for lines of one rank's log: `R line`."""
    return b"".join(f"{rank} {line}\n".encode() for line in lines)


def exited(rank: int, code: int | None, at: float | None = None) -> bytes:
    """A follower's `exit R CODE TIME` (`-` for no code, e.g. SIGKILL, or no time)."""
    return f"exit {rank} {'-' if code is None else code} {'-' if at is None else f'{at:.3f}'}\n".encode()


def relayed(text: str) -> bytes:
    """A restart agent's decision as a follower relays it: `ev TEXT` (hostside/agent.py)."""
    return f"ev {text}\n".encode()


class FakeStream:
    """Output scripted as bytes and pauses, then the end: `FakeStream(b"0 a\\n", 0.5, b"0 b\\n")`
    gives `0 a` at once, `0 b` half a second later, then `read()` returns b"".

    `feed` and `end` let a test (or a connection's answer, say to a stop) add output or end
    the stream early; what the script would write after the end is dropped. `exit_code()` is
    `code`, as the remote command's exit status."""

    def __init__(self, *script: bytes | float, code: int | None = 0):
        self.code = code
        self._read_fd, self._write_fd = os.pipe()
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._reading = True
        self._writer = threading.Thread(target=self._play, args=(script,), daemon=True)
        self._writer.start()

    def _play(self, script: tuple[bytes | float, ...]) -> None:
        for item in script:
            if isinstance(item, bytes):
                self.feed(item)
            else:
                time.sleep(item)
        self.end()

    def feed(self, data: bytes) -> None:
        """Write `data` for the reader, unless the stream has ended."""
        with self._write_lock:
            view = memoryview(data)
            while view and self._write_fd >= 0:
                try:
                    view = view[os.write(self._write_fd, view):]
                except OSError:  # the reader closed its end
                    return

    def end(self) -> None:
        """End of output: the reader gets b"" once it has read what was fed."""
        with self._write_lock:
            if self._write_fd >= 0:
                os.close(self._write_fd)
                self._write_fd = -1

    @property
    def ended(self) -> bool:
        return self._write_fd < 0

    # ------------------------------------------------------------------ orchestrator.ssh.remote.Stream

    def fileno(self) -> int:
        return self._read_fd

    def read(self) -> bytes:
        return os.read(self._read_fd, 65536)

    def exit_code(self) -> int | None:
        return self.code

    def close(self) -> None:
        # The read end first: a writer blocked on a full pipe then fails instead of holding the
        # lock that end() needs. Once only: a second os.close could hit a reused descriptor.
        with self._read_lock:
            if self._reading:
                self._reading = False
                os.close(self._read_fd)
        self.end()

    @property
    def closed(self) -> bool:
        return not self._reading


@dataclass(frozen=True)
class Call:
    """One `run` a FakeConnection was given."""

    command: str
    stdin: bytes = b""
    timeout: float | None = None


Answer = Result | BaseException | Callable[[Call], Result]


class FakeConnection:
    """A host reached without a network. `run` answers with the first rule whose needle the
    command contains (see `answer`), else `default`; `open_stream` hands out `streams` in
    order, and raises HostError once they are used up (as a host that went away would).

    Records: `calls` (every run, in order; `commands` their text), `opened` (every
    open_stream command), `closed`. Safe to use from several threads, as fan-outs do."""

    def __init__(self, name: str, *, peer: str | None = "127.0.0.1", default: Answer = OK,
                 streams: Iterable[FakeStream | BaseException] = ()):
        self.name = name
        self.peer = peer
        self.default = default
        self.streams: deque[FakeStream | BaseException] = deque(streams)
        self.calls: list[Call] = []
        self.opened: list[str] = []
        self.closed = False
        self._rules: list[tuple[str, Answer]] = []
        self._lock = threading.Lock()

    def answer(self, needle: str, answer: Answer) -> FakeConnection:
        """Answer commands that contain `needle` with `answer`: a Result, an exception to raise,
        or a function of the Call. Rules added first win. Returns self, to chain."""
        self._rules.append((needle, answer))
        return self

    @property
    def commands(self) -> list[str]:
        return [c.command for c in self.calls]

    # ------------------------------------------------------------------ orchestrator.ssh.remote.Connection

    def run(self, command: str, stdin: bytes = b"", timeout: float | None = None) -> Result:
        call = Call(command, stdin, timeout)
        with self._lock:
            self.calls.append(call)
        answer = next((a for needle, a in self._rules if needle in command), self.default)
        if isinstance(answer, BaseException):
            raise answer
        return answer(call) if callable(answer) else answer

    def open_stream(self, command: str) -> FakeStream:
        with self._lock:
            self.opened.append(command)
            item = self.streams.popleft() if self.streams else HostError(self.name, "no stream left to open")
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.closed = True


class RecordingUi:
    """What distctl would tell the user, recorded: `lines` holds (kind, message) for info,
    detail, warn and error; `rank_lines` holds (host, rank, line) of the ranks' logs."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.rank_lines: list[tuple[str, int | None, str]] = []
        self.partial_lines: list[tuple[str, int, str]] = []  # a rank's unfinished line, as a terminal shows it

    def info(self, message: str) -> None:
        self.lines.append(("info", message))

    def detail(self, message: str) -> None:
        self.lines.append(("detail", message))

    def warn(self, message: str) -> None:
        self.lines.append(("warn", message))

    def error(self, message: str) -> None:
        self.lines.append(("error", message))

    def rank_line(self, host: str, rank: int | None, line: str) -> None:
        self.rank_lines.append((host, rank, line))

    def partial_line(self, host: str, rank: int, text: str) -> None:
        self.partial_lines.append((host, rank, text))

    def flush_lines(self) -> None:
        pass

    @property
    def warnings(self) -> list[str]:
        return [message for kind, message in self.lines if kind == "warn"]
