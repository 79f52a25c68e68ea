"""The HTTP side of `distctl web` (aiohttp): the page, its live updates, the log and Stop.

Routes, all behind security.py's checks:
- `GET /?token=T`: swaps the URL's token for an HttpOnly cookie and redirects to `/`, so the
  token leaves the address bar and history; `GET /`: the page (the token in a meta tag, for
  Stop's header);
- `GET /static/NAME`: the page's script and style (package data, nothing from the internet);
- `GET /events`: server-sent events, one JSON delta (view.py) every PUSH_S while anything changed;
- `GET /api/state`: the whole view once (for scripts); `GET /api/log?rank=R&lines=N`: a rank's
  last lines, loaded on demand; `POST /api/stop`: what `distctl stop` does; `POST /api/stacks`:
  what `distctl stacks` does (JSON: `rollcall`, `lines` as the command prints them, `missing`;
  `error` alone when no stack could be taken).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable
from importlib import resources
from typing import Any

from aiohttp import web

from orchestrator.errors import DistctlError, ExitCode
from orchestrator.web import security
from orchestrator.web.view import Cursor, RunView

PUSH_S = 0.25  # a line reaches the page within this (plus the network) after the follower read it
KEEPALIVE_S = 15.0
STATIC = {"app.js": "application/javascript", "app.css": "text/css"}
ACTIONS = ("/api/stop", "/api/stacks")  # they act on the hosts: the header token and the page's Origin
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the token is in the first URL: never send it on
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
}


class Actions:
    """What the page can ask of the run besides watching it (feed.Feed and commands.stop do it)."""

    def __init__(self, log_tail: Callable[[int, int], list[str]], stop: Callable[[], dict],
                 stacks: Callable[[], dict] | None = None):
        self.log_tail = log_tail
        self.stop = stop
        self.stacks = stacks


def _static(name: str) -> bytes:
    return resources.files("orchestrator.web").joinpath("static").joinpath(name).read_bytes()


class LiveServer:
    def __init__(self, view: RunView, actions: Actions, token: str, port: int = 0):
        self.view = view
        self.actions = actions
        self.token = token
        self.sock = _bind(port)
        self.port = self.sock.getsockname()[1]
        self.cookie = security.cookie_name(self.port)
        self._stopped = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/?token={self.token}"

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """Serve until close() (or Ctrl-C in the calling thread)."""
        asyncio.run(self._serve())

    def start_thread(self) -> None:
        threading.Thread(target=self.run, name="web-server", daemon=True).start()

    def close(self) -> None:
        self._stopped.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=1)
        await runner.setup()
        await web.SockSite(runner, self.sock).start()
        try:
            while not self._stopped.is_set():
                await asyncio.sleep(0.2)
        finally:
            await runner.cleanup()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self.index)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/events", self.events)
        app.router.add_get("/api/state", self.snapshot)
        app.router.add_get("/api/log", self.log)
        app.router.add_post("/api/stop", self.stop)
        app.router.add_post("/api/stacks", self.stacks)
        return app

    # ------------------------------------------------------------------ security

    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        allowed = security.request_allowed(host, self.token, request.query.get("token"),
                                           request.cookies.get(self.cookie),
                                           request.headers.get(security.TOKEN_HEADER))
        if request.path in ACTIONS:
            allowed = security.stop_allowed(host, request.headers.get("Origin"),
                                            request.headers.get(security.TOKEN_HEADER), self.token)
        if not allowed:
            response: web.StreamResponse = web.Response(status=403, text="forbidden: this page needs the URL "
                                                        "distctl web printed (with its token)\n")
        else:
            response = await handler(request)
        if not response.prepared:
            response.headers.update(HEADERS)
        return response

    # ------------------------------------------------------------------ handlers

    async def index(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("token"):  # valid (the guard checked): swap it for the cookie
            response = web.Response(status=303, headers={"Location": "/"})
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="Strict", path="/")
            return response
        html = _static("index.html").decode().replace("{{TOKEN}}", self.token)
        return web.Response(text=html, content_type="text/html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=_static(name), content_type=STATIC[name])

    async def snapshot(self, request: web.Request) -> web.StreamResponse:
        delta = await asyncio.get_running_loop().run_in_executor(None, self.view.delta, Cursor())
        return web.json_response(delta, dumps=_dumps)

    async def events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={**HEADERS, "Content-Type": "text/event-stream"})
        await response.prepare(request)
        cursor, quiet, loop = Cursor(), 0.0, asyncio.get_running_loop()
        try:
            while not self._stopped.is_set():
                delta = await loop.run_in_executor(None, self.view.delta, cursor)
                if delta:
                    await response.write(b"data: " + _dumps(delta).encode() + b"\n\n")
                    quiet = 0.0
                elif quiet >= KEEPALIVE_S:
                    await response.write(b": keepalive\n\n")
                    quiet = 0.0
                await asyncio.sleep(PUSH_S)
                quiet += PUSH_S
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def log(self, request: web.Request) -> web.StreamResponse:
        try:
            rank, lines = int(request.query["rank"]), max(1, min(5000, int(request.query.get("lines", 200))))
        except (KeyError, ValueError):
            raise web.HTTPBadRequest(text="rank=R and lines=N (numbers) are needed\n") from None
        if rank not in self.view.ranks:
            raise web.HTTPNotFound(text=f"no rank {rank} in this run\n")
        try:
            found = await asyncio.get_running_loop().run_in_executor(None, self.actions.log_tail, rank, lines)
        except DistctlError as exc:
            return web.json_response({"rank": rank, "error": str(exc)}, status=502)
        self.view.log_lines(rank, found)
        return web.json_response({"rank": rank, "lines": len(found)})

    async def stop(self, request: web.Request) -> web.StreamResponse:
        result = await asyncio.get_running_loop().run_in_executor(None, self.actions.stop)
        return web.json_response(result, status=200 if result.get("ok") else 502)

    async def stacks(self, request: web.Request) -> web.StreamResponse:
        """Every rank's stacks; 200 with `ok` false when some rank could not be dumped (the roll-call
        names it and why), 502 with `error` when none could be taken."""
        if self.actions.stacks is None:
            raise web.HTTPNotFound(text="this view cannot take stacks\n")
        result = await asyncio.get_running_loop().run_in_executor(None, self.actions.stacks)
        return web.json_response(result, status=502 if "error" in result else 200)


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


def _bind(port: int) -> socket.socket:
    """Loopback only, never 0.0.0.0: the page is for this workstation (README: ssh -L from elsewhere)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise DistctlError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc} (choose another --port, "
                           "or leave it out for a free one)", ExitCode.BAD_INPUT) from None
    sock.listen(64)
    return sock
