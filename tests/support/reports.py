"""What a distctl command printed when it failed: its error report, and no traceback."""

from __future__ import annotations

import subprocess


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    """stderr from the `distctl: error:` line on."""
    lines = done.stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("distctl: error:"))
    return lines[start:]


def assert_clean(done: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
