"""`job.outputs`: bring the files a run made on its hosts back into `runs/<run id>/`.

Each host lists what its run's working folder holds matching the globs, with sizes and
sha256 (orchestrator/hostside/outputs.py, run with the host's python); the workstation
decides where each file goes and refuses unsafe names (orchestrator/results/destinations.py), skips
those it already has unchanged, and streams the rest over one channel per host, each file
into a temporary file next to its destination, renamed into place once its bytes and sha256
are checked. Nothing is ever held whole in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.results.destinations import (HostListing, Placement, RemoteFile, is_unchanged, local_parent, place,
                                       shown)
from orchestrator.errors import HostError
from orchestrator.hostside import program
from orchestrator.ssh.remote import Connection, Stream

BATCH_ARG_BYTES = 64 * 1024  # the paths asked for in one `send` command line


@dataclass
class PullReport:
    dest: Path  # runs/<run id>/
    written: list[tuple[str, int]] = field(default_factory=list)  # (dest path, bytes)
    unchanged: list[str] = field(default_factory=list)
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (host, name, why)
    unmatched: list[str] = field(default_factory=list)  # patterns no host matched
    errors: list[tuple[str, str]] = field(default_factory=list)  # (host, message)

    @property
    def bytes_written(self) -> int:
        return sum(n for _, n in self.written)


# ---------------------------------------------------------------- listing


def _checked(value, kind: type[Any]):
    if type(value) is not kind or (kind is int and value < 0):
        raise ValueError(f"expected a {kind.__name__}, got {value!r:.40}")
    return value


def parse_listing(host: str, text: str) -> HostListing:
    """The lister's JSON lines; anything not shaped as documented is a ValueError."""
    files, skipped, unmatched = [], [], []
    for line in text.splitlines():
        obj = _checked(json.loads(line), dict)
        if "unmatched" in obj:
            unmatched.append(_checked(obj["unmatched"], str))
        elif "skipped" in obj:
            skipped.append((_checked(obj["path"], str), _checked(obj["skipped"], str)))
        else:
            files.append(RemoteFile(host, _checked(obj["path"], str), _checked(obj["size"], int),
                                    _checked(obj["sha256"], str)))
    return HostListing(host, tuple(files), tuple(skipped), tuple(unmatched))


def list_host(conn: Connection, python: str, workdir: str, patterns: list[str]) -> HostListing:
    """What the host's working folder holds matching `patterns` (sizes and sha256 included)."""
    result = conn.run(program(python, "outputs", "list", workdir, *patterns), timeout=3600)
    if result.exit_code == 3:
        return HostListing(conn.name, (), (), tuple(patterns))  # no working folder: nothing made yet
    if result.exit_code != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise HostError(conn.name, f"listing outputs failed (exit {result.exit_code}): {last}")
    try:
        return parse_listing(conn.name, result.stdout)
    except (ValueError, KeyError, TypeError) as exc:
        raise HostError(conn.name, f"listing outputs: unreadable reply ({exc})") from None


# ---------------------------------------------------------------- transfer


class _Reader:
    """Lines and exact byte counts out of a stream that returns whatever chunk it has."""

    MAX_LINE = 1 << 20  # a header or trailer is short; a host sending more is broken

    def __init__(self, stream: Stream):
        self.stream, self.buf = stream, bytearray()

    def _more(self) -> None:
        data = self.stream.read()
        if not data:
            raise EOFError
        self.buf += data

    def line(self) -> dict | None:
        while b"\n" not in self.buf:
            if len(self.buf) > self.MAX_LINE:
                raise ValueError("a header line without an end")
            try:
                self._more()
            except EOFError:
                if self.buf:
                    raise
                return None
        i = self.buf.index(b"\n")
        raw, self.buf = bytes(self.buf[:i]), self.buf[i + 1:]
        return _checked(json.loads(raw), dict)

    def copy(self, n: int, sink: Callable[[bytes], None]) -> None:
        while n:
            if not self.buf:
                self._more()
            take = bytes(self.buf[:n])
            del self.buf[:len(take)]
            sink(take)
            n -= len(take)


_tmp_seq = iter(range(1 << 62))


def _receive(reader: _Reader, root: Path, p: Placement) -> int:
    """One file from the stream into a temp file next to its destination, renamed when whole."""
    header = reader.line()
    if header is None or header.get("path") != p.file.path:
        raise EOFError
    if "error" in header:
        raise OSError(f"the host could not read it: {header['error']}")
    size = _checked(header.get("size"), int)
    try:
        parent = local_parent(root, p.dest)
    except OSError:
        reader.copy(size, lambda b: None)  # keep the stream in step for the next file
        reader.line()
        raise
    tmp = parent / f".distctl-pull-{os.getpid()}-{next(_tmp_seq)}.part"
    h = hashlib.sha256()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            def sink(b: bytes) -> None:
                h.update(b)
                f.write(b)
            reader.copy(size, sink)
        trailer = reader.line() or {}
        if not trailer.get("complete") or trailer.get("sha256") != h.hexdigest():
            raise OSError("it changed on the host while being sent; pull again")
        os.replace(tmp, root / p.dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size


def _batches(placements: list[Placement]) -> list[list[Placement]]:
    out: list[list[Placement]] = [[]]
    size = 0
    for p in placements:
        n = len(p.file.path.encode()) + 8
        if out[-1] and size + n > BATCH_ARG_BYTES:
            out.append([])
            size = 0
        out[-1].append(p)
        size += n
    return [b for b in out if b]


def fetch_host(conn: Connection, python: str, workdir: str, placements: list[Placement], root: Path,
               report: PullReport) -> None:
    """Stream `placements` (all from `conn`'s host) into `root`, recording each outcome."""
    for batch in _batches(placements):
        paths = json.dumps([p.file.path for p in batch])
        try:
            stream = conn.open_stream(program(python, "outputs", "send", workdir, paths) + " 2>/dev/null")
        except HostError as exc:
            report.errors.append((conn.name, exc.cause))
            return
        reader = _Reader(stream)
        try:
            for p in batch:
                try:
                    report.written.append((p.dest, _receive(reader, root, p)))
                except OSError as exc:
                    report.refused.append((conn.name, p.file.path, str(exc)))
        except (EOFError, ValueError):
            report.errors.append((conn.name, f"the transfer ended early (exit {stream.exit_code()})"))
            return
        finally:
            stream.close()


# ------------------------------------------------------------------- pull


def pull_outputs(state, conns: dict[str, Connection], patterns: list[str], dest: Path,
                 workdir_of: Callable[[Any], str] = lambda hs: f"{hs.rundir}/work",
                 parallel: int = 8, rename: Mapping[str, str] | None = None) -> PullReport:
    """Pull the files matching `patterns` from every host of `state` into `dest/<run id>/`.

    Per-host failures are recorded in the report (`errors`), never raised: the other hosts'
    files still arrive. `workdir_of(host_state)` is the folder the globs are relative to;
    `rename` gives some placed paths another destination (the checkpoint lands as model.pt).
    """
    root = dest / state.run_id
    root.mkdir(parents=True, exist_ok=True)
    report = PullReport(root)
    hosts = {hs.host.name: hs for hs in state.hosts}

    def listing(name: str) -> HostListing | None:
        try:
            return list_host(conns[name], hosts[name].python, workdir_of(hosts[name]), patterns)
        except HostError as exc:
            report.errors.append((name, exc.cause))
            return None

    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(hosts)))) as pool:
        listings = [got for got in pool.map(listing, hosts) if got is not None]
    for lst in listings:
        report.refused += [(lst.host, path, why) for path, why in lst.skipped]
    report.unmatched = [p for p in patterns if listings and all(p in lst.unmatched for lst in listings)]
    placements, refused = place(listings)
    placements = [replace(p, dest=rename.get(p.dest, p.dest)) for p in placements] if rename else placements
    report.refused += refused
    todo: dict[str, list[Placement]] = {}
    for p in placements:
        try:
            if is_unchanged(root, p):
                report.unchanged.append(p.dest)
            else:
                todo.setdefault(p.file.host, []).append(p)
        except OSError as exc:
            report.refused.append((p.file.host, p.file.path, str(exc)))
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(todo) or 1))) as pool:
        list(pool.map(lambda h: fetch_host(conns[h], hosts[h].python, workdir_of(hosts[h]), todo[h],
                                           root, report), todo))
    report.written.sort()
    report.unchanged.sort()
    report.refused.sort()
    report.errors.sort()
    return report


def format_report(report: PullReport, limit: int = 20) -> list[str]:
    """What `pull` prints: each file written (up to `limit`), then the counts and the problems."""
    from orchestrator.launch.artifacts import format_bytes

    lines = [f"  {shown(path)} ({format_bytes(n)})" for path, n in report.written[:limit]]
    if len(report.written) > limit:
        lines.append(f"  ... and {len(report.written) - limit} more")
    head = (f"outputs: wrote {len(report.written)} file{'s' if len(report.written) != 1 else ''} "
            f"({format_bytes(report.bytes_written)}) into {report.dest}/")
    if report.unchanged:
        head += f", {len(report.unchanged)} already there unchanged"
    lines.insert(0, head)
    lines += [f"  not pulled: {host}: {shown(name)}: {shown(why)}" for host, name, why in report.refused]
    lines += [f"  no host has a file matching '{shown(p)}'" for p in report.unmatched]
    lines += [f"  {host}: {shown(message)}" for host, message in report.errors]
    return lines
