"""`job.outputs`: bring the files a run made on its hosts back into `runs/<run id>/`.

Each host lists what its run's working folder holds matching the globs, with sizes and
sha256 (orchestrator/hostside/outputs.py, run with the host's python); the workstation
decides where each file goes, skips those it already has unchanged, and streams the rest
over one channel per host, each file into a temporary file next to its destination, renamed
into place once its bytes and sha256 are checked. Nothing is ever held whole in memory.

Where files go: a path only one host has is written at `runs/<run id>/<path>`; a path that
several hosts have is written once per host at `runs/<run id>/<host>/<path>`, so ranks on
different hosts never overwrite each other. A placement that would still collide (a file and
a folder of the same name, a host name equal to a top-level path) is refused and reported.

A host is not trusted to name workstation paths: a name that is absolute, has an empty, '.'
or '..' component, a backslash, NUL or another control character, bidi controls or bytes
that are not UTF-8 is refused (reported, never written); a destination whose folders are
symlinks, or which is itself a symlink or a folder, is refused too.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from orchestrator import shell
from orchestrator.errors import HostError
from orchestrator.hostside import outputs as hostside
from orchestrator.remote import Connection, Stream

CHUNK = 1 << 20
BATCH_ARG_BYTES = 64 * 1024  # the paths asked for in one `send` command line
_BIDI = set("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@dataclass(frozen=True)
class RemoteFile:
    host: str
    path: str  # relative to the host's working folder, '/'-separated
    size: int
    sha256: str


@dataclass(frozen=True)
class HostListing:
    host: str
    files: tuple[RemoteFile, ...]
    skipped: tuple[tuple[str, str], ...]  # (path, why) the host reported and we won't fetch
    unmatched: tuple[str, ...]  # patterns matching nothing on this host


@dataclass(frozen=True)
class Placement:
    file: RemoteFile
    dest: str  # relative to runs/<run id>/


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


# ------------------------------------------------------------------ names


def unsafe_reason(name: str) -> str | None:
    """Why a host-supplied relative path can't name a workstation file, or None if it can."""
    if not name:
        return "empty name"
    if "\0" in name:
        return "NUL byte"
    if any("\udc80" <= c <= "\udcff" for c in name):
        return "not UTF-8"
    if "\\" in name:
        return "backslash"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "control character"
    if _BIDI.intersection(name):
        return "bidirectional text control"
    if name.startswith("/"):
        return "absolute path"
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return f"'{part}' path component" if part else "empty path component"
        if len(part.encode()) > 255:
            return "name too long"
    return None


def shown(name: str) -> str:
    """A name safe to print: escapes for anything unprintable (the name came from a host)."""
    return name if name.isprintable() and not _BIDI.intersection(name) else ascii(name)


def place(listings: list[HostListing]) -> tuple[list[Placement], list[tuple[str, str, str]]]:
    """Destinations (see the module docstring) and the (host, name, why) refused."""
    refused: list[tuple[str, str, str]] = []
    owners: dict[str, list[RemoteFile]] = {}
    for listing in listings:
        for f in listing.files:
            why = unsafe_reason(f.path)
            if why:
                refused.append((f.host, f.path, why))
            else:
                owners.setdefault(f.path, []).append(f)
    placed = [Placement(f, path if len(fs) == 1 else f"{f.host}/{path}")
              for path, fs in sorted(owners.items()) for f in fs]
    count: dict[str, int] = {}
    for p in placed:
        count[p.dest] = count.get(p.dest, 0) + 1
    dirs = {"/".join(p.dest.split("/")[:i]) for p in placed for i in range(1, p.dest.count("/") + 1)}
    ok = []
    for p in placed:
        if p.dest in dirs:
            refused.append((p.file.host, p.file.path, f"{p.dest} would also be a folder of another output"))
        elif count[p.dest] > 1:  # "node1/x" from one host, "x" from node1 and another
            refused.append((p.file.host, p.file.path, f"{p.dest} would hold two hosts' files"))
        else:
            ok.append(p)
    return ok, refused


# ---------------------------------------------------------------- listing


def _hostside_command(python: str, *args: str) -> str:
    return shell.join([python, "-c", Path(hostside.__file__).read_text(), *args])


def parse_listing(host: str, text: str) -> HostListing:
    files, skipped, unmatched = [], [], []
    for line in text.splitlines():
        obj = json.loads(line)
        if "unmatched" in obj:
            unmatched.append(obj["unmatched"])
        elif "skipped" in obj:
            skipped.append((obj["path"], obj["skipped"]))
        else:
            files.append(RemoteFile(host, obj["path"], int(obj["size"]), obj["sha256"]))
    return HostListing(host, tuple(files), tuple(skipped), tuple(unmatched))


def list_host(conn: Connection, python: str, workdir: str, patterns: list[str]) -> HostListing:
    """What the host's working folder holds matching `patterns` (sizes and sha256 included)."""
    result = conn.run(_hostside_command(python, "list", workdir, *patterns), timeout=3600)
    if result.exit_code == 3:
        return HostListing(conn.name, (), (), tuple(patterns))  # no working folder: nothing made yet
    if result.exit_code != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise HostError(conn.name, f"listing outputs failed (exit {result.exit_code}): {last}")
    try:
        return parse_listing(conn.name, result.stdout)
    except (ValueError, KeyError, TypeError) as exc:
        raise HostError(conn.name, f"listing outputs: unreadable reply ({exc})") from None


# -------------------------------------------------------------- local side


def _local_parent(root: Path, rel: str) -> Path:
    """The destination's folder under `root`, created as needed, never through a symlink."""
    cur = root
    for name in rel.split("/")[:-1]:
        cur = cur / name
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise OSError(f"{cur} is a symlink; not writing through it")
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(f"{cur} is not a folder")
    return cur


def _local_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(CHUNK):
            h.update(data)
    return h.hexdigest()


def is_unchanged(root: Path, p: Placement) -> bool:
    """The local copy is a regular file with the same size and sha256 (a symlink never is)."""
    path = root / p.dest
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is a {'symlink' if stat.S_ISLNK(st.st_mode) else 'folder'}; not replacing it")
    return stat.S_ISREG(st.st_mode) and st.st_size == p.file.size and _local_sha256(path) == p.file.sha256


class _Reader:
    """Lines and exact byte counts out of a stream that returns whatever chunk it has."""

    def __init__(self, stream: Stream):
        self.stream, self.buf = stream, bytearray()

    def _more(self) -> None:
        data = self.stream.read()
        if not data:
            raise EOFError
        self.buf += data

    def line(self) -> dict | None:
        while b"\n" not in self.buf:
            try:
                self._more()
            except EOFError:
                if self.buf:
                    raise
                return None
        i = self.buf.index(b"\n")
        raw, self.buf = bytes(self.buf[:i]), self.buf[i + 1:]
        return json.loads(raw)

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
    size = int(header["size"])
    try:
        parent = _local_parent(root, p.dest)
    except OSError:
        reader.copy(size, lambda b: None)  # keep the stream in step for the next file
        reader.line()
        raise
    tmp = parent / f".distctl-pull-{os.getpid()}-{next(_tmp_seq)}.part"
    h = hashlib.sha256()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            reader.copy(size, lambda b: (h.update(b), f.write(b)))
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
            stream = conn.open_stream(_hostside_command(python, "send", workdir, paths) + " 2>/dev/null")
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
                 workdir_of: Callable[[object], str] = lambda hs: f"{hs.rundir}/work",
                 parallel: int = 8) -> PullReport:
    """Pull the files matching `patterns` from every host of `state` into `dest/<run id>/`.

    Per-host failures are recorded in the report (`errors`), never raised: the other hosts'
    files still arrive. `workdir_of(host_state)` is the folder the globs are relative to.
    """
    root = dest / state.run_id
    root.mkdir(parents=True, exist_ok=True)
    report = PullReport(root)
    hosts = {hs.host.name: hs for hs in state.hosts}

    def listing(name: str) -> HostListing | None:
        try:
            return list_host(conns[name], hosts[name].host.python, workdir_of(hosts[name]), patterns)
        except HostError as exc:
            report.errors.append((name, exc.cause))
            return None

    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(hosts)))) as pool:
        listings = [got for got in pool.map(listing, hosts) if got is not None]
    for lst in listings:
        report.refused += [(lst.host, path, why) for path, why in lst.skipped]
    report.unmatched = [p for p in patterns if listings and all(p in lst.unmatched for lst in listings)]
    placements, refused = place(listings)
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
        list(pool.map(lambda h: fetch_host(conns[h], hosts[h].host.python, workdir_of(hosts[h]), todo[h],
                                           root, report), todo))
    report.written.sort()
    report.unchanged.sort()
    report.refused.sort()
    report.errors.sort()
    return report


def format_report(report: PullReport, limit: int = 20) -> list[str]:
    """What `pull` prints: each file written (up to `limit`), then the counts and the problems."""
    from orchestrator.codepack import format_bytes

    lines = [f"  {shown(path)} ({format_bytes(n)})" for path, n in report.written[:limit]]
    if len(report.written) > limit:
        lines.append(f"  ... and {len(report.written) - limit} more")
    head = (f"outputs: wrote {len(report.written)} file{'s' if len(report.written) != 1 else ''} "
            f"({format_bytes(report.bytes_written)}) into {report.dest}/")
    if report.unchanged:
        head += f", {len(report.unchanged)} already there unchanged"
    lines.insert(0, head)
    lines += [f"  not pulled: {host}: {shown(name)}: {why}" for host, name, why in report.refused]
    lines += [f"  no host has a file matching '{shown(p)}'" for p in report.unmatched]
    lines += [f"  {host}: {message}" for host, message in report.errors]
    return lines
