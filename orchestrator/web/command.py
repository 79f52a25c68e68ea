"""`distctl web [TARGET]` and `up --web`: find the run, feed a view of it, serve the page.

Nothing here imports aiohttp before `require_web()` has said, in one line, how to install it.
"""

from __future__ import annotations

import importlib.util
import threading
import webbrowser
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from orchestrator.cli import commands
from orchestrator.console.ui import Ui
from orchestrator.errors import Detached, DistctlError, ExitCode
from orchestrator.inventory.model import load_inventory
from orchestrator.plan.state import RunState
from orchestrator.web import INSTALL_HINT, security
from orchestrator.web.feed import Feed, PulledFeed, pulled_folder
from orchestrator.web.view import RunView


@dataclass(frozen=True)
class WebOptions:
    port: int = 0  # 0: a free one
    open_browser: bool = False
    grace: float = 30.0  # Stop's grace, as `distctl stop --grace`
    fanout: int = 32
    pulled: str | None = None  # the folder `pull --to` wrote into (runs/<run id>/ below it)


def require_web() -> None:
    if importlib.util.find_spec("aiohttp") is None:
        raise DistctlError(INSTALL_HINT, ExitCode.BAD_INPUT)


class _Recorder(Ui):
    """A Ui for commands.stop whose lines go back to the page."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)

    warn = error = info

    def out(self, text: str = "") -> None:
        self.lines.append(text)


def _masker(state: RunState):
    """Secrets are not stored with the run: take them from its inventory, as `logs` does."""
    try:
        secrets = sorted({s for s in load_inventory(state.inventory).secrets if s}, key=len, reverse=True)
    except DistctlError:
        secrets = []

    def mask(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    return mask


def start_view(state: RunState, opts: WebOptions, ui):
    """Listen (first: a taken --port fails before any connection), connect, start feeding a view;
    returns its LiveServer (not yet serving) and the feed. Prints the URL."""
    require_web()
    from orchestrator.web.server import Actions, LiveServer

    mask = _masker(state)
    view = RunView(state, "live")
    live = Feed(state, view, opts.fanout, mask)
    feeds: list[Feed | PulledFeed] = [live]
    server = LiveServer(view, Actions(lambda rank, lines: feeds[-1].log_tail(rank, lines),
                                      lambda: _stop(state, view, live, opts),
                                      lambda: _stacks(state, view, opts, mask)), security.new_token(), opts.port)
    if live.connect() == 0:
        folder = pulled_folder(state, Path(opts.pulled) if opts.pulled else None)
        if folder is None:
            server.sock.close()
            raise DistctlError(f"no host of run {state.run_id} could be reached, and no folder runs/{state.run_id} "
                               "from distctl pull was found (give it with --pulled DIR)", ExitCode.UNREACHABLE)
        view.source = "pulled"
        feeds.append(PulledFeed(state, view, folder, mask))
    feeds[-1].start()
    # Not ui.info: the URL shows even under -q (without it, the page cannot be opened).
    click.echo(f"distctl: live view of run {state.run_id}: {server.url}", err=True)
    if opts.open_browser:
        webbrowser.open(server.url)
    return server, feeds[-1]


def _stop(state: RunState, view: RunView, feed: Feed, opts: WebOptions) -> dict:
    """The Stop button: `distctl stop` itself, its lines for the page; then the ranks' states at once."""
    if view.source == "pulled":
        return {"ok": False, "lines": ["no host of this run can be reached: nothing to stop"]}
    view.request_stop()
    recorder = _Recorder()
    try:
        commands.stop(state.run_id, commands.Options(opts.fanout), recorder, opts.grace)
    except DistctlError as exc:
        return {"ok": False, "lines": [*recorder.lines, str(exc)]}
    finally:
        feed.poll_once()
    return {"ok": True, "lines": recorder.lines}


def _stacks(state: RunState, view: RunView, opts: WebOptions, mask) -> dict:
    """The Stacks button: `distctl stacks` itself (dumps saved on the hosts as it saves them); the
    roll-call, then the grouped stacks as the command prints them, and the ranks it could not dump."""
    from orchestrator.run import stacks

    if view.source == "pulled":
        return {"ok": False, "error": "no host of this run can be reached: no stacks to take"}
    stamp = stacks.new_stamp()
    try:
        found, notes, _ = stacks.take(state, {r.rank for hs in state.hosts for r in hs.ranks}, stamp, False,
                                      opts.fanout)
    except DistctlError as exc:
        return {"ok": False, "error": f"stacks failed: {mask(str(exc))}"}
    lines = [mask(line) for line in stacks.render_text(found, notes, stacks.saved_line(state.run_id, stamp))]
    missing = [{"rank": d.rank, "host": d.host, "why": mask(d.error or "no dump")} for d in found if d.main is None]
    return {"ok": not missing, "rollcall": lines[0], "lines": lines[1:], "missing": missing}


def web(target: str | None, opts: WebOptions, ui) -> None:
    """Serve the live view of a run until Ctrl-C; the run goes on."""
    require_web()
    state = commands.find_run(target)
    server, feed = start_view(state, opts, ui)
    try:
        server.run()
    except KeyboardInterrupt:
        ui.info(f"live view closed; run {state.run_id} goes on")
        raise Detached("interrupted") from None
    finally:
        feed.close()


class UpWeb:
    """`up --web`: the view starts once the ranks are launched; attached, it lives as long as
    `up` follows the run; with --detach, `up` serves it until Ctrl-C once every rank runs."""

    def __init__(self, opts: WebOptions, ui):
        require_web()
        self.opts, self.ui = opts, ui
        self.run_id = ""
        self.server: Any = None
        self.feed: Any = None

    def launched(self, state: RunState) -> None:
        """The ranks run: a view that cannot start is a warning, never a reason to leave the run unwatched."""
        self.run_id = state.run_id
        try:
            self.server, self.feed = start_view(state, self.opts, self.ui)
        except DistctlError as exc:
            self.ui.warn(f"the live view did not start: {exc} (the run goes on; try: distctl web {state.run_id})")
            return
        self.server.start_thread()

    def serve_detached(self) -> None:
        if self.server is None:
            return
        self.ui.info("serving the live view until Ctrl-C; the run goes on either way")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            self.ui.info(f"live view closed; run {self.run_id} goes on")
            raise Detached("interrupted") from None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.feed is not None:
            self.feed.close()
