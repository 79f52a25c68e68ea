"""Shell quoting, in one place: every remote command is built from argument lists here.

Values reach the remote shell as single-quoted words (`shlex.quote`), never
interpolated; environment goes into a file sourced by the rank's wrapper, not
onto a command line (`env_file`).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from typing import Protocol


class EnvVar(Protocol):
    """What `env_file` needs of a variable (an inventory.model.EnvVar); the shell sits below the inventory."""

    @property
    def name(self) -> str: ...
    @property
    def value(self) -> str: ...
    @property
    def shown(self) -> str: ...


def join(argv: Sequence[object]) -> str:
    """One command line from an argument list, every word quoted."""
    return " ".join(shlex.quote(str(a)) for a in argv)


def lines(*commands: str) -> str:
    """A script of commands, one per line."""
    return "\n".join(commands)


def env_file(env: Iterable[EnvVar], masked: bool = False) -> str:
    """The rank environment as `export NAME=VALUE` lines; `masked` shows secrets as ***."""
    out = []
    for var in env:
        value = var.shown if masked else var.value
        out.append(f"export {var.name}={shlex.quote(value)}")
    return "\n".join(out) + "\n"
