"""The hosts as a group: one connection each, and a bounded fan-out that runs a step on every
host in parallel and collects every host's outcome before anything is reported (partial
failure is normal, as in Fabric's group.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from orchestrator.errors import ExitCode, GroupError, HostError, RemoteCommandError
from orchestrator.inventory.model import Host, Ssh
from orchestrator.ssh.remote import Connection, Result, connect, resolve_hosts
from orchestrator.console.ui import progress

Item = TypeVar("Item")
T = TypeVar("T")
DEFAULT_FANOUT = 32


@dataclass(frozen=True)
class GroupResult(Generic[T]):
    """Every host's outcome of one step, like Fabric's GroupResult: what each host that
    succeeded returned, and why each of the others failed (keyed by the same names)."""

    ok: dict[str, T] = field(default_factory=dict)
    failed: dict[str, HostError] = field(default_factory=dict)

    def raise_for(self, step: str) -> dict[str, T]:
        """The successes when every host succeeded; else one GroupError naming every failure."""
        if self.failed:
            raise GroupError(step, list(self.failed.values()))
        return self.ok


def fan_out(step: str, items: Iterable[Item], fn: Callable[[Item], T], fanout: int,
            name: Callable[[Item], str]) -> GroupResult[T]:
    """Run `fn` on every item, at most `fanout` at once, and collect every outcome: nothing
    raises here, whatever failed (`.raise_for(step)` when one failure fails the step)."""
    items = list(items)
    ok: dict[str, T] = {}
    failed: dict[str, HostError] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(fanout, len(items) or 1))) as pool:
        futures = [(item, pool.submit(fn, item)) for item in items]
        for item, future in futures:
            key = name(item)
            try:
                ok[key] = future.result()
                progress(key, step, None)
            except HostError as exc:
                failed[key] = exc
                progress(key, step, exc.cause)
            except Exception as exc:  # one host's surprise must not hide the others' outcome
                failed[key] = HostError(key, f"{type(exc).__name__}: {exc}")
                progress(key, step, str(exc))
    return GroupResult(ok, failed)


def connect_each(hosts: Iterable[Host], ssh: Ssh, fanout: int) -> GroupResult[Connection]:
    """One connection per host, opened in parallel: those that opened, and what failed."""
    hosts = list(hosts)
    resolve_hosts(hosts, ssh)
    return fan_out("connect", hosts, lambda host: connect(host, ssh), fanout, lambda h: h.name)


def connect_all(hosts: Iterable[Host], ssh: Ssh, fanout: int) -> dict[str, Connection]:
    """One connection per host, or none at all: on any failure close the rest and raise."""
    opened = connect_each(hosts, ssh, fanout)
    if opened.failed:
        close_all(opened.ok)
    return opened.raise_for("connect")


def close_all(conns: dict[str, Connection]) -> None:
    for conn in conns.values():
        try:
            conn.close()
        except Exception:
            pass


def check(conn: Connection, command: str, what: str, stdin: bytes = b"", timeout: float = 120,
          exit_code: ExitCode = ExitCode.PREFLIGHT) -> Result:
    """Run one command on one host; a non-zero exit raises, naming the host, the step and the cause."""
    result = conn.run(command, stdin=stdin, timeout=timeout)
    if result.exit_code != 0:
        raise RemoteCommandError(conn.name, what, result.exit_code, result.stderr or result.stdout, exit_code)
    return result
