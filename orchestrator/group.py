"""The hosts as a group: one connection each, and a bounded fan-out that runs a step on every
host in parallel and collects every host's outcome before anything is reported (partial
failure is normal, as in Fabric's group.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from orchestrator.errors import ExitCode, GroupError, HostError, RemoteCommandError
from orchestrator.inventory import Host, Ssh
from orchestrator.remote import Connection, Result, connect, resolve_hosts
from orchestrator.ui import progress

T = TypeVar("T")
DEFAULT_FANOUT = 32


def fan_out(step: str, items: Iterable[T], fn: Callable[[T], object], fanout: int,
            name: Callable[[T], str]) -> dict[str, object]:
    """Run `fn` on every item, at most `fanout` at once; raise one GroupError for all failures."""
    items = list(items)
    results: dict[str, object] = {}
    errors: list[HostError] = []
    with ThreadPoolExecutor(max_workers=max(1, min(fanout, len(items) or 1))) as pool:
        futures = [(item, pool.submit(fn, item)) for item in items]
        for item, future in futures:
            try:
                results[name(item)] = future.result()
                progress(name(item), step, None)
            except HostError as exc:
                errors.append(exc)
                progress(name(item), step, exc.cause)
            except Exception as exc:  # one host's surprise must not hide the others' outcome
                errors.append(HostError(name(item), f"{type(exc).__name__}: {exc}"))
                progress(name(item), step, str(exc))
    if errors:
        raise GroupError(step, errors)
    return results


def connect_each(hosts: Iterable[Host], ssh: Ssh, fanout: int) -> tuple[dict[str, Connection], GroupError | None]:
    """One connection per host, opened in parallel: those that opened, and what failed."""
    opened: dict[str, Connection] = {}
    hosts = list(hosts)
    resolve_hosts(hosts, ssh)

    def open_one(host: Host) -> Connection:
        conn = connect(host, ssh)
        opened[host.name] = conn
        return conn

    try:
        fan_out("connect", hosts, open_one, fanout, lambda h: h.name)
        return opened, None
    except GroupError as exc:
        return opened, exc


def connect_all(hosts: Iterable[Host], ssh: Ssh, fanout: int) -> dict[str, Connection]:
    """One connection per host, or none at all: on any failure close the rest and raise."""
    opened, failed = connect_each(hosts, ssh, fanout)
    if failed:
        close_all(opened)
        raise failed
    return opened


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
