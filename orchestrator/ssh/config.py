"""Each host's effective SSH settings, computed by OpenSSH itself.

`ssh -G HOST` prints what `ssh HOST` would use (Include, Match, wildcards, first value wins,
tokens, canonicalization...) and connects to nothing. distctl asks it once per host and per
ProxyJump hop and hands the result to paramiko, so a host resolves exactly as it does for `ssh`.
Only values the user wrote in the inventory are passed, as `ssh -l/-p/-i` would be; distctl's
own defaults never override ssh_config. Without an `ssh` binary, paramiko's parser stands in
and distctl says once which keywords it then cannot honour.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass

from orchestrator.errors import DistctlError, ExitCode

SSH = "ssh"  # the client asked; tests point this elsewhere to exercise the fallback
DEFAULT_IDENTITIES = ("~/.ssh/id_rsa", "~/.ssh/id_ecdsa", "~/.ssh/id_ecdsa_sk", "~/.ssh/id_ed25519",
                      "~/.ssh/id_ed25519_sk", "~/.ssh/id_xmss", "~/.ssh/id_dsa")
DEFAULT_USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
DEFAULT_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
MAX_HOPS = 16


class SshConfigError(DistctlError):
    """ssh_config that ssh itself rejects, or that distctl cannot follow: bad input."""

    exit_code = ExitCode.BAD_INPUT


@dataclass(frozen=True)
class SshSettings:
    """One host's (or one hop's) effective settings, as `ssh -G` printed them."""

    alias: str  # the name asked for (inventory address, or the hop's name in ProxyJump)
    hostname: str
    user: str
    port: int
    identityfile: tuple[str, ...] = ()  # tokens and ~ expanded, in the order ssh tries them
    identitiesonly: bool = False
    identityagent: bool = True  # False: `IdentityAgent none`
    proxyjump: tuple[SshSettings, ...] = ()  # hops in dial order; the last one dials this host
    proxycommand: str | None = None  # tokens expanded; run through `sh -c`
    userknownhostsfile: tuple[str, ...] = DEFAULT_USER_KNOWN_HOSTS
    globalknownhostsfile: tuple[str, ...] = DEFAULT_GLOBAL_KNOWN_HOSTS
    hostkeyalias: str | None = None
    connecttimeout: float | None = None
    stricthostkeychecking: str = "ask"  # yes | ask | accept-new | no
    hashknownhosts: bool = False
    ignored: tuple[str, ...] = ()  # keywords in effect that distctl does not honour

    @property
    def target(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"

    def describe(self) -> str:
        """`bastion (root@10.0.0.1:22) -> root@10.0.1.5:22`: the chain, one line."""
        hops = [f"{h.alias} ({h.target})" for h in self.proxyjump]
        if self.proxycommand:
            hops.append(f"ProxyCommand {self.proxycommand!r}")
        return " -> ".join(hops + [self.target])


# ---------------------------------------------------------------- ssh -G output


def parse_ssh_g(text: str) -> dict[str, list[str]]:
    """`ssh -G` output: one lowercase `key value` per line; repeated keys (identityfile) kept in order."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            out.setdefault(key.lower(), []).append(value.strip())
    return out


def parse_jump(spec: str) -> list[tuple[str | None, str, int | None]]:
    """ProxyJump's `[user@]host[:port]` (or `ssh://` URI) hops, in dial order."""
    hops = []
    for part in (p.strip() for p in spec.split(",")):
        if part.startswith("ssh://"):
            part = part[len("ssh://"):].rstrip("/")
        user, _, rest = part.rpartition("@")
        match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:]+)(?::(\d+))?", rest)
        if not part or not match:
            raise SshConfigError(f"ssh_config: cannot read ProxyJump hop {part!r} in {spec!r}")
        host = match[1] or match[3]
        port = match[2] or match[4]
        hops.append((user or None, host, int(port) if port else None))
    return hops


def _local_tokens(alias: str, hostname: str, user: str, port: int, jump: str, hostkeyalias: str | None):
    fqdn = socket.gethostname()
    return {"%": "%", "d": os.path.expanduser("~"), "h": hostname, "i": str(os.getuid()), "j": jump,
            "k": hostkeyalias or alias, "L": fqdn.split(".")[0], "l": fqdn, "n": alias, "p": str(port),
            "r": user, "u": getpass.getuser(),
            "C": hashlib.sha1(f"{fqdn}{hostname}{port}{user}{jump}".encode()).hexdigest()}


def expand_tokens(value: str, tokens: dict[str, str], keyword: str) -> str:
    """OpenSSH's `%x` expansion; an unknown token is an error, as it is for ssh."""
    def one(m: re.Match) -> str:
        if m[1] not in tokens:
            raise SshConfigError(f"ssh_config: {keyword} {value!r}: unknown token %{m[1]}")
        return tokens[m[1]]
    return re.sub(r"%(.)", one, value)


# Keywords whose effect distctl cannot reproduce: (key in ssh -G output, values that are harmless).
_NOT_HONOURED = {
    "ControlMaster": ("false", "no"), "ProxyUseFdpass": ("no",), "BindAddress": (), "BindInterface": (),
    "CertificateFile": (), "PKCS11Provider": (), "HostbasedAuthentication": ("no",),
    "PubkeyAuthentication": ("yes", "true"), "AddressFamily": ("any",),
    "IdentityAgent": ("SSH_AUTH_SOCK", "none"), "Tunnel": ("false", "no"),
}


def settings_from(alias: str, g: dict[str, list[str]], hops: tuple[SshSettings, ...]) -> SshSettings:
    """Settings from parsed `ssh -G` output (and the hops already resolved for its ProxyJump)."""
    def first(key: str, default: str | None = None) -> str | None:
        value = g.get(key, [default])[0]
        return None if value is None or value.lower() == "none" else value

    hostname, user, port = first("hostname") or alias, first("user") or getpass.getuser(), int(first("port") or "22")
    alias_k = first("hostkeyalias")
    tokens = _local_tokens(alias, hostname, user, port, first("proxyjump") or "", alias_k)
    identities = tuple(_home(os.path.expanduser(expand_tokens(f, tokens, "IdentityFile")))
                       for f in g.get("identityfile", []) if f != "none")
    command = first("proxycommand")
    if command is not None:
        command = expand_tokens(command, tokens, "ProxyCommand")
    timeout = first("connecttimeout")
    files = {k: tuple(_home(f) for f in " ".join(g.get(k, [])).split() if f != "none")
             for k in ("userknownhostsfile", "globalknownhostsfile")}
    ignored = tuple(k for k, fine in _NOT_HONOURED.items() if k.lower() in g and g[k.lower()][0] not in fine)
    return SshSettings(
        alias=alias, hostname=hostname, user=user, port=port, identityfile=identities,
        identitiesonly=first("identitiesonly", "no") in ("yes", "true"),
        identityagent=g.get("identityagent", ["SSH_AUTH_SOCK"])[0].lower() != "none",
        proxyjump=hops, proxycommand=command,
        userknownhostsfile=files["userknownhostsfile"], globalknownhostsfile=files["globalknownhostsfile"],
        hostkeyalias=alias_k, connecttimeout=float(timeout) if timeout else None,
        stricthostkeychecking=(first("stricthostkeychecking") or "ask").replace("true", "yes").replace("false", "no"),
        hashknownhosts=first("hashknownhosts", "no") in ("yes", "true"), ignored=ignored)


def _home(path: str) -> str:
    """ssh expands `~` to the passwd home, the rest of distctl (and Python) to $HOME: where the
    two differ (a sandboxed HOME), $HOME wins, so that a test or container HOME isolates both."""
    import pwd

    home, own = os.path.expanduser("~"), pwd.getpwuid(os.getuid()).pw_dir
    if home != own and (path == own or path.startswith(own.rstrip("/") + "/")):
        return home + path[len(own.rstrip("/")):]
    return path


# ---------------------------------------------------------------- resolving


def ssh_g_error(stderr: str, alias: str) -> str:
    """ssh's own complaint, as `FILE:LINE: message` when it names a line."""
    lines = [ln.strip() for ln in stderr.splitlines()
             if ln.strip() and not ln.startswith("Pseudo-terminal will not be allocated")]
    for line in lines:
        m = re.match(r"(.*?): line (\d+): (.*)", line)
        if m:
            return f"{m[1]}:{m[2]}: {m[3]} (ssh_config)"
    return f"ssh -G {alias}: {lines[0] if lines else 'failed'}"


def run_ssh_g(alias: str, config: str | None, user: str | None = None, port: int | None = None,
              identity: str | None = None, jump: str | None = None) -> dict[str, list[str]]:
    """`ssh -G` for one name; flags only for values the user gave, like ssh's own options."""
    argv = [SSH, "-G"]
    for flag, value in (("-F", config), ("-l", user), ("-p", port), ("-i", identity), ("-J", jump)):
        if value is not None:
            argv += [flag, str(value)]
    try:
        done = subprocess.run([*argv, "--", alias], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              check=False, timeout=30)
    except subprocess.TimeoutExpired:
        raise SshConfigError(f"ssh -G {alias} did not finish within 30 s (a Match exec that hangs?)") from None
    if done.returncode != 0:
        raise SshConfigError(ssh_g_error(done.stderr, alias))
    return parse_ssh_g(done.stdout)


@functools.lru_cache(maxsize=4096)
def _resolve(alias: str, config: str | None, user: str | None, port: int | None, identity: str | None,
             jump: str | None, seen: tuple[tuple, ...]) -> SshSettings:
    key = (alias, user, port, jump)
    if key in seen or len(seen) > MAX_HOPS:
        chain = " -> ".join(k[0] for k in (*seen, key))
        raise SshConfigError(f"ssh_config: ProxyJump loops: {chain} (end the chain with 'ProxyJump none')")
    g = run_ssh_g(alias, config, user, port, identity, jump)
    spec = g.get("proxyjump", ["none"])[0]
    hops: tuple[SshSettings, ...] = ()
    if spec != "none":
        # Like ssh: the last hop is dialled with `-J <the others>`, each hop as its own host
        # (its own User, keys, known hosts); only -F reaches it, never the target's -l/-p/-i.
        *_, (hop_user, hop_host, hop_port) = parse_jump(spec)
        rest_spec = ",".join(s.strip() for s in spec.split(",")[:-1]) or None
        last = _resolve(hop_host, config, hop_user, hop_port, None, rest_spec, (*seen, key))
        hops = (*last.proxyjump, last)
    return settings_from(alias, g, hops)


def resolve(alias: str, config: str | None = None, user: str | None = None, port: int | None = None,
            identity: str | None = None) -> SshSettings:
    """What `ssh [-F config] [-l user] [-p port] [-i identity] alias` would use."""
    if config is not None:
        config = os.path.expanduser(config)
    if ssh_available():
        return _resolve(alias, config, user, port, os.path.expanduser(identity) if identity else None, None, ())
    return resolve_fallback(alias, config, user, port, identity)


def ssh_available() -> bool:
    return shutil.which(SSH) is not None


# ---------------------------------------------------------------- without ssh


FALLBACK_IGNORES = ("include", "canonicalizehostname", "canonicaldomains", "match")
_warned: set[str] = set()
_warn_lock = threading.Lock()


def warn_once(message: str) -> None:
    with _warn_lock:
        if message in _warned:
            return
        _warned.add(message)
    sys.stderr.write(f"distctl: warning: {message}\n")


def _strip_comments(path: str) -> tuple[str, list[str]]:
    """The config text without trailing `# comments` (ssh drops them, paramiko keeps them), and
    the keywords in it that paramiko's parser cannot honour."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return "", []
    kept, unsupported = [], []
    for line in lines:
        line = re.sub(r"\s+#.*$", "", line)
        word = re.split(r"[\s=]+", line.strip(), maxsplit=1)[0].lower()
        if word in FALLBACK_IGNORES and word not in unsupported:
            unsupported.append(word)
        if not word.startswith("canonical"):  # paramiko's canonicalization drops HostName
            kept.append(line)
    return "\n".join(kept) + "\n", unsupported


def resolve_fallback(alias: str, config: str | None, user: str | None, port: int | None,
                     identity: str | None, jump: str | None = None, seen: tuple[str, ...] = ()) -> SshSettings:
    """paramiko's SSHConfig: no Include, no canonicalization; said once, in one line."""
    import paramiko

    path = config or os.path.expanduser("~/.ssh/config")
    text, unsupported = _strip_comments(path)
    if unsupported:
        warn_once(f"no '{SSH}' client found: {path} is read by paramiko, which does not honour "
                  f"{', '.join(unsupported)}; install OpenSSH's client for exact results")
    if alias in seen or len(seen) > MAX_HOPS:
        raise SshConfigError(f"ssh_config: ProxyJump loops: {' -> '.join((*seen, alias))}")
    try:
        found = paramiko.SSHConfig.from_text(text).lookup(alias)
    except Exception as exc:  # paramiko raises several types for what it cannot parse
        raise SshConfigError(f"{path}: cannot read: {exc}") from None
    g = {k: (v if isinstance(v, list) else [str(v)]) for k, v in found.items()}
    g["hostname"] = [found.get("hostname", alias)]
    g["user"] = [user or found.get("user") or getpass.getuser()]
    g["port"] = [str(port or found.get("port", 22))]
    files = ([identity] if identity else []) + list(found.get("identityfile", []))
    g["identityfile"] = files or list(DEFAULT_IDENTITIES)
    spec = jump or found.get("proxyjump", "none")
    if "proxycommand" in found and jump is None:
        spec = "none"  # paramiko cannot tell which came first; ssh takes the first, often this one
    tokens = _local_tokens(alias, g["hostname"][0], g["user"][0], int(g["port"][0]), "", found.get("hostkeyalias"))
    for key, default in (("userknownhostsfile", DEFAULT_USER_KNOWN_HOSTS),
                         ("globalknownhostsfile", DEFAULT_GLOBAL_KNOWN_HOSTS)):
        g[key] = [" ".join(os.path.expanduser(expand_tokens(f, tokens, key))
                           for f in (" ".join(g.get(key, [])).split() or default))]
    hops: tuple[SshSettings, ...] = ()
    if spec.lower() != "none":
        *_, (hop_user, hop_host, hop_port) = parse_jump(spec)
        rest = ",".join(s.strip() for s in spec.split(",")[:-1]) or None
        last = resolve_fallback(hop_host, config, hop_user, hop_port, None, rest, (*seen, alias))
        hops = (*last.proxyjump, last)
    g.pop("proxyjump", None)
    return settings_from(alias, g, hops)
