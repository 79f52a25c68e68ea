"""`distctl clean`: take old runs, and the code, data and setup folders no remaining run uses,
off the hosts of an inventory. Each host judges for itself (hostside/clean.py): a run stays
while any of its processes lives, whoever started it, or while it changed recently.

    distctl clean inventory.yaml --older-than 7d --dry-run
    distctl clean inventory.yaml --yes
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import click

from orchestrator.ssh import group
from orchestrator.launch.artifacts import format_bytes
from orchestrator.errors import DistctlError, ExitCode
from orchestrator.inventory.model import Host, Inventory
from orchestrator.launch.preflight import tool_python
from orchestrator.ssh.remote import Connection
from orchestrator.hostside import program

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """`7d`, `12h`, `30m`, `90s`, `2w` (a bare number: days) -> seconds; bad input exits 2."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not found:
        raise DistctlError(f"--older-than {text!r}: expected a number with s, m, h, d or w (e.g. 7d)",
                           ExitCode.BAD_INPUT)
    return float(found[1]) * _UNITS[found[2] or "d"]


@dataclass(frozen=True)
class Found:
    """What one host may lose: (item, description, bytes) for each run and folder."""

    items: list[tuple[str, str, int]]


def parse_list(output: str) -> Found:
    items = []
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[0] == "run" and fields[2].isdigit() and fields[3].isdigit():
            items.append((f"run:{fields[1]}", f"run {fields[1]} (unchanged for {_age(int(fields[2]))})",
                          int(fields[3])))
        elif len(fields) == 3 and fields[0] == "folder" and fields[2].isdigit():
            items.append((f"folder:{fields[1]}", f"{fields[1]} (no remaining run uses it)", int(fields[2])))
    return Found(items)


def _age(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _command(host: Host, older_s: float, mode: str, items: Sequence[str] = ()) -> str:
    return program(tool_python(host), "clean", host.workdir, f"{older_s:g}", mode, *items)


def clean(inv: Inventory, older_s: float, dry_run: bool, yes: bool, fanout: int, ui) -> None:
    connected = group.connect_each(inv.hosts, inv.ssh, fanout)
    conns: dict[str, Connection] = connected.ok
    try:
        def one(h: Host) -> Found:
            return parse_list(conns[h.name].run(_command(h, older_s, "list"), timeout=300).stdout)

        listed = group.fan_out("clean", [h for h in inv.hosts if h.name in conns], one, fanout, lambda h: h.name)
        problems = {**{n: e.cause for n, e in connected.failed.items()},
                    **{n: e.cause for n, e in listed.failed.items()}}
        total = sum(size for found in listed.ok.values() for _, _, size in found.items)
        for h in inv.hosts:
            for _, text, size in listed.ok.get(h.name, Found([])).items:
                ui.out(f"{h.name}: {text}, {format_bytes(size)}")
        count = sum(len(f.items) for f in listed.ok.values())
        if not count:
            ui.info("nothing to clean" + (" on the hosts reached" if problems else ""))
        elif dry_run:
            ui.info(f"would remove {count} item(s), {format_bytes(total)} (dry run: nothing removed)")
        elif _confirmed(yes, count, total):
            problems.update(_remove(inv, conns, listed.ok, older_s, fanout, ui))
    finally:
        group.close_all(conns)
    if problems:
        raise DistctlError("clean incomplete: " + "; ".join(f"{h}: {c}" for h, c in sorted(problems.items())),
                           ExitCode.PARTIAL)


def _confirmed(yes: bool, count: int, total: int) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise DistctlError("clean asks before it removes anything: run it on a terminal, or add --yes "
                           "(--dry-run lists only)", ExitCode.BAD_INPUT)
    return bool(click.confirm(f"remove these {count} item(s), {format_bytes(total)}?", default=False, err=True))


def _remove(inv: Inventory, conns: dict[str, Connection], found: dict[str, Found], older_s: float, fanout: int,
            ui) -> dict[str, str]:
    """Each host removes what it listed and still judges removable; returns hosts that failed."""
    def one(h: Host) -> tuple[int, int, list[str]]:
        items = [item for item, _, _ in found[h.name].items]
        out = conns[h.name].run(_command(h, older_s, "remove", items), timeout=3600).stdout
        removed = [line.split() for line in out.splitlines() if line.startswith("removed ")]
        kept = [line.partition(" ")[2] for line in out.splitlines() if line.startswith("kept ")]
        return len(removed), sum(int(f[2]) for f in removed if len(f) == 3 and f[2].isdigit()), kept

    done = group.fan_out("clean", [h for h in inv.hosts if found.get(h.name, Found([])).items], one, fanout,
                         lambda h: h.name)
    for name, (_, _, kept) in done.ok.items():
        for line in kept:
            ui.warn(f"{name}: kept {line}")
    count = sum(n for n, _, _ in done.ok.values())
    ui.info(f"removed {count} item(s), {format_bytes(sum(b for _, b, _ in done.ok.values()))}")
    return {n: e.cause for n, e in done.failed.items()}
