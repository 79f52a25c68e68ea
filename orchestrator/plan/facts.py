"""Discovery: read-only commands run on each host, and pure parsers of their output.

Like pyinfra's facts, each fact is a command plus a `parse_*` function, so the
parsers are tested with captured output and no SSH.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator import shell
from orchestrator.hostside import program


@dataclass(frozen=True)
class IfAddr:
    iface: str
    address: str
    prefix: int


CLOCK_SKEW_WARN_S = 2.0  # a host clock off by more than this is worth a warning


@dataclass(frozen=True)
class Clock:
    """A host's clock against the workstation's: `offset` = host time - workstation time (s),
    known within ± `error` (half the round trip that read it)."""

    offset: float
    error: float


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    home: str
    addresses: tuple[IfAddr, ...]
    python: str | None  # version, None when the interpreter is missing
    torch: str | None
    torchvision: str | None
    gpus: int
    has_ip: bool
    loopback: str | None = None  # the loopback interface's name (lo, lo0 on macOS)
    time: float | None = None  # the host's clock during discovery (epoch seconds)
    clock: Clock | None = None  # set by the caller, who timed the discovery (measure_clock)

    def iface_of(self, address: str) -> str | None:
        return next((a.iface for a in self.addresses if a.address == address), None)


@dataclass(frozen=True)
class Route:
    """What `ip -4 route get DEST` says about reaching DEST from a host."""

    dest: str
    dev: str | None
    via: str | None
    local: bool  # DEST is one of this host's own addresses
    error: str | None = None


def discover_script(python: str) -> str:
    """One read-only script that prints `key=value` lines."""
    return shell.lines(
        'echo "home=$HOME"',
        'echo "hostname=$(hostname 2>/dev/null || uname -n)"',
        "if command -v ip >/dev/null 2>&1; then echo has_ip=1; "
        "ip -o -4 addr show | sed 's/^/addr=/'; else echo has_ip=0; fi",
        probe_script(python),
        "echo \"gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')\"",
    )


def probe_script(python: str) -> str:
    """`python=`, `torch=`, `torchvision=` lines for an interpreter (empty when missing)."""
    py = shell.join([python])
    return f"if command -v {py} >/dev/null 2>&1; then {program(python, 'probe')}; else echo python=; fi"


def parse_facts(output: str) -> HostFacts:
    values: dict[str, str] = {}
    addresses: list[IfAddr] = []
    for line in output.splitlines():
        key, _, value = line.partition("=")
        if key == "addr":
            addr = _parse_addr_line(value)
            if addr:
                addresses.append(addr)
        elif key:
            values.setdefault(key, value.strip())
    gpus = values.get("gpus", "0")
    return HostFacts(
        hostname=values.get("hostname", ""),
        home=values.get("home", ""),
        addresses=tuple(addresses),
        python=values.get("python") or None,
        torch=values.get("torch") or None,
        torchvision=values.get("torchvision") or None,
        gpus=int(gpus) if gpus.isdigit() else 0,
        has_ip=values.get("has_ip") == "1",
        loopback=values.get("loopback") or None,
        time=_float(values.get("time", "")),
    )


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def measure_clock(host_time: float | None, sent: float, received: float) -> Clock | None:
    """The host read its clock somewhere between `sent` and `received` (the workstation's clock,
    around the command that asked): take the midpoint, off by at most half the round trip."""
    if host_time is None:
        return None
    return Clock(host_time - (sent + received) / 2, (received - sent) / 2)


def clock_warnings(clocks: dict[str, Clock | None], limit: float = CLOCK_SKEW_WARN_S) -> list[str]:
    """One line per host whose clock is off by more than `limit` seconds, even at the far end of
    the measurement's error (a slow discovery alone never warns)."""
    return [f"{name}: its clock is {abs(c.offset):.1f} s {'ahead of' if c.offset > 0 else 'behind'} this "
            f"workstation's (±{c.error:.2f} s); distctl corrects the exit times it reads there, but "
            "timestamps in that host's logs and files are off: sync the clocks (NTP, chrony)"
            for name, c in clocks.items() if c and abs(c.offset) - c.error > limit]


def describe_clock(clock: Clock | None) -> str:
    """`clock +0.01 s (±0.03)`, or `clock unknown`."""
    return f"clock {clock.offset:+.2f} s (±{clock.error:.2f})" if clock else "clock unknown"


def _parse_addr_line(line: str) -> IfAddr | None:
    """`2: eth0    inet 10.0.0.2/24 brd ... scope global eth0` → IfAddr."""
    fields = line.split()
    try:
        at = fields.index("inet")
        iface = fields[1].rstrip(":").split("@")[0]
        address, _, prefix = fields[at + 1].partition("/")
        ipaddress.IPv4Address(address)
        return IfAddr(iface, address, int(prefix or 32))
    except (ValueError, IndexError):
        return None


def route_script(destinations: list[str]) -> str:
    """Ask the kernel how each destination is reached (works without a default route)."""
    return "for d in " + shell.join(destinations) + '; do echo "route $d $(ip -4 -o route get "$d" 2>&1)"; done'


def parse_routes(output: str) -> list[Route]:
    routes = []
    for line in output.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "route":
            continue
        dest, rest = fields[1], fields[2:]
        if not rest or rest[0] in ("RTNETLINK", "Error:") or "unreachable" in rest[:2]:
            routes.append(Route(dest, None, None, False, " ".join(rest) or "no route"))
            continue
        dev = rest[rest.index("dev") + 1] if "dev" in rest[:-1] else None
        via = rest[rest.index("via") + 1] if "via" in rest[:-1] else None
        routes.append(Route(dest, dev, via, rest[0] == "local"))
    return routes


def master_candidates(rank0: HostFacts, connected_to: str | None) -> list[str]:
    """Rank 0's own addresses worth trying, the one the workstation reached first."""
    own = [a.address for a in rank0.addresses if not ipaddress.IPv4Address(a.address).is_loopback]
    if connected_to in own:
        own.remove(connected_to)
        own.insert(0, connected_to)
    return own


def choose_route(routes: list[Route]) -> Route | None:
    """The best way to rank 0: a directly connected network first, then a routed one."""
    usable = [r for r in routes if r.dev and not r.error and r.dev != "lo"]
    direct = [r for r in usable if r.via is None]
    return (direct or usable)[0] if usable else None


def reaches_directly(address: str, routes: Mapping[str, Sequence[Route]]) -> bool:
    """Every worker reaches `address` without a gateway: `choose_master` takes it, whatever
    else rank 0 has, so discovery need not look up routes to its other addresses."""
    for found in routes.values():
        route = choose_route([r for r in found if r.dest == address])
        if route is None or route.via is not None:
            return False
    return True


@dataclass(frozen=True)
class MasterChoice:
    """The address of rank 0 that the workers dial and each worker's route to it; or, when no
    address is reachable from every worker, `address` None and the workers lacking a route."""

    address: str | None
    routes: dict[str, Route] = field(default_factory=dict, hash=False)  # worker -> its route
    unreached: tuple[str, ...] = ()


def choose_master(candidates: Sequence[str], routes: Mapping[str, Sequence[Route]]) -> MasterChoice:
    """The first of rank 0's addresses (`master_candidates` order) that every worker can reach,
    addresses every worker reaches directly before routed ones. `routes`: worker -> the
    routes it reported (`parse_routes`), to any of the candidates."""
    def chosen(address: str) -> dict[str, Route | None]:
        return {w: choose_route([r for r in found if r.dest == address]) for w, found in routes.items()}

    options = [(a, chosen(a)) for a in candidates]
    reachable = [(a, {w: r for w, r in c.items() if r}) for a, c in options if all(c.values())]
    direct = [(a, c) for a, c in reachable if all(r.via is None for r in c.values())]
    if direct or reachable:
        address, per_worker = (direct or reachable)[0]
        return MasterChoice(address, per_worker)
    return MasterChoice(None, unreached=tuple(sorted({w for _, c in options for w, r in c.items() if r is None})))
