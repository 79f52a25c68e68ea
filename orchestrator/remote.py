"""The one module that talks to hosts: SSH through Fabric/paramiko, or a local shell.

Both connection kinds offer the same small interface: `run` a command (with
optional stdin) to completion, or `open_stream` a command whose combined output
is read incrementally through a file descriptor that `selectors` can watch.
Commands are always run without a pty: a pty merges streams, rewrites newlines
and sends SIGHUP to detached processes when the channel closes.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import subprocess
from dataclasses import dataclass
from typing import Protocol

from orchestrator.errors import ExitCode, HostError, HostKeyError
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
                chan.sendall(stdin)
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


def fingerprint(key) -> str:
    """OpenSSH's SHA256 fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _load_known_hosts(host_keys, paths: list[str]) -> None:
    """Load known_hosts line by line: paramiko rejects a whole file for one line it
    can't parse (@cert-authority, @revoked)."""
    from paramiko.hostkeys import HostKeyEntry, InvalidHostKey

    for path in paths:
        try:
            with open(os.path.expanduser(path), encoding="utf-8", errors="replace") as f:
                lines = f.readlines()
        except OSError:
            continue
        for line in lines:
            if not line.strip() or line.startswith(("#", "@")):
                continue
            try:
                entry = HostKeyEntry.from_line(line)
            except (InvalidHostKey, ValueError, TypeError, IndexError, Exception):
                continue
            if entry is None:
                continue
            for name in entry.hostnames:
                host_keys.add(name, entry.key.get_name(), entry.key)


def _host_key_policy(host_name: str, accept_new: bool, record_to: str):
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        """Unknown keys are refused (OpenSSH's StrictHostKeyChecking=yes) or, when the
        user asked for accept-new, recorded. A changed key never gets here: paramiko
        raises BadHostKeyException itself."""

        def missing_host_key(self, client, hostname, key):
            if not accept_new:
                raise HostKeyError(host_name, (
                    f"unknown host key for {hostname} ({key.get_name()} {fingerprint(key)}); "
                    f"accept it with --accept-new-host-keys (or ssh.accept_new_host_keys: true), "
                    f"or add it with: ssh-keyscan {hostname.strip('[').split(']')[0]} >> {record_to}"))
            path = os.path.expanduser(record_to)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")

    return Policy()


# ------------------------------------------------------------------ connect


def _secure(conn, host: Host, ssh: Ssh) -> None:
    """Replace Fabric's silent auto-add policy on this connection and every gateway."""
    configured = conn.ssh_config.get("userknownhostsfile", "")
    files = list(ssh.known_hosts) + configured.split()
    _load_known_hosts(conn.client.get_host_keys(), files)
    conn.client.set_missing_host_key_policy(_host_key_policy(host.name, ssh.accept_new_host_keys, files[0]))
    if conn.gateway is not None and not isinstance(conn.gateway, str) and conn.gateway is not False:
        _secure(conn.gateway, host, ssh)


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
    import paramiko
    from fabric import Config, Connection as FabricConnection

    config = Config(runtime_ssh_path=os.path.expanduser(ssh.config)) if ssh.config else Config()
    connect_kwargs = {"transport_factory": _nodelay_transport, "banner_timeout": ssh.connect_timeout,
                      "auth_timeout": ssh.connect_timeout}
    if host.identity_file:
        connect_kwargs.update(key_filename=[os.path.expanduser(host.identity_file)], look_for_keys=False)
    conn = FabricConnection(host.address, user=host.user, port=host.port, config=config,
                            connect_timeout=ssh.connect_timeout, connect_kwargs=connect_kwargs)
    _secure(conn, host, ssh)
    try:
        conn.open()
        conn.client.get_transport().set_keepalive(15)
    except HostError:
        conn.close()
        raise
    except paramiko.BadHostKeyException as exc:
        conn.close()
        raise HostKeyError(host.name, (
            f"host key for {exc.hostname} CHANGED: got {exc.key.get_name()} {fingerprint(exc.key)}, "
            f"known_hosts has {fingerprint(exc.expected_key)}; refusing to connect. If the host was "
            f"really reinstalled: ssh-keygen -R {exc.hostname}")) from None
    except paramiko.AuthenticationException as exc:
        conn.close()
        raise HostError(host.name, f"authentication failed for {conn.user}@{conn.host}: {exc}") from None
    except socket.gaierror:
        conn.close()
        raise HostError(host.name, f"cannot resolve host name '{conn.host}'") from None
    except (socket.timeout, TimeoutError):
        conn.close()
        raise HostError(host.name, f"connection to {conn.host}:{conn.port} timed out "
                        f"after {ssh.connect_timeout:g} s") from None
    except ConnectionRefusedError:
        conn.close()
        raise HostError(host.name, f"connection to {conn.host}:{conn.port} refused (is sshd running?)") from None
    except (OSError, paramiko.SSHException, EOFError) as exc:
        conn.close()
        raise HostError(host.name, f"cannot connect to {conn.host}:{conn.port}: {exc or type(exc).__name__}",
                        ExitCode.UNREACHABLE) from None
    return SshConnection(host.name, conn)
