"""Terminal output: progress on stderr, rank log lines on stdout, colors per host on a TTY."""

from __future__ import annotations

import contextvars
import os
import sys
import zlib
from contextlib import contextmanager
from collections.abc import Callable, Iterable, Iterator

import click

from orchestrator.console.terminal import for_terminal

_CLEAR_LINE = "\r\x1b[K"  # back to the line's start, and erase it
_COLORS = ("cyan", "magenta", "yellow", "green", "blue", "bright_red", "bright_cyan", "bright_magenta")


# Set while a command shows per-host progress; group.fan_out reports each host's step to it.
_progress: contextvars.ContextVar[Callable[[str, str, str | None], None] | None] = \
    contextvars.ContextVar("progress", default=None)


def progress(host: str, step: str, error: str | None) -> None:
    """One host finished one step (error: why it failed)."""
    hook = _progress.get()
    if hook:
        hook(host.split("/")[0], step, error)


class Ui:
    def __init__(self, quiet: bool = False, verbose: bool = False, color: bool | None = None) -> None:
        self.quiet = quiet
        self.verbose = verbose
        if color is None:
            color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        self.color = color
        self._host_colors: dict[str, str] = {}
        self._prefixes: dict[tuple[str, int | None], str] = {}
        # Remote text is escaped on a terminal only: files and pipes get it as it is.
        self._tty_out = sys.stdout.isatty()
        self._tty_err = sys.stderr.isatty()
        # This Ui's own (cli.main prints a command's error through the command's Ui).
        self._secrets: tuple[str, ...] = ()
        self._only: tuple[str | None, int | None] = (None, None)  # `up --host/--rank`: rank lines shown
        self._partial_shown = False  # the terminal's last line is a rank's unfinished line

    def filter_ranks(self, host: str | None, rank: int | None) -> None:
        """Show only this host's (or rank's) log lines; everything else distctl says is shown."""
        self._only = (host, rank)

    def _hidden(self, host: str, rank: int | None) -> bool:
        return rank is not None and self._only != (None, None) and (
            self._only[0] not in (None, host) or self._only[1] not in (None, rank))

    def partial_line(self, host: str, rank: int, text: str) -> None:
        """A rank's unfinished line (a progress bar's newest redraw), on a terminal only: drawn as
        the last line, overwritten by the next one or by the next whole line. Pipes and files
        get whole lines only."""
        if not self._tty_out or self._hidden(host, rank):
            return
        sys.stdout.write(f"{_CLEAR_LINE}{self.prefix(host, rank)} {self.shown(text)}")
        sys.stdout.flush()
        self._partial_shown = True

    def _clear_partial(self) -> None:
        if self._partial_shown:
            sys.stdout.write(_CLEAR_LINE)
            sys.stdout.flush()
            self._partial_shown = False

    def hide(self, secrets: Iterable[str]) -> None:
        """Values shown as *** wherever distctl prints them (longest first: no partial reveals)."""
        self._secrets = tuple(sorted({*self._secrets, *(s for s in secrets if s)}, key=len, reverse=True))

    def masked(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def shown(self, line: str) -> str:
        """One line of remote text for stdout: secrets masked; on a terminal, its last
        `\\r` redraw with control sequences other than colours escaped (terminal.py)."""
        line = self.masked(line)
        return for_terminal(line) if self._tty_out else line

    def _on_stderr(self, message: str) -> str:
        """Messages quote remote text too (causes, log tails): the same rule, line by line."""
        message = self.masked(message)
        if not self._tty_err:
            return message
        # A quoted log line keeps the message's indentation in front of its last redraw.
        lines = message.split("\n")
        indents = [len(line) - len(line.lstrip(" ")) for line in lines]
        return "\n".join(line[:n] + for_terminal(line[n:]) for line, n in zip(lines, indents))

    def info(self, message: str) -> None:
        self._clear_partial()
        if not self.quiet:
            click.echo(f"distctl: {self._on_stderr(message)}", err=True)

    def detail(self, message: str) -> None:
        if self.verbose:
            click.echo(f"distctl: {self._on_stderr(message)}", err=True)

    def warn(self, message: str) -> None:
        self._clear_partial()
        click.echo(self._style(f"distctl: {self._on_stderr(message)}", "yellow"), err=True)

    def error(self, message: str) -> None:
        self._clear_partial()
        click.echo(self._style(f"distctl: error: {self._on_stderr(message)}", "red"), err=True)

    def prefix(self, host: str, rank: int | None = None) -> str:
        """`[host rN]` for a rank, `[host]` for a host, in the host's colour on a terminal."""
        color = self._color_of(host)
        return self._style(f"[{host} r{rank}]" if rank is not None else f"[{host}]", color)

    def rank_line(self, host: str, rank: int | None, line: str) -> None:
        """A line of a rank's log (or, rank None, of a host's command), prefixed.

        The hot path of `logs` and `up`: a plain write with the prefix made once per rank
        (click.echo flushed per line and cost more than half the time), flushed by the
        caller once per chunk read (`flush_lines`). A pipe gets the bytes as they are."""
        if self._hidden(host, rank):
            return
        if self._partial_shown:
            self._clear_partial()
        key = (host, rank)
        prefix = self._prefixes.get(key)
        if prefix is None:
            prefix = self._prefixes[key] = f"{self.prefix(host, rank)} "
        sys.stdout.write(prefix + self.shown(line) + "\n")

    def flush_lines(self) -> None:
        sys.stdout.flush()

    def setup_line(self, host: str, line: str) -> None:
        """A line of job.setup's output, prefixed with its host."""
        click.echo(f"{self._style(f'[{host} setup]', self._color_of(host))} {self.masked(line)}")

    def _color_of(self, host: str) -> str:
        """A host's colour, the same in every invocation (from its name, not the order seen)."""
        return self._host_colors.setdefault(host, _COLORS[zlib.crc32(host.encode()) % len(_COLORS)])

    def out(self, text: str = "") -> None:
        click.echo(text, color=True)

    def _style(self, text: str, color: str) -> str:
        return click.style(text, fg=color) if self.color else text

    @contextmanager
    def host_progress(self, hosts: list[str]) -> Iterator[None]:
        """Live per-host progress on a terminal (connect, discover, push...); silent otherwise."""
        if self.quiet or not self.color or not sys.stderr.isatty():
            yield
            return
        from rich.console import Console
        from rich.live import Live
        from rich.markup import escape
        from rich.table import Table

        steps: dict[str, str] = {h: "connecting" for h in hosts}

        def table() -> Table:
            t = Table(show_header=False, box=None, pad_edge=False)
            for host, text in steps.items():
                color = self._host_colors.setdefault(host, _COLORS[len(self._host_colors) % len(_COLORS)])
                t.add_row(f"[{color}]{host}[/]", text)
            return t

        with Live(table(), console=Console(stderr=True), transient=True, refresh_per_second=10) as live:
            def hook(host: str, step: str, error: str | None) -> None:
                # A cause may quote a host's stderr: no markup from it, no control sequences.
                shown = escape(for_terminal(error)) if error else ""
                steps[host] = f"[red]{step} failed: {shown}[/]" if error else f"{step} done"
                live.update(table())

            token = _progress.set(hook)
            try:
                yield
            finally:
                _progress.reset(token)

    @property
    def interactive(self) -> bool:
        return self.color and sys.stdout.isatty()

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        """A rich table (for terminals; callers print plain lines otherwise)."""
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title, title_justify="left")
        for c in columns:
            t.add_column(c)
        for row in rows:
            t.add_row(*row)
        Console().print(t)
