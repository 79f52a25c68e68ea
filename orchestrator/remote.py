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
import hashlib
import math
import os
import re
import shlex
import socket
import subprocess
import threading
from dataclasses import dataclass
from typing import Protocol

from orchestrator.errors import HostError, HostKeyError
from orchestrator.inventory import Host, Ssh


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

    def fileno(self) -> int:
        return self._proc.stdout.fileno()

    def read(self) -> bytes:
        return os.read(self.fileno(), 65536)

    def exit_code(self) -> int | None:
        return self._proc.wait()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait()
        self._proc.stdout.close()


class LocalConnection:
    """The workstation itself (`connection: local`), through `sh -c`."""

    def __init__(self, name: str):
        self.name = name
        self.peer = "127.0.0.1"

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


class SshConnection:
    """One opened SSH connection per host, reused for every step (channels are cheap)."""

    def __init__(self, name: str, fabric_connection):
        self.name = name
        self._conn = fabric_connection
        transport = fabric_connection.client.get_transport()
        try:
            self.peer = transport.getpeername()[0]
        except (OSError, TypeError, AttributeError):
            self.peer = None  # through a jump host: no socket of our own

    def _channel(self):
        try:
            return self._conn.client.get_transport().open_session()
        except Exception as exc:  # paramiko raises several unrelated types here
            raise HostError(self.name, f"connection lost: {exc}") from None

    def run(self, command: str, stdin: bytes = b"", timeout: float | None = None) -> Result:
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
        except socket.timeout:
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
        self._conn.close()


def _read_all(recv) -> bytes:
    chunks = []
    while True:
        data = recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


# --------------------------------------------------------------- host keys


_RECORD_LOCK = threading.Lock()  # hosts connect in parallel; one append at a time per file


def fingerprint(key) -> str:
    """OpenSSH's SHA256 fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _load_known_hosts(host_keys, paths: list[str]) -> set[bytes]:
    """Load known_hosts line by line; returns the `@revoked` key blobs.

    paramiko rejects a whole file for one line it can't parse (@cert-authority,
    @revoked, a key type it doesn't know), and splits on single spaces only;
    OpenSSH takes any whitespace and skips what it can't use.
    """
    from paramiko.hostkeys import HostKeyEntry

    entries, revoked = [], set()
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
            try:
                entry = HostKeyEntry.from_line(" ".join(fields[:3]))
            except Exception:  # paramiko raises several types for a malformed key
                continue
            if entry is None:
                continue
            if marker == "@revoked":
                revoked.add(entry.key.asbytes())
            elif marker is None:  # @cert-authority: host certificates are not supported
                entries.append(entry)
    for entry in entries:
        if entry.key.asbytes() not in revoked:
            for name in entry.hostnames:
                host_keys.add(name, entry.key.get_name(), entry.key)
    return revoked


def _keyscan_hint(hostname: str, record_to: str) -> str:
    """The ssh-keyscan command that adds the key under the name paramiko looks up."""
    match = re.fullmatch(r"\[(.*)\]:(\d+)", hostname)
    target = ["-p", match[2], match[1]] if match else [hostname]
    return f"ssh-keyscan {shlex.join(target)} >> {shlex.quote(os.path.expanduser(record_to))}"


def _record_host_key(path: str, hostname: str, key) -> None:
    """Append `hostname keytype base64` (OpenSSH's own form: `[host]:port` off port 22)."""
    path = os.path.expanduser(path)
    with _RECORD_LOCK:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        with open(path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # never glue our line onto an unterminated last one
                    f.write(b"\n")
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n".encode())


def _host_key_policy(host_name: str, accept_new: bool, record_to: str, revoked: set[bytes],
                     what: str = "host"):
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        """Unknown keys are refused (OpenSSH's StrictHostKeyChecking=yes) or, when the
        user asked for accept-new, recorded. A changed key never gets here: paramiko
        raises BadHostKeyException itself. A revoked key is refused either way."""

        def missing_host_key(self, client, hostname, key):
            shown = f"{key.get_name()} {fingerprint(key)}"
            if key.asbytes() in revoked:
                raise HostKeyError(host_name, f"{what} key for {hostname} ({shown}) is REVOKED in "
                                   "known_hosts; refusing to connect")
            if not accept_new:
                raise HostKeyError(host_name, (
                    f"unknown {what} key for {hostname} ({shown}); "
                    f"accept it with --accept-new-host-keys (or ssh.accept_new_host_keys: true), "
                    f"or add it with: {_keyscan_hint(hostname, record_to)}"))
            _record_host_key(record_to, hostname, key)
            client.get_host_keys().add(hostname, key.get_name(), key)

    return Policy()


# ------------------------------------------------------------------ connect


DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


def _secure(conn, host: Host, ssh: Ssh, what: str = "host") -> str:
    """Replace Fabric's silent auto-add policy on this connection and every gateway;
    returns the known_hosts file new keys are recorded in."""
    configured = conn.ssh_config.get("userknownhostsfile", "")
    files = list(ssh.known_hosts) + [f for f in configured.split() if f.lower() != "none"]
    revoked = _load_known_hosts(conn.client.get_host_keys(), files)
    record_to = files[0] if files else DEFAULT_KNOWN_HOSTS
    conn.client.set_missing_host_key_policy(_host_key_policy(host.name, ssh.accept_new_host_keys,
                                                             record_to, revoked, what))
    if conn.gateway and not isinstance(conn.gateway, str):  # a ProxyCommand string has no client
        _secure(conn.gateway, host, ssh, "jump host")
    return record_to


def _nodelay_transport(sock, *args, **kwargs):
    import paramiko

    if hasattr(sock, "setsockopt"):
        # Interactive request/response traffic: Nagle's delay costs ~40 ms per round trip.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return paramiko.Transport(sock, *args, **kwargs)


def connect(host: Host, ssh: Ssh) -> Connection:
    """Open the connection to one host; errors become a one-line HostError."""
    if host.is_local:
        return LocalConnection(host.name)
    from fabric import Config, Connection as FabricConnection

    config = Config(runtime_ssh_path=os.path.expanduser(ssh.config)) if ssh.config else Config()
    connect_kwargs = {"transport_factory": _nodelay_transport, "banner_timeout": ssh.connect_timeout,
                      "auth_timeout": ssh.connect_timeout}
    if host.identity_file:
        key_file = os.path.expanduser(host.identity_file)
        if not os.path.isfile(key_file):
            raise HostError(host.name, f"identity_file {host.identity_file} does not exist")
        connect_kwargs.update(key_filename=[key_file], look_for_keys=False)
    # Fabric int()s the timeout: 0.5 would become 0, which means no timeout at all.
    timeout = max(1, math.ceil(ssh.connect_timeout))
    conn = FabricConnection(host.address, user=host.user, port=host.port, config=config,
                            connect_timeout=timeout, connect_kwargs=connect_kwargs)
    _jump_chain(conn, config, timeout)
    record_to = _secure(conn, host, ssh)
    try:
        conn.open()
        conn.client.get_transport().set_keepalive(15)
    except HostError:
        conn.close()
        raise
    except Exception as exc:
        conn.close()
        raise _connect_error(exc, conn, host.name, timeout, record_to) from None
    return SshConnection(host.name, conn)


def _jump_chain(conn, config, timeout: int) -> None:
    """Gateways in OpenSSH's order. For `ProxyJump a,b` OpenSSH dials a, then b through a, then
    the target through b; Fabric builds the chain reversed (b first, then a through b), and takes
    `ProxyJump none` for a host called "none"."""
    from fabric import Connection as FabricConnection

    jump = conn.ssh_config.get("proxyjump", "").strip()
    if not jump:
        return
    if jump.lower() == "none":
        conn.gateway = None
        return
    gateway = None
    for hop in (h.strip() for h in jump.split(",")):
        # A later hop is dialled through the one before it, whatever its own ssh_config says.
        gateway = FabricConnection(hop, config=config.clone(), connect_timeout=timeout,
                                   connect_kwargs={"transport_factory": _nodelay_transport},
                                   **({"gateway": gateway} if gateway is not None else {}))
    conn.gateway = gateway


def _connect_error(exc: Exception, conn, name: str, timeout: int, known_hosts: str) -> HostError:
    """What went wrong while connecting, in one line that says what to do."""
    import paramiko

    where = f"{conn.host}:{conn.port}"
    if isinstance(exc, paramiko.BadHostKeyException):
        hop = _hop(conn, exc.hostname)  # the target, or the jump host whose key changed
        entry = _known_hosts_name(exc.hostname, hop.port)
        what = "host" if hop is conn else "jump host"
        return HostKeyError(name, (
            f"{what} key for {entry} CHANGED: got {exc.key.get_name()} {fingerprint(exc.key)}, "
            f"known_hosts has {exc.expected_key.get_name()} {fingerprint(exc.expected_key)}; refusing "
            f"to connect. If the host was really reinstalled: "
            f"ssh-keygen -R {shlex.quote(entry)} -f {shlex.quote(os.path.expanduser(known_hosts))}"))
    if isinstance(exc, paramiko.AuthenticationException):
        return HostError(name, f"authentication failed for {conn.user}@{conn.host}: {exc}")
    if isinstance(exc, paramiko.SSHException) and "No authentication methods available" in str(exc):
        return HostError(name, f"authentication failed for {conn.user}@{conn.host}: no key to offer "
                         "(set identity_file, or add a key to ssh-agent)")
    if isinstance(exc, socket.gaierror):
        return HostError(name, f"cannot resolve host name '{conn.host}'")
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


def _hop(conn, hostname: str):
    """The connection in the ProxyJump chain that dials `hostname` (the target by default)."""
    hop = conn
    while hop is not None and not isinstance(hop, str):
        if hop.host == hostname:
            return hop
        hop = hop.gateway
    return conn


def _known_hosts_name(hostname: str, port: int | None) -> str:
    """The name paramiko (and OpenSSH) file a host's key under: `[host]:port` off port 22."""
    return hostname if port in (None, 22) else f"[{hostname}]:{port}"
