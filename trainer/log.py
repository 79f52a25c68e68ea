"""The trainer's logfmt output: one ``event key=value ...`` line per event, flushed at once.

distctl and the tests parse these lines; the event names and keys are a contract (see
``trainer/__main__.py``).  Values with spaces, quotes or ``=`` are double-quoted.
"""

from __future__ import annotations

import sys


def format_value(value: object) -> str:
    """Render one logfmt value: floats with 6 significant digits, strings quoted when needed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value).replace("\n", " | ")
    if text == "" or any(c in text for c in ' "=\\\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def format_line(event: str | None, **fields: object) -> str:
    """``event k=v ...``; with event None the line starts with the first pair (the epoch line)."""
    pairs = [f"{key}={format_value(value)}" for key, value in fields.items()]
    return " ".join(pairs if event is None else [event] + pairs)


def emit(event: str | None, **fields: object) -> None:
    """Print one event line on stdout (the contract lines: joined, epoch, done, stopped ...)."""
    print(format_line(event, **fields), flush=True)


def emit_error(rank: int | str, message: str) -> None:
    """Print the one ``error`` line on stderr."""
    sys.stdout.flush()
    print(format_line("error", rank=rank, message=message), file=sys.stderr, flush=True)


def parse_line(line: str) -> tuple[str | None, dict[str, str]]:
    """Parse one line into (event or None, {key: str}); the inverse of format_line (for tests)."""
    event: str | None
    event, _, rest = line.strip().partition(" ")
    if "=" in event:
        event, rest = None, line.strip()
    fields, i = {}, 0
    while i < len(rest):
        eq = rest.index("=", i)
        key, i = rest[i:eq].strip(), eq + 1
        if i < len(rest) and rest[i] == '"':
            value, i = _read_quoted(rest, i + 1)
        else:
            end = rest.find(" ", i)
            end = len(rest) if end < 0 else end
            value, i = rest[i:end], end
        fields[key] = value
        while i < len(rest) and rest[i] == " ":
            i += 1
    return event, fields


def _read_quoted(text: str, i: int) -> tuple[str, int]:
    out = []
    while text[i] != '"':
        if text[i] == "\\":
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out), i + 1
