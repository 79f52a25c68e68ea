"""Where pulled outputs land on the workstation, and which host-supplied names never do.

A host is not trusted to name workstation paths. A name that is absolute, has an empty, '.'
or '..' component, a backslash, NUL or another control character, bidi controls or bytes that
are not UTF-8 is refused (reported, never written); a destination whose folders are symlinks,
or which is itself a symlink or a folder, is refused too.

Where files go, under `runs/<run id>/`: a path only one host has is written at `<path>`; a
path that several hosts have is written once per host at `<host>/<path>`, so ranks on
different hosts never overwrite each other. (Which layout a path gets depends on the hosts
that have it at the time of the pull.) A placement that would still collide (a file and a
folder of the same name; `node1/x` from one host where `x` from node1 goes too) is refused.
"""

from __future__ import annotations

import hashlib
import os
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20
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


def local_parent(root: Path, rel: str, create: bool = True) -> Path:
    """The destination's folder under `root`, created as needed, never through a symlink."""
    cur = root
    for name in rel.split("/")[:-1]:
        cur = cur / name
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            if not create:
                return cur
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
    path = local_parent(root, p.dest, create=False) / p.dest.rsplit("/", 1)[-1]
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is a {'symlink' if stat.S_ISLNK(st.st_mode) else 'folder'}; not replacing it")
    return stat.S_ISREG(st.st_mode) and st.st_size == p.file.size and _local_sha256(path) == p.file.sha256
