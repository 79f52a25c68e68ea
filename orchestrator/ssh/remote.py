"""The one module that talks to hosts: SSH through Fabric/paramiko, or a local shell.

Both connection kinds offer the same small interface: `run` a command (with
optional stdin) to completion, or `open_stream` a command whose combined output
is read incrementally through a file descriptor that `selectors` can watch.
Commands are always run without a pty: a pty merges streams, rewrites newlines
and sends SIGHUP to detached processes when the channel closes.
"""

from __future__ import annotations

import base64
import errno
import json
import hashlib
import math
import os
import shlex
import socket
import subprocess
import threading
from dataclasses import dataclass
from typing import Protocol

from orchestrator.ssh import knownhosts
from orchestrator.ssh import config as sshconfig
from orchestrator.errors import HostError, HostKeyError
from orchestrator.inventory.model import Host, Ssh
from orchestrator.ssh.config import SshSettings


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str


class Stream(Protocol):
    def fileno(self) -> int: ...
    def read(self) -> bytes: ...  # b"" at end of output
    def exit_code(self) -> int | None: ...
    def close(self) -> None: ...


class Connection(Protocol):
    name: str
    peer: str | None  # the IP address the workstation reached, when known

    def run(self, command: str, stdin: bytes = b"", timeout: float | None = None) -> Result: ...
    def open_stream(self, command: str) -> Stream: ...
    def close(self) -> None: ...


# ------------------------------------------------------------------ local


class _LocalStream:
    def __init__(self, command: str):
        self._proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self._proc.stdout is not None  # stdout=PIPE
        self._stdout = self._proc.stdout

    def fileno(self) -> int:
        return self._stdout.fileno()

    def read(self) -> bytes:
        return os.read(self.fileno(), 65536)

    def exit_code(self) -> int | None:
        return self._proc.wait()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait()
        self._stdout.close()


class LocalConnection:
    """The workstation itself (`connection: local`), through `sh -c`."""

    def __init__(self, name: str):
        self.name = name
        self.peer: str | None = "127.0.0.1"

    def run(self, command: str, stdin: bytes = b"", timeout: float | None = None) -> Result:
        try:
            done = subprocess.run(["sh", "-c", command], input=stdin, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HostError(self.name, f"command timed out after {timeout:g} s") from None
        return Result(done.returncode, _text(done.stdout), _text(done.stderr))

    def open_stream(self, command: str) -> Stream:
        return _LocalStream(command)

    def close(self) -> None:
        pass


# -------------------------------------------------------------------- ssh


class _ChannelStream:
    def __init__(self, channel):
        self._chan = channel

    def fileno(self) -> int:
        return self._chan.fileno()

    def read(self) -> bytes:
        return self._chan.recv(65536)

    def exit_code(self) -> int | None:
        return self._chan.recv_exit_status()

    def close(self) -> None:
        self._chan.close()


CHANNEL_OPEN_TIMEOUT_S = 10.0


class SshConnection:
    """One opened SSH connection per host, reused for every step (channels are cheap)."""

    def __init__(self, name: str, fabric_connection):
        self.name = name
        self._conn = fabric_connection
        self._session: _Session | None = None
        self._no_session = False
        self._session_lock = threading.Lock()
        transport = fabric_connection.client.get_transport()
        try:
            self.peer = transport.getpeername()[0]
        except (OSError, TypeError, AttributeError):
            self.peer = None  # through a jump host: no socket of our own

    def _channel(self):
        try:
            # Bounded: on a stalled link the server's answer never comes (paramiko waits an hour).
            return self._conn.client.get_transport().open_session(timeout=CHANNEL_OPEN_TIMEOUT_S)
        except Exception as exc:  # paramiko raises several unrelated types here
            raise HostError(self.name, f"connection lost: {exc}") from None

    def run(self, command: str, stdin: bytes = b"", timeout: float | None = None) -> Result:
        """Through the host's command session when it has one (no login shell per command),
        else on a channel of its own."""
        with self._session_lock:
            session = self._session_or_none()
            if session is not None:
                try:
                    return session.run(command, stdin, timeout)
                except BaseException:
                    # Mid-answer the session is out of step (Ctrl-C, a lost link): never reuse it.
                    self._session = None
                    session.close()
                    raise
        return self._run_channel(command, stdin, timeout)

    def _session_or_none(self) -> _Session | None:
        if self._session is None and not self._no_session:
            try:
                self._session = _Session.start(self, self._channel())
            except HostError:
                self._no_session = True  # no python3 there, or it would not start: plain channels
        return self._session

    def _run_channel(self, command: str, stdin: bytes = b"", timeout: float | None = None) -> Result:
        chan = self._channel()
        try:
            chan.settimeout(timeout)
            chan.exec_command(command)
            if stdin:
                # paramiko's sendall re-slices what is left after every packet: on bytes each
                # slice copies the rest (a 55 MB push took 25 s instead of 0.5 s); a view doesn't.
                chan.sendall(memoryview(stdin))
            chan.shutdown_write()
            stdout = _read_all(chan.recv)
            stderr = _read_all(chan.recv_stderr)
            return Result(chan.recv_exit_status(), _text(stdout), _text(stderr))
        except TimeoutError:
            raise HostError(self.name, f"command timed out after {timeout:g} s") from None
        except OSError as exc:
            raise HostError(self.name, f"connection lost: {exc}") from None
        finally:
            chan.close()

    def open_stream(self, command: str) -> Stream:
        chan = self._channel()
        chan.set_combine_stderr(True)
        chan.exec_command(command)
        chan.shutdown_write()
        return _ChannelStream(chan)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        self._conn.close()


class _Session:
    """The host side is orchestrator/hostside/session.py: one JSON header line each way,
    then the bytes it announces."""

    READY_TIMEOUT_S = 20.0

    def __init__(self, name: str, chan):
        self.name = name
        self._chan = chan
        self._buffer = bytearray()

    @classmethod
    def start(cls, conn: SshConnection, chan) -> _Session:
        from orchestrator.hostside import program

        session = cls(conn.name, chan)
        try:
            chan.settimeout(cls.READY_TIMEOUT_S)
            chan.exec_command("exec " + program("python3", "session"))
            if session._line() != b"ready":
                raise HostError(conn.name, "command session did not start")
        except (OSError, EOFError, ValueError):
            session.close()
            raise HostError(conn.name, "command session did not start") from None
        except HostError:
            session.close()
            raise
        return session

    def run(self, command: str, stdin: bytes, timeout: float | None) -> Result:
        request = {"cmd": command, "stdin": len(stdin), "timeout": timeout}
        # The host enforces the timeout; the workstation waits a little longer for its answer.
        self._chan.settimeout(None if timeout is None else timeout + 30)
        try:
            self._chan.sendall(json.dumps(request).encode() + b"\n")
            if stdin:
                self._chan.sendall(memoryview(stdin))  # a view: see _run_channel
            answer = json.loads(self._line())
            out = self._exact(int(answer["out"]))
            err = self._exact(int(answer["err"]))
        except TimeoutError:
            raise HostError(self.name, f"command timed out after {timeout:g} s") from None
        except (OSError, EOFError, ValueError, KeyError) as exc:
            raise HostError(self.name, f"connection lost: {exc or 'session ended'}") from None
        if answer.get("timed_out"):  # told apart from a command that exits 124 itself
            raise HostError(self.name, f"command timed out after {timeout:g} s")
        return Result(int(answer["exit"]), _text(out), _text(err))

    def _line(self) -> bytes:
        while b"\n" not in self._buffer:
            self._fill()
        at = self._buffer.index(b"\n")
        line = bytes(self._buffer[:at])
        del self._buffer[:at + 1]
        return line

    def _exact(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._fill()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def _fill(self) -> None:
        chunk = self._chan.recv(65536)
        if not chunk:
            raise EOFError
        self._buffer += chunk

    def close(self) -> None:
        try:
            self._chan.close()
        except Exception:
            pass


def _read_all(recv) -> bytes:
    chunks: list[bytes] = []
    while True:
        data = recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


# --------------------------------------------------------------- host keys


def fingerprint(key) -> str:
    """OpenSSH's SHA256 fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _load_known_hosts(name: str, paths: list[str]) -> tuple[list, set[bytes]]:
    """The keys the files hold for `name` (not revoked), and every `@revoked` key blob."""
    from paramiko.hostkeys import HostKeyEntry

    keys, revoked = [], set()
    for entry in knownhosts.read_entries(paths):
        try:
            parsed = HostKeyEntry.from_line(f"x {entry.keytype} {entry.key}")
        except Exception:  # paramiko raises several types for a malformed key
            continue
        if parsed is None:
            continue  # a key type paramiko does not know
        if entry.marker == "@revoked":
            revoked.add(parsed.key.asbytes())
        elif entry.marker is None and knownhosts.matches(name, entry.hosts):  # no host certificates
            keys.append(parsed.key)
    return [k for k in keys if k.asbytes() not in revoked], revoked


@dataclass(frozen=True)
class _HostKeys:
    """Where one hop's host key is looked up and recorded, and what to do with a new one."""

    name: str  # `host`, `[host]:port`, or the HostKeyAlias
    files: tuple[str, ...]  # user files, then global ones
    record_to: str | None  # the first user file in effect (None: `UserKnownHostsFile none`)
    accept_new: bool
    hashed: bool


def _host_keys(hop: SshSettings, ssh: Ssh) -> _HostKeys:
    # ssh.known_hosts acts like `-o UserKnownHostsFile=` for every hop: it replaces ssh_config's.
    user = [f for f in (ssh.known_hosts or hop.userknownhostsfile) if f.lower() != "none"]
    accept_new = ssh.accept_new_host_keys or hop.stricthostkeychecking in ("accept-new", "no", "off")
    return _HostKeys(knownhosts.lookup_name(hop.hostname, hop.port, hop.hostkeyalias),
                     (*user, *(f for f in hop.globalknownhostsfile if f.lower() != "none")),
                     user[0] if user else None, accept_new, hop.hashknownhosts)


def _secure(client, host_name: str, hop: SshSettings, ssh: Ssh, what: str) -> _HostKeys:
    """Load this hop's known keys under the name paramiko looks up, and refuse unknown ones
    (Fabric's own policy silently adds them)."""
    import paramiko

    keys = _host_keys(hop, ssh)
    known, revoked = _load_known_hosts(keys.name, list(keys.files))
    store = client.get_host_keys()
    for key in known:
        store.add(knownhosts.lookup_name(hop.hostname, hop.port), key.get_name(), key)  # paramiko's name

    class Policy(paramiko.MissingHostKeyPolicy):
        """Unknown keys are refused (OpenSSH's StrictHostKeyChecking=yes) or, when the user
        asked for accept-new, recorded. A changed key never gets here: paramiko raises
        BadHostKeyException itself. A revoked key is refused either way."""

        def missing_host_key(self, client, hostname, key):
            shown = f"{key.get_name()} {fingerprint(key)}"
            if key.asbytes() in revoked:
                raise HostKeyError(host_name, f"{what} key for {keys.name} ({shown}) is REVOKED in "
                                   "known_hosts; refusing to connect")
            record_to = keys.record_to or DEFAULT_KNOWN_HOSTS
            if not keys.accept_new or keys.record_to is None:
                raise HostKeyError(host_name, (
                    f"unknown {what} key for {keys.name} ({shown}); "
                    f"accept it with --accept-new-host-keys (or ssh.accept_new_host_keys: true), "
                    f"or add it with: {knownhosts.keyscan_hint(hop.hostname, hop.port, hop.hostkeyalias, record_to)}"))
            knownhosts.record(record_to, keys.name, key.get_name(), key.get_base64(), keys.hashed)
            client.get_host_keys().add(hostname, key.get_name(), key)

    client.set_missing_host_key_policy(Policy())
    return keys


# ------------------------------------------------------------------ connect


DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
DEFAULT_CONNECT_TIMEOUT = 10


def _nodelay_transport(sock, *args, **kwargs):
    import paramiko

    if hasattr(sock, "setsockopt"):
        # Interactive request/response traffic: Nagle's delay costs ~40 ms per round trip.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return paramiko.Transport(sock, *args, **kwargs)


def resolve_host(host: Host, ssh: Ssh) -> SshSettings:
    """The host's effective settings: ssh_config as `ssh -G` reads it, the inventory's own
    user/port/identity_file applied like `ssh -l/-p/-i`."""
    return sshconfig.resolve(host.address, ssh.config, host.user, host.port, host.identity_file)


def resolve_hosts(hosts: list[Host], ssh: Ssh) -> dict[str, SshSettings]:
    """Every SSH host's settings before any connection opens: an ssh_config that ssh rejects is
    one bad-input error, not one failure per host; keywords distctl does not honour are said once."""
    from concurrent.futures import ThreadPoolExecutor

    remote = [h for h in hosts if not h.is_local]
    with ThreadPoolExecutor(max(1, min(16, len(remote)))) as pool:  # ssh -G: ~5 ms CPU, more on a busy box
        found = dict(zip((h.name for h in remote), pool.map(lambda h: resolve_host(h, ssh), remote)))
    ignored = sorted({k for s in found.values() for hop in (*s.proxyjump, s) for k in hop.ignored})
    if ignored:
        sshconfig.warn_once(f"ssh_config sets {', '.join(ignored)}, which distctl does not honour "
                            "(it opens its own connections with paramiko)")
    return found


def connect(host: Host, ssh: Ssh) -> Connection:
    """Open the connection to one host, through its jump hosts; errors become a one-line
    HostError that names the hop that failed."""
    if host.is_local:
        return LocalConnection(host.name)
    if host.identity_file and not os.path.isfile(os.path.expanduser(host.identity_file)):
        # Checked when the inventory is loaded; a run's saved state may outlive the key.
        raise HostError(host.name, f"identity_file {host.identity_file} does not exist")
    settings = resolve_host(host, ssh)
    # Fabric int()s the timeout: 0.5 would become 0, which means no timeout at all.
    timeout = max(1, math.ceil(ssh.connect_timeout or settings.connecttimeout or DEFAULT_CONNECT_TIMEOUT))
    gateway, opened = None, []
    try:
        for hop in settings.proxyjump:
            gateway = _open_hop(host.name, hop, ssh, gateway, timeout, f"jump host {hop.alias} ({hop.hostname})")
            opened.append(gateway)
        conn = _open_hop(host.name, settings, ssh, gateway, timeout, None)
    except BaseException:
        for conn in reversed(opened):
            conn.close()
        raise
    conn.client.get_transport().set_keepalive(15)
    return SshConnection(host.name, conn)


def _open_hop(name: str, hop: SshSettings, ssh: Ssh, gateway, timeout: int, via: str | None):
    """One Fabric connection from resolved settings (Fabric reads no ssh_config itself), opened."""
    import paramiko
    from fabric import Config, Connection as FabricConnection

    keys = [f for f in hop.identityfile if os.path.isfile(f)]  # ssh skips missing ones silently
    connect_kwargs = {"transport_factory": _nodelay_transport, "banner_timeout": timeout,
                      "auth_timeout": timeout, "key_filename": keys, "look_for_keys": False,
                      "allow_agent": hop.identityagent and not hop.identitiesonly}
    if hop.proxycommand:
        # Like ssh: through the shell, tokens already expanded.
        connect_kwargs["sock"] = paramiko.ProxyCommand(shlex.join(["/bin/sh", "-c", f"exec {hop.proxycommand}"]))
    conn = FabricConnection(hop.hostname, user=hop.user, port=hop.port, connect_timeout=timeout,
                            config=Config(ssh_config=paramiko.SSHConfig()), connect_kwargs=connect_kwargs,
                            gateway=gateway if gateway is not None else False)
    what = "host" if via is None else "jump host"
    keys_in_use = _secure(conn.client, name, hop, ssh, what)
    try:
        conn.open()
    except HostError:
        conn.close()
        raise
    except Exception as exc:
        proxy_error = _proxy_stderr(connect_kwargs.get("sock"))
        try:
            conn.close()
        except OSError:  # paramiko signals a ProxyCommand that already ended
            pass
        error = _connect_error(exc, hop, name, timeout, keys_in_use, what, gateway, proxy_error)
        if via is not None and not isinstance(error, HostKeyError):
            error = type(error)(name, f"{via}: {error.cause}")
        raise error from None
    return conn


def _proxy_stderr(proxy) -> str:
    """The last line a ProxyCommand that already ended wrote to stderr (why it failed)."""
    if proxy is None or proxy.process.poll() is None:
        return ""
    lines = proxy.process.stderr.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"it exited {proxy.process.returncode}"


def _connect_error(exc: Exception, hop: SshSettings, name: str, timeout: int, keys: _HostKeys,
                   what: str, gateway, proxy_error: str = "") -> HostError:
    """What went wrong while connecting, in one line that says what to do."""
    import paramiko

    where = f"{hop.hostname}:{hop.port}"
    if isinstance(exc, paramiko.BadHostKeyException):
        return HostKeyError(name, (
            f"{what} key for {keys.name} CHANGED: got {exc.key.get_name()} {fingerprint(exc.key)}, "
            f"known_hosts has {exc.expected_key.get_name()} {fingerprint(exc.expected_key)}; refusing "
            f"to connect. If the host was really reinstalled: "
            f"ssh-keygen -R {shlex.quote(keys.name)} "
            f"-f {shlex.quote(os.path.expanduser(keys.record_to or DEFAULT_KNOWN_HOSTS))}"))
    if isinstance(exc, paramiko.AuthenticationException):
        return HostError(name, f"authentication failed for {hop.user}@{hop.hostname}: {exc}")
    if isinstance(exc, paramiko.SSHException) and "No authentication methods available" in str(exc):
        return HostError(name, f"authentication failed for {hop.user}@{hop.hostname}: no key to offer "
                         "(set identity_file, or add a key to ssh-agent)")
    if isinstance(exc, paramiko.ChannelException) and gateway is not None:
        return HostError(name, f"the jump host could not open a connection to {where}: {exc}")
    if hop.proxycommand and isinstance(exc, (paramiko.SSHException, paramiko.ProxyCommandFailure, EOFError, OSError)):
        return HostError(name, f"ProxyCommand {hop.proxycommand!r} for {where} failed: "
                         f"{proxy_error or str(exc) or type(exc).__name__}")
    if isinstance(exc, socket.gaierror):
        return HostError(name, f"cannot resolve host name '{hop.hostname}'")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return HostError(name, f"connection to {where} timed out after {timeout} s")
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        # paramiko folds refused / unreachable (one per address family) into this one type
        codes = {e.errno for e in exc.errors.values()}
        if codes == {errno.ECONNREFUSED}:
            return HostError(name, f"connection to {where} refused (is sshd running?)")
        if codes == {errno.EHOSTUNREACH}:
            return HostError(name, f"no route to {where} (host down or unreachable)")
    if isinstance(exc, ConnectionRefusedError):
        return HostError(name, f"connection to {where} refused (is sshd running?)")
    if isinstance(exc, (OSError, paramiko.SSHException, EOFError)):
        return HostError(name, f"cannot connect to {where}: {str(exc) or type(exc).__name__}")
    return HostError(name, f"cannot connect to {where}: {type(exc).__name__}: {exc}")
