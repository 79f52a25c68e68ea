"""Discovery: read-only facts from every host, then which of rank 0's addresses the workers
dial. The commands and their parsers, and the route decision itself, live in `facts`; this
module runs them and turns what they found into a `Network` or an error per host."""

from __future__ import annotations

import time
from dataclasses import replace

from orchestrator.plan import facts as facts_mod
from orchestrator import shell
from orchestrator.errors import ExitCode, GroupError, HostError
from orchestrator.plan.facts import HostFacts, Route
from orchestrator.ssh.group import check, fan_out
from orchestrator.inventory.model import Host, Inventory
from orchestrator.plan.model import Network
from orchestrator.ssh.remote import Connection


def discover(inv: Inventory, conns: dict[str, Connection], fanout: int) -> tuple[dict[str, HostFacts], Network]:
    """Read-only facts from every host, then the address of rank 0 each worker dials.

    Every remote command costs a round trip plus the login shell's start-up (a conda or
    pyenv block in ~/.bashrc takes a quarter of a second), so each worker's discovery also
    asks how it reaches the address the workstation reached rank 0 at. A second round of
    route lookups runs only when that address is not directly reachable from every worker.
    """
    rank0, workers = inv.hosts[0], inv.hosts[1:]
    peer = conns[rank0.name].peer
    guess = [peer] if workers and peer else []

    def one(h: Host) -> tuple[HostFacts, list[Route]]:
        script = facts_mod.discover_script(h.python)
        if h is not rank0 and guess:
            script = shell.lines(script, facts_mod.route_script(guess))
        sent = time.time()  # wall clocks: the host's offset from ours
        out = check(conns[h.name], script, "discovery", timeout=60).stdout
        received = time.time()
        found = facts_mod.parse_facts(out)  # each parser skips the other's lines
        return replace(found, clock=facts_mod.measure_clock(found.time, sent, received)), facts_mod.parse_routes(out)

    found = fan_out("discover", inv.hosts, one, fanout, lambda h: h.name).raise_for("discover")
    host_facts = {name: f for name, (f, _) in found.items()}
    if not workers:
        return host_facts, Network("127.0.0.1", {rank0.name: host_facts[rank0.name].loopback or "lo"})
    missing_ip = [h.name for h in inv.hosts if not host_facts[h.name].has_ip]
    if missing_ip:
        raise GroupError("discover", [HostError(n, "the 'ip' command (iproute2) is missing; "
                                                "install it to let distctl find the network",
                                                ExitCode.PREFLIGHT) for n in missing_ip])
    candidates = facts_mod.master_candidates(host_facts[rank0.name], conns[rank0.name].peer)
    if not candidates:
        raise HostError(rank0.name, "has no IPv4 address other than loopback", ExitCode.PREFLIGHT)
    routes = {w.name: found[w.name][1] for w in workers}
    rest = [a for a in candidates if a not in guess]
    if rest and not facts_mod.reaches_directly(candidates[0], routes):
        more = fan_out("discover routes", workers, lambda h: facts_mod.parse_routes(
            check(conns[h.name], facts_mod.route_script(rest), "route lookup", timeout=30).stdout),
            fanout, lambda h: h.name).raise_for("discover routes")
        routes = {w: routes[w] + more[w] for w in routes}
    return host_facts, _network(rank0, candidates, host_facts[rank0.name], routes)


def _network(rank0: Host, candidates: list[str], rank0_facts: HostFacts, routes: dict[str, list[Route]]) -> Network:
    """The address `facts.choose_master` picks, with each host's interface toward it."""
    choice = facts_mod.choose_master(candidates, routes)
    if choice.address is None:
        raise GroupError("discover", [HostError(w, f"no route to {rank0.name} (tried {', '.join(candidates)})",
                                                ExitCode.PREFLIGHT) for w in choice.unreached])
    ifaces = {rank0.name: rank0_facts.iface_of(choice.address) or "lo"}
    ifaces.update({w: r.dev for w, r in choice.routes.items() if r.dev})  # all are: choose_route needs a dev
    return Network(choice.address, ifaces)
