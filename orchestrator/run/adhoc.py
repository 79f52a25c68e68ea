"""`distctl exec`: one ad-hoc command on every host of an inventory, like pdsh.

The command runs in each host's login shell (its home directory), from an argument list
quoted word by word: `distctl exec inv -- echo '$(id)'` prints `$(id)`. Shell syntax needs
a shell of its own: `distctl exec inv -- sh -c 'df -h | tail -n 1'`. A leading `python`
is the host's `python` setting, as for the ranks.

Output streams as it comes, one `[host] line` per line; at most `fanout` commands run at
once. A host that cannot be reached is reported and the others still run.
"""

from __future__ import annotations

import selectors
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator import shell
from orchestrator.ssh import group
from orchestrator.errors import DistctlError, ExitCode, HostError
from orchestrator.inventory.model import Host, Inventory
from orchestrator.ssh.remote import Connection
from orchestrator.ssh.stream import Followed

if TYPE_CHECKING:
    from orchestrator.console.ui import Ui


@dataclass(frozen=True)
class HostOutcome:
    """What became of the command on one host: its exit code, or why it never ran."""

    host: str
    code: int | None = None  # None: no exit status (killed by a signal) or never ran
    cause: str = ""  # set when the command could not run there
    error_code: ExitCode = ExitCode.UNREACHABLE

    @property
    def ok(self) -> bool:
        return not self.cause and self.code == 0

    def text(self) -> str:
        if self.cause:
            return f"{self.host}: not run: {self.cause}"
        if self.code is None:
            return f"{self.host}: no exit status (killed by a signal?)"
        return f"{self.host}: exit {self.code}"


def command_for(host: Host, argv: Sequence[str]) -> str:
    """The remote command line: every word quoted; a leading `python` is the host's python."""
    words = [host.python if argv[0] == "python" else argv[0], *argv[1:]]
    return shell.join(words)


def select_hosts(inv: Inventory, names: Sequence[str]) -> list[Host]:
    """The inventory's hosts, or those named (in inventory order); an unknown name is bad input."""
    known = {h.name for h in inv.hosts}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DistctlError(f"{inv.path}: no host {', '.join(repr(n) for n in unknown)} "
                           f"(hosts: {', '.join(h.name for h in inv.hosts)})", ExitCode.BAD_INPUT)
    return [h for h in inv.hosts if not names or h.name in names]


def run_everywhere(hosts: list[Host], conns: dict[str, Connection], argv: Sequence[str], fanout: int,
                   on_line: Callable[[str, str], None]) -> dict[str, HostOutcome]:
    """Run the command on every connected host, `fanout` at a time, calling `on_line(host, line)`
    for each whole line of combined stdout and stderr as it arrives."""
    waiting = deque(h for h in hosts if h.name in conns)
    outcomes: dict[str, HostOutcome] = {}
    running: dict[str, Followed] = {}
    sel = selectors.DefaultSelector()

    def start_more() -> None:
        while waiting and len(running) < fanout:
            host = waiting.popleft()
            try:
                followed = Followed(host.name, conns[host.name].open_stream(command_for(host, argv)))
            except HostError as exc:
                outcomes[host.name] = HostOutcome(host.name, cause=exc.cause, error_code=exc.exit_code)
                continue
            except Exception as exc:  # paramiko's own types, when the connection broke meanwhile
                outcomes[host.name] = HostOutcome(host.name, cause=f"{type(exc).__name__}: {exc}")
                continue
            running[host.name] = followed
            sel.register(followed.stream.fileno(), selectors.EVENT_READ, followed)

    try:
        start_more()
        while running:
            for key, _ in sel.select():
                followed: Followed = key.data
                try:
                    data = followed.stream.read()
                except OSError:
                    data = b""
                for line in followed.feed(data):
                    on_line(followed.host, line)
                sys.stdout.flush()  # rank_line leaves flushing to its caller: once per chunk
                if not data:
                    sel.unregister(key.fileobj)
                    code = followed.stream.exit_code()
                    outcomes[followed.host] = HostOutcome(followed.host, code if code is not None and code >= 0
                                                          else None)
                    running.pop(followed.host).stream.close()
                    start_more()
    finally:
        for followed in running.values():  # Ctrl-C: stop reading; the channels close
            followed.stream.close()
        sel.close()
    return outcomes


def exec_everywhere(inv: Inventory, argv: Sequence[str], names: Sequence[str], fanout: int, ui: Ui,
                    grouped: bool = False) -> None:
    """`distctl exec`: stream every host's output, then each host's exit code; raise unless all were 0.
    `grouped` (like dshbak -c): each host's output collected, identical outputs shown once."""
    hosts = select_hosts(inv, names)
    connected = group.connect_each(hosts, inv.ssh, fanout)
    conns = connected.ok
    outcomes = {name: HostOutcome(name, cause=e.cause, error_code=e.exit_code) for name, e in connected.failed.items()}
    collected: dict[str, list[str]] = {h.name: [] for h in hosts}
    on_line = (lambda host, line: collected[host].append(line)) if grouped else (
        lambda host, line: ui.rank_line(host, None, line))
    try:
        outcomes.update(run_everywhere(hosts, conns, argv, fanout, on_line))
    finally:
        group.close_all(conns)
    if grouped:
        for names_alike, lines in group_outputs(collected):
            for line in lines:
                ui.rank_line(",".join(names_alike), None, line)
        ui.flush_lines()
    report([outcomes[h.name] for h in hosts], ui)


def group_outputs(outputs: dict[str, list[str]]) -> list[tuple[list[str], list[str]]]:
    """Hosts whose output is identical, together (first-seen order); hosts with no output left out."""
    alike: dict[tuple[str, ...], list[str]] = {}
    for host, lines in outputs.items():
        if lines:
            alike.setdefault(tuple(lines), []).append(host)
    return [(hosts, list(lines)) for lines, hosts in alike.items()]


def report(outcomes: list[HostOutcome], ui: Ui) -> None:
    """One line per host; then success, or the error whose code is the documented one."""
    for o in outcomes:
        (ui.info if o.ok else ui.warn)(o.text())
    unreachable = [o for o in outcomes if o.cause]
    failed = [o for o in outcomes if not o.cause and not o.ok]
    if not unreachable and not failed:
        ui.info(f"the command exited 0 on {len(outcomes)} host(s)")
        return
    parts = []
    if failed:
        parts.append(f"the command failed on {len(failed)} of {len(outcomes)} host(s): "
                     + ", ".join(f"{o.host} ({'exit ' + str(o.code) if o.code is not None else 'no exit status'})"
                                 for o in failed))
    if unreachable:
        parts.append(f"not run on {', '.join(o.host for o in unreachable)} (could not connect)")
    # A host the command never reached is the stronger fact: its connect error's code wins.
    code = max(o.error_code for o in unreachable) if unreachable else ExitCode.EXEC_FAILED
    raise DistctlError("; ".join(parts), code)
