"""known_hosts files as OpenSSH reads and writes them; pure text, no SSH library.

OpenSSH takes any whitespace, hashed names (`|1|salt|hmac`), `*`/`?` patterns and `!negation`,
`[host]:port` off port 22, and skips a line it can't use; paramiko's own loader rejects a whole
file for one `@cert-authority` or `@revoked` line or an unknown key type.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import shlex
import threading
from dataclasses import dataclass

_RECORD_LOCK = threading.Lock()  # hosts connect in parallel; one append at a time per file


@dataclass(frozen=True)
class Entry:
    marker: str | None  # None, "@revoked" or "@cert-authority"
    hosts: str  # the host field as written
    keytype: str
    key: str  # base64


def lookup_name(hostname: str, port: int | None, alias: str | None = None) -> str:
    """The name ssh looks a host's key up by: the HostKeyAlias, else `host` or `[host]:port`."""
    if alias:
        return alias
    return hostname if port in (None, 22) else f"[{hostname}]:{port}"


def _wildcard(name: str, pattern: str) -> bool:
    """OpenSSH's patterns: `*` and `?` only (`[host]:port` is literal, not a character class)."""
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), name) is not None


def hash_name(name: str, salt: bytes | None = None) -> str:
    """OpenSSH's hashed form of a host name (HashKnownHosts)."""
    salt = os.urandom(20) if salt is None else salt
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def matches(name: str, hosts: str) -> bool:
    """Does a host field (`a,b`, patterns, `!negated`, or one hashed name) name `name`?"""
    if hosts.startswith("|1|"):
        try:
            salt = base64.b64decode(hosts[3:].split("|", 1)[0], validate=True)
        except ValueError:
            return False
        return hmac.compare_digest(hash_name(name, salt), hosts)
    matched = False
    for pattern in hosts.lower().split(","):
        if pattern.startswith("!"):
            if _wildcard(name.lower(), pattern[1:]):
                return False  # a negated match wins over every other pattern on the line
        elif _wildcard(name.lower(), pattern):
            matched = True
    return matched


def read_entries(paths: list[str]) -> list[Entry]:
    """Every usable line of the files (missing files are skipped, as ssh skips them)."""
    out = []
    for path in paths:
        try:
            with open(os.path.expanduser(path), encoding="utf-8", errors="replace") as f:
                lines = f.readlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            marker = fields.pop(0) if fields[0].startswith("@") else None
            if len(fields) >= 3:
                out.append(Entry(marker, fields[0], fields[1], fields[2]))
    return out


def record(path: str, name: str, keytype: str, key: str, hashed: bool) -> None:
    """Append `name keytype base64` (the name hashed when HashKnownHosts is on)."""
    path = os.path.expanduser(path)
    with _RECORD_LOCK:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        with open(path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # never glue our line onto an unterminated last one
                    f.write(b"\n")
            f.write(f"{hash_name(name) if hashed else name} {keytype} {key}\n".encode())


def keyscan_hint(hostname: str, port: int, alias: str | None, record_to: str) -> str:
    """The ssh-keyscan command that adds the key under the name ssh looks it up by."""
    target = (["-p", str(port)] if port != 22 else []) + [hostname]
    rename = f" | sed {shlex.quote('s/^[^ ]*/' + alias + '/')}" if alias else ""
    return f"ssh-keyscan {shlex.join(target)}{rename} >> {shlex.quote(os.path.expanduser(record_to))}"
