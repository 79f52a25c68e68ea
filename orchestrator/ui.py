"""Terminal output: progress on stderr, rank log lines on stdout, colors per host on a TTY."""

from __future__ import annotations

import os
import sys

import click

_COLORS = ("cyan", "magenta", "yellow", "green", "blue", "bright_red", "bright_cyan", "bright_magenta")


class Ui:
    def __init__(self, quiet: bool = False, verbose: bool = False, color: bool | None = None):
        self.quiet = quiet
        self.verbose = verbose
        if color is None:
            color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        self.color = color
        self._host_colors: dict[str, str] = {}

    # Process-wide, so that the error printed by cli.main masks them too.
    _secrets: tuple[str, ...] = ()

    @classmethod
    def hide(cls, secrets) -> None:
        """Values shown as *** wherever distctl prints them (longest first: no partial reveals)."""
        cls._secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def masked(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def info(self, message: str) -> None:
        if not self.quiet:
            click.echo(f"distctl: {message}", err=True)

    def detail(self, message: str) -> None:
        if self.verbose:
            click.echo(f"distctl: {message}", err=True)

    def warn(self, message: str) -> None:
        click.echo(self._style(f"distctl: {self.masked(message)}", "yellow"), err=True)

    def error(self, message: str) -> None:
        click.echo(self._style(f"distctl: error: {self.masked(message)}", "red"), err=True)

    def prefix(self, host: str, rank: int) -> str:
        color = self._host_colors.setdefault(host, _COLORS[len(self._host_colors) % len(_COLORS)])
        return self._style(f"[{host} r{rank}]", color)

    def rank_line(self, host: str, rank: int, line: str) -> None:
        click.echo(f"{self.prefix(host, rank)} {self.masked(line)}")

    def out(self, text: str = "") -> None:
        click.echo(text)

    def _style(self, text: str, color: str) -> str:
        return click.style(text, fg=color) if self.color else text
