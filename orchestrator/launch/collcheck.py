"""`distctl check --net --collective`: an all_reduce over every host (hostside/collective.py),
one rank per host, started as distctl starts ranks: the job's python, MASTER_ADDR (rank 0's
discovered address), the job's port (preflight found it free), the host's interface toward
rank 0 in GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME, and the inventory's env.

Bandwidth as nccl-tests define it: algbw = bytes / time of one all_reduce, busbw = algbw *
2(n-1)/n (what each link carries in a ring, comparable across host counts). The time is the
slowest host's mean: the collective is done when it is done everywhere.

When it fails, the verdict (pure) names the host at fault: a rank the others waited for and
that never arrived, else a rank that failed on its own (not because a peer did), else the rank
that was furthest behind when time ran out."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator import shell
from orchestrator.errors import HostError
from orchestrator.hostside import program
from orchestrator.plan.facts import HostFacts
from orchestrator.plan.model import Plan
from orchestrator.ssh import group
from orchestrator.ssh.remote import Connection

MIB = 64  # the buffer: nccl-tests' sizes go up to GBs; 64 MiB is past the latency-bound sizes
ITERS = 5  # timed, after one warm-up
TIMEOUT = 120.0  # s on each host, torch's import included (seconds on a cold file system)
STAGES = ("torch", "store", "arrive", "init", "agree", "warmup", "timed", "finish")
PEER_LOST = ("peer", "Connection closed by peer", "Connection reset by peer", "Broken pipe")


@dataclass(frozen=True)
class Outcome:
    """One host's rank: its mean seconds per all_reduce, or why it has none."""

    host: str
    rank: int
    seconds: float | None = None
    backend: str | None = None
    nbytes: int = 0
    iters: int = 0
    error: str | None = None  # the host's own words: "timeout warmup", "peer 1 init", "init <message>"
    missing: tuple[int, ...] = ()  # ranks this one waited for that never arrived


def parse_outcome(host: str, rank: int, output: str) -> Outcome:
    """One host's `coll ...` line (hostside/collective.py) as an Outcome."""
    for line in output.splitlines():
        if line.startswith("coll ok "):
            f = dict(word.split("=", 1) for word in line.split()[2:] if "=" in word)
            return Outcome(host, rank, float(f["seconds"]), f["backend"], int(f["bytes"]), int(f["iters"]))
        if line.startswith("coll missing "):
            missing = tuple(int(r) for r in line.split()[2].split(","))
            return Outcome(host, rank, error=f"waited for rank(s) {line.split()[2]}, which never arrived",
                           missing=missing)
        if line.startswith("coll error "):
            return Outcome(host, rank, error=line[len("coll error "):])
    return Outcome(host, rank, error=f"no result ({output.strip()[-200:] or 'no output'})")


def bandwidth(nbytes: int, seconds: float, hosts: int) -> tuple[float, float]:
    """(algbw, busbw) in GB/s (10^9 bytes) of an all_reduce of `nbytes` over `hosts` ranks."""
    algbw = nbytes / seconds / 1e9
    return algbw, algbw * 2 * (hosts - 1) / hosts


def _stage(outcome: Outcome) -> int:
    words = (outcome.error or "").split()
    word = words[-1] if words[:1] in (["timeout"], ["peer"]) else (words[0] if words else "")
    return STAGES.index(word) if word in STAGES else len(STAGES)


def at_fault(outcomes: list[Outcome]) -> list[Outcome]:
    """The ranks to name when the collective failed: those the others waited for in vain, else
    those that failed on their own, else those furthest behind when time ran out."""
    failed = [o for o in outcomes if o.error is not None]
    missing = {r for o in failed for r in o.missing}
    if missing:
        return [o for o in outcomes if o.rank in missing]
    own = [o for o in failed if not o.missing and not o.error.startswith("timeout ")  # type: ignore[union-attr]
           and not any(p in o.error for p in PEER_LOST)]  # type: ignore[operator]
    if own:
        return own
    earliest = min((_stage(o) for o in failed), default=0)
    return [o for o in failed if _stage(o) == earliest]


def failure(outcomes: list[Outcome], rank0_addr: str, port: int, timeout: float) -> str | None:
    """The one-line error when any host has no result, None when every host measured."""
    if all(o.error is None for o in outcomes):
        return None
    culprits = at_fault(outcomes)
    missing = {r for o in outcomes for r in o.missing}
    named = "; ".join(f"{o.host} (rank {o.rank}): {_why(o, o.rank in missing, rank0_addr, port, timeout)}"
                      for o in culprits)
    by_error: dict[str, list[str]] = {}
    for o in outcomes:
        if o not in culprits and o.error is not None:
            by_error.setdefault(o.error, []).append(o.host)
    tail = "".join(f"; {', '.join(hosts)}: {error}" for error, hosts in by_error.items())
    return f"collective all_reduce failed: {named}{tail}"


def _why(o: Outcome, never_arrived: bool, addr: str, port: int, timeout: float) -> str:
    if never_arrived:
        return f"never arrived at rank 0's store ({addr}:{port}) within {timeout:g} s ({o.error})"
    if o.error and o.error.startswith("timeout "):
        return f"still in {o.error.split()[1]} after {timeout:g} s"
    return o.error or "no result"


def report_lines(outcomes: list[Outcome]) -> list[str]:
    """The figures: the collective's algbw and busbw (the slowest host's time), then each host's."""
    done = [o for o in outcomes if o.seconds is not None]
    if not done or len(done) < len(outcomes):
        return [f"{o.host} (rank {o.rank}): {o.error}" for o in outcomes if o.error is not None]
    slowest = max(o.seconds for o in done if o.seconds is not None)
    algbw, busbw = bandwidth(done[0].nbytes, slowest, len(done))
    head = (f"all_reduce of {done[0].nbytes / (1 << 20):g} MiB over {len(done)} hosts ({done[0].backend}, "
            f"{done[0].iters} timed after 1 warm-up): algbw {algbw:.3g} GB/s, busbw {busbw:.3g} GB/s")
    return [head] + [f"{o.host} (rank {o.rank}): {o.seconds:.3g} s per all_reduce" for o in done]


def as_json(outcomes: list[Outcome]) -> dict:
    """`check --json`'s "collective": the figures (null when any host failed) and each host's outcome."""
    done = [o.seconds for o in outcomes if o.seconds is not None]
    figures = bandwidth(outcomes[0].nbytes, max(done), len(outcomes)) if outcomes and len(done) == len(outcomes) \
        else (None, None)
    return {"algbw_gbps": figures[0], "busbw_gbps": figures[1],
            "backend": outcomes[0].backend if outcomes else None, "bytes": outcomes[0].nbytes if outcomes else 0,
            "hosts": [{"host": o.host, "rank": o.rank, "seconds": o.seconds, "error": o.error} for o in outcomes]}


def torch_missing(plan: Plan, facts: dict[str, HostFacts]) -> list[str]:
    return [hp.host.name for hp in plan.hosts if not facts[hp.host.name].torch]


def rank_command(plan: Plan, rank: int, mib: int, iters: int, timeout: float) -> str:
    """One host's rank: the host's env (the inventory's included), this rank's, the program."""
    hp = plan.hosts[rank]
    env = {v.name: v.value for v in hp.env}
    env.update(MASTER_ADDR=plan.master_addr, MASTER_PORT=str(plan.port), RANK=str(rank), LOCAL_RANK="0",
               WORLD_SIZE=str(len(plan.hosts)), LOCAL_WORLD_SIZE="1")
    exports = " ".join(f"{name}={shell.join([value])}" for name, value in env.items())
    return f"export {exports}; " + program(hp.python, "collective", mib, iters, timeout)


def measure(plan: Plan, conns: dict[str, Connection], mib: int = MIB, iters: int = ITERS,
            timeout: float = TIMEOUT) -> list[Outcome]:
    """Every host's rank, all at once (a collective needs every rank running: no fan-out bound)."""
    ranks = list(range(len(plan.hosts)))

    def one(rank: int) -> Outcome:
        name = plan.hosts[rank].host.name
        try:
            out = conns[name].run(rank_command(plan, rank, mib, iters, timeout), timeout=timeout + 30)
        except HostError as exc:
            return Outcome(name, rank, error=exc.cause)
        return parse_outcome(name, rank, out.stdout)

    done = group.fan_out("collective", ranks, one, len(ranks), lambda r: plan.hosts[r].host.name)
    return [done.ok.get(plan.hosts[r].host.name) or Outcome(plan.hosts[r].host.name, r, error="no result")
            for r in ranks]
