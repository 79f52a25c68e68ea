"""`distctl check --net`: each host's bandwidth and latency to rank 0's host, measured by
hostside/netbench.py (no torch): a server on rank 0's host at the job's address and port,
then each other host in turn (one at a time, so no link shares rank 0's with another).

The verdict is pure: a host is named when its bandwidth is below half the median of the
others' or below the floor (`--min-gbps`; with one worker only the floor applies)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from orchestrator.errors import HostError
from orchestrator.plan.model import Plan
from orchestrator.ssh.remote import Connection
from orchestrator.hostside import program

MIN_GBPS = 0.1  # GB/s; a 1 Gbit/s link gives 0.125, the test cluster's veths several GB/s
SECONDS = 1.0  # of sending per host


@dataclass(frozen=True)
class Link:
    host: str
    gbps: float | None = None  # GB/s to rank 0's host
    rtt_ms: float | None = None
    error: str | None = None


def gbs(value: float) -> str:
    return f"{value:.3g} GB/s"


def parse_measure(host: str, output: str) -> Link:
    for line in output.splitlines():
        if line.startswith("net error "):
            return Link(host, error=line[len("net error "):])
        if line.startswith("net "):
            fields = dict(word.split("=", 1) for word in line.split()[1:] if "=" in word)
            return Link(host, float(fields["gbps"]), float(fields["rtt_ms"]))
    return Link(host, error=f"no measurement ({output.strip()[-200:] or 'no output'})")


def measure(plan: Plan, conns: dict[str, Connection], seconds: float = SECONDS) -> list[Link]:
    """Every worker's link to rank 0's host, one after another."""
    first, workers = plan.hosts[0], plan.hosts[1:]
    if not workers:
        return []
    deadline = 30 + len(workers) * (seconds + 15)
    server = conns[first.host.name].open_stream(program(first.python, "netbench", "serve", plan.master_addr,
                                                        plan.port, len(workers), deadline))
    try:
        heard = b""
        while b"\n" not in heard:
            data = server.read()
            if not data:
                raise HostError(first.host.name, f"the network test's server did not start on "
                                                 f"{plan.master_addr}:{plan.port}")
            heard += data
        links = []
        for hp in workers:
            try:
                out = conns[hp.host.name].run(program(hp.python, "netbench", "measure", plan.master_addr, plan.port,
                                                      seconds), timeout=seconds + 60)
                links.append(parse_measure(hp.host.name, out.stdout))
            except HostError as exc:
                links.append(Link(hp.host.name, error=exc.cause))
        return links
    finally:
        server.close()


def slow_links(links: list[Link], rank0: str, min_gbps: float) -> list[str]:
    """One line per host below the floor or below half the others' median (or not measured)."""
    out = []
    for link in links:
        if link.gbps is None:
            out.append(f"{link.host}: not measured to {rank0}: {link.error}")
            continue
        others = [x.gbps for x in links if x is not link and x.gbps is not None]
        median = statistics.median(others) if others else None
        if link.gbps < min_gbps or (median is not None and link.gbps < median / 2):
            against = f"median {gbs(median)}" if median is not None else f"floor {gbs(min_gbps)}"
            if median is not None and link.gbps < min_gbps:
                against += f", floor {gbs(min_gbps)}"
            out.append(f"{link.host}: {gbs(link.gbps)} to {rank0}, {against}")
    return out


def link_lines(links: list[Link], rank0: str) -> list[str]:
    return [f"{link.host}: {gbs(link.gbps)}, {link.rtt_ms:.3g} ms round trip to {rank0}" if link.gbps is not None
            else f"{link.host}: not measured to {rank0}: {link.error}" for link in links]
