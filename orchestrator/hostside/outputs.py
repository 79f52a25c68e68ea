"""On a host: list the outputs of a run, and send the files the workstation asks for.

    list WORKDIR PATTERN...   one JSON line per match, sorted by path:
                                {"path": P, "size": N, "sha256": H}   a regular file
                                {"path": P, "skipped": "symlink"}     (or "not a regular file")
                              then {"unmatched": PATTERN} for each pattern that matched nothing
    send WORKDIR JSON-LIST    for each path of the list, a header line, the bytes, a trailer:
                                {"path": P, "size": N}\\n  N bytes  {"sha256": H, "complete": true}\\n
                              or {"path": P, "error": "..."}\\n when it cannot be opened

Patterns are relative to WORKDIR, separated by `/`: `*`, `?` and `[...]` match within one name,
`**` any number of folders; as in the shell, a wildcard does not match a name starting with
`.` unless the name in the pattern does. A pattern that matches a folder takes everything below it.
Nothing is followed through a symlink: the walk does not enter linked folders, a matched
symlink is reported as skipped, and `send` opens each path one component at a time with
O_NOFOLLOW, so a link swapped in after the listing is refused too. Paths are UTF-8 with
surrogate escapes for other bytes (the workstation refuses those).

Stdlib only, Python 3.6+: it runs with whatever `python` the host has.
"""

import fnmatch
import hashlib
import json
import os
import stat
import sys

CHUNK = 1 << 20
_MAGIC = set("*?[")


def _name_matches(name, pattern):
    if not _MAGIC.intersection(pattern):
        return name == pattern
    if name.startswith(".") and not pattern.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, pattern)


def full_match(parts, pats):
    """Does the path `parts` match the pattern `pats` (both lists of names)?"""
    if not pats:
        return not parts
    if pats[0] == "**":
        if full_match(parts, pats[1:]):
            return True
        return bool(parts) and not parts[0].startswith(".") and full_match(parts[1:], pats)
    return bool(parts) and _name_matches(parts[0], pats[0]) and full_match(parts[1:], pats[1:])


def could_contain(parts, pats):
    """Could some path below the folder `parts` match `pats`? (prunes the walk)"""
    if not parts:
        return bool(pats)
    if not pats:
        return False
    if pats[0] == "**":
        return could_contain(parts, pats[1:]) or (not parts[0].startswith(".") and could_contain(parts[1:], pats))
    return _name_matches(parts[0], pats[0]) and could_contain(parts[1:], pats[1:])


def split_pattern(pattern):
    """`./a//b/` -> [`a`, `b`]; a pattern with `..` or empty names can only match nothing."""
    return [p for p in pattern.split("/") if p not in ("", ".")]


def _open_regular(path):
    """A read-only fd of a regular file, never following a symlink, never blocking on a fifo."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError("not a regular file")
    return fd


def _sha256(fd):
    h = hashlib.sha256()
    while True:
        data = os.read(fd, CHUNK)
        if not data:
            return h.hexdigest()
        h.update(data)


def list_outputs(workdir, patterns, emit):
    pats = [split_pattern(p) for p in patterns]
    matched = set()

    def owner(parts):
        for i, p in enumerate(pats):
            if full_match(parts, p):
                return i
        return None

    def walk(folder, parts, inherited):
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            cparts = parts + [entry.name]
            who = inherited if inherited is not None else owner(cparts)
            if who is not None:
                matched.add(who)
            rel = "/".join(cparts)
            if entry.is_symlink():
                if who is not None:
                    emit({"path": rel, "skipped": "symlink"})
            elif entry.is_dir(follow_symlinks=False):
                if who is not None or any(could_contain(cparts, p) for p in pats):
                    walk(entry.path, cparts, who)
            elif who is not None:
                _emit_file(entry.path, rel, emit)

    walk(workdir, [], None)
    for i, pattern in enumerate(patterns):
        if i not in matched:
            emit({"unmatched": pattern})


def _emit_file(path, rel, emit):
    try:
        fd = _open_regular(path)
    except OSError:
        emit({"path": rel, "skipped": "not a regular file"})
        return
    try:
        emit({"path": rel, "size": os.fstat(fd).st_size, "sha256": _sha256(fd)})
    finally:
        os.close(fd)


def open_below(workdir, rel):
    """Open WORKDIR/rel walking one name at a time, refusing symlinks and `..` on the way."""
    names = rel.split("/")
    if any(n in ("", ".", "..") for n in names):
        raise OSError("bad path")
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names[:-1]:
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        last = os.open(names[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(last).st_mode):
        os.close(last)
        raise OSError("not a regular file")
    return last


def _line(out, obj):
    out.write(json.dumps(obj).encode("ascii") + b"\n")


def send_files(workdir, paths, out):
    for rel in paths:
        try:
            fd = open_below(workdir, rel)
        except OSError as exc:
            _line(out, {"path": rel, "error": exc.strerror or str(exc)})
            continue
        try:
            size = os.fstat(fd).st_size
            _line(out, {"path": rel, "size": size})
            h, left = hashlib.sha256(), size
            while left:
                data = os.read(fd, min(CHUNK, left))
                if not data:  # the file shrank: pad, and say the copy is incomplete
                    data = b"\0" * min(CHUNK, left)
                    size = -1
                h.update(data)
                out.write(data)
                left -= len(data)
            _line(out, {"sha256": h.hexdigest(), "complete": size >= 0})
        finally:
            os.close(fd)
    out.flush()


def main(argv):
    if len(argv) < 2 or argv[0] not in ("list", "send"):
        sys.stderr.write("usage: outputs.py list WORKDIR PATTERN... | send WORKDIR JSON-LIST\n")
        return 2
    workdir = argv[1]
    if not os.path.isdir(workdir):
        sys.stderr.write("no folder %s\n" % workdir)
        return 3
    out = sys.stdout.buffer
    if argv[0] == "list":
        list_outputs(workdir, argv[2:], lambda obj: _line(out, obj))
        out.flush()
    else:
        send_files(workdir, json.loads(argv[2]), out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
