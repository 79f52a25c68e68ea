"""Executing a plan: connect, discover, preflight, push, launch — each step on every
host in parallel with a bounded fan-out, every host's outcome collected before
anything is reported (partial failure is normal).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TypeVar

from orchestrator import facts as facts_mod
from orchestrator import shell
from orchestrator.errors import ExitCode, GroupError, HostError, PortTakenError, RemoteCommandError
from orchestrator.facts import HostFacts
from orchestrator.inventory import Host, Inventory, Ssh
from orchestrator.plan import Network, Plan, StepKind
from orchestrator.push import tar_of
from orchestrator.remote import Connection, connect, resolve_hosts
from orchestrator.scripts import program
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
          exit_code: ExitCode = ExitCode.PREFLIGHT):
    result = conn.run(command, stdin=stdin, timeout=timeout)
    if result.exit_code != 0:
        raise RemoteCommandError(conn.name, what, result.exit_code, result.stderr or result.stdout, exit_code)
    return result


# ---------------------------------------------------------------- discovery


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

    def one(h: Host) -> tuple[HostFacts, list[facts_mod.Route]]:
        script = facts_mod.discover_script(h.python)
        if h is not rank0 and guess:
            script = shell.lines(script, facts_mod.route_script(guess))
        sent = time.time()  # wall clocks: the host's offset from ours
        out = check(conns[h.name], script, "discovery", timeout=60).stdout
        received = time.time()
        found = facts_mod.parse_facts(out)  # each parser skips the other's lines
        return replace(found, clock=facts_mod.measure_clock(found.time, sent, received)), facts_mod.parse_routes(out)

    found = fan_out("discover", inv.hosts, one, fanout, lambda h: h.name)
    host_facts: dict[str, HostFacts] = {name: f for name, (f, _) in found.items()}  # type: ignore[misc,has-type]
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
    routes: dict[str, list[facts_mod.Route]] = {w.name: found[w.name][1] for w in workers}  # type: ignore[index]
    rest = [a for a in candidates if a not in guess]
    if rest and not _all_direct(candidates[0], routes):
        more = fan_out("discover routes", workers, lambda h: facts_mod.parse_routes(
            check(conns[h.name], facts_mod.route_script(rest), "route lookup", timeout=30).stdout),
            fanout, lambda h: h.name)
        routes = {w: routes[w] + more[w] for w in routes}  # type: ignore[operator]
    return host_facts, _network(rank0, workers, candidates, host_facts[rank0.name], routes)


def _all_direct(address: str, routes: dict[str, list[facts_mod.Route]]) -> bool:
    """Every worker reaches `address` without a gateway: `_network` takes it, whatever else."""
    for found in routes.values():
        route = facts_mod.choose_route([r for r in found if r.dest == address])
        if route is None or route.via is not None:
            return False
    return True


def _network(rank0: Host, workers: Sequence[Host], candidates: list[str], rank0_facts: HostFacts,
             routes: dict[str, list[facts_mod.Route]]) -> Network:
    """The first of rank 0's addresses that every worker can reach, direct routes first."""
    def chosen(address: str) -> dict[str, facts_mod.Route | None]:
        return {w.name: facts_mod.choose_route([r for r in routes[w.name] if r.dest == address]) for w in workers}

    options = [(a, chosen(a)) for a in candidates]
    reachable = [(a, c) for a, c in options if all(c.values())]
    direct = [(a, c) for a, c in reachable if all(r.via is None for r in c.values() if r)]
    if not (direct or reachable):
        unreached = sorted({w for _, c in options for w, r in c.items() if r is None})
        raise GroupError("discover", [HostError(w, f"no route to {rank0.name} "
                                                f"(tried {', '.join(candidates)})", ExitCode.PREFLIGHT)
                                      for w in unreached])
    address, per_worker = (direct or reachable)[0]
    ifaces = {rank0.name: rank0_facts.iface_of(address) or "lo"}
    ifaces.update({w: r.dev for w, r in per_worker.items() if r and r.dev})  # all are: choose_route needs a dev
    return Network(address, ifaces)


# ---------------------------------------------------------------- preflight


def preflight_facts(inv: Inventory, host_facts: dict[str, HostFacts], after_setup: bool = False) -> None:
    """What the facts alone tell: interpreter, torch, versions, GPUs.

    With job.setup, the interpreter and torch are checked only after setup ran (it may create
    them); the bundled trainer needs torch, a user program may not.
    """
    errors: list[HostError] = []
    interpreter = after_setup or not inv.job.setup
    for h in inv.hosts:
        f = host_facts[h.name]
        if interpreter and f.python is None:
            errors.append(HostError(h.name, f"python '{h.python}' not found (set 'python' for this host)",
                                    ExitCode.PREFLIGHT))
        elif interpreter and f.torch is None and inv.job.is_trainer:
            errors.append(HostError(h.name, f"torch is not installed for {h.python} (python {f.python}); "
                                    "install it on the host: pip install 'distctl[train]' or torch torchvision",
                                    ExitCode.PREFLIGHT))
        elif h.slots and f.gpus and h.slots > f.gpus:
            errors.append(HostError(h.name, f"slots: {h.slots} but only {f.gpus} GPU(s) found",
                                    ExitCode.PREFLIGHT))
        elif inv.job.backend == "nccl" and not f.gpus:
            errors.append(HostError(h.name, "backend nccl needs GPUs, none found (use backend: auto or gloo)",
                                    ExitCode.PREFLIGHT))
    versions = {version for h in inv.hosts if (version := host_facts[h.name].torch)}
    if interpreter and len(versions) > 1 and not errors:
        errors += [HostError(h.name, f"torch {host_facts[h.name].torch}, but other hosts have "
                             f"{', '.join(sorted(versions - {host_facts[h.name].torch}))}; "
                             "use one torch version everywhere", ExitCode.PREFLIGHT) for h in inv.hosts]
    if errors:
        raise GroupError("preflight", errors)


def tool_python(host: Host) -> str:
    """The interpreter for distctl's own stdlib-only helpers before job.setup ran: a relative
    `python` (a venv that setup creates) does not exist yet, so the system's python3 serves."""
    relative = "/" in host.python and not host.python.startswith(("/", "~"))
    return "python3" if relative else host.python


def preflight_port(inv: Inventory, conns: dict[str, Connection], address: str, fanout: int) -> None:
    """The rendezvous port (and with job.max_restarts the agents' control port, the next one)
    is free on rank 0's host and reachable from every worker."""
    for port in (inv.job.port, *((inv.job.control_port,) if inv.job.restarts else ())):
        _check_port(inv, conns, address, port, fanout)


def _check_port(inv: Inventory, conns: dict[str, Connection], address: str, port: int, fanout: int) -> None:
    rank0, workers = inv.hosts[0], inv.hosts[1:]
    what = "job.port" if port == inv.job.port else "job.port + 1 (the restart agents' control port)"
    stream = conns[rank0.name].open_stream(program(tool_python(rank0), "port_check", "listen", address, port,
                                                   len(workers)))
    try:
        first = _read_line(stream, timeout=30)
        if not first.startswith("listening"):
            detail = first.partition(" ")[2] or first or "listener did not start"
            raise PortTakenError(rank0.name, f"port {port} on {address} is not free ({detail}); "
                                 f"set job.port to a free port" + ("" if port == inv.job.port else f" ({what})"))

        def dial(h: Host) -> None:
            result = conns[h.name].run(program(tool_python(h), "port_check", "connect", address, port), timeout=30)
            if result.exit_code != 0:
                reason = result.stdout.strip().partition(" ")[2] or result.stderr.strip()
                raise HostError(h.name, f"cannot reach {rank0.name} at {address}:{port} ({reason}); "
                                "is a firewall blocking the port?", ExitCode.PREFLIGHT)

        fan_out("preflight (port)", workers, dial, fanout, lambda h: h.name)
    finally:
        stream.close()


def _read_line(stream, timeout: float) -> str:
    import selectors

    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(stream.fileno(), selectors.EVENT_READ)
        while b"\n" not in data and time.monotonic() < deadline:
            if sel.select(max(0.0, deadline - time.monotonic())):
                chunk = stream.read()
                if not chunk:
                    break
                data += chunk
    return data.decode(errors="replace").strip().splitlines()[0] if data.strip() else ""


# ------------------------------------------------------------ push + launch


@dataclass(frozen=True)
class Prepared:
    present: frozenset[str]  # artifact names the host already has
    log_lines: dict[int, int]  # existing log lines per rank (resume appends)


def prepare(plan: Plan, conns: dict[str, Connection], fanout: int) -> dict[str, Prepared]:
    def one(step) -> Prepared:
        hp = plan.host_plan(step.host)
        counts = "; ".join(f"echo loglines {r.rank} $(cat rank{r.rank}.log 2>/dev/null | wc -l)" for r in hp.ranks)
        command = f"{step.command}\ncd {shell.join([hp.rundir])} && {{ {counts}; }}"
        out = check(conns[step.host], command, "prepare", stdin=shell.env_file(hp.env).encode(),
                    exit_code=ExitCode.REMOTE_STEP).stdout
        have = {line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("have ")}
        present = frozenset(a.name for a in plan.artifacts if a.remote_dir(hp.workdir) in have)
        lines = {int(p[1]): int(p[2]) for p in (ln.split() for ln in out.splitlines()) if p[:1] == ["loglines"]}
        return Prepared(present, lines)

    steps = [s for s in plan.steps if s.kind is StepKind.PREPARE]
    return fan_out("prepare", steps, one, fanout, lambda s: s.host)  # type: ignore[return-value]


def push(plan: Plan, conns: dict[str, Connection], prepared: dict[str, Prepared], fanout: int) -> int:
    """Send each artifact a host lacks; returns the bytes sent (0 when all are current)."""
    steps = [s for s in plan.steps if s.kind is StepKind.PUSH and s.artifact not in prepared[s.host].present]
    artifacts = {a.name: a for a in plan.artifacts}

    def one(step) -> int:
        data = tar_of(artifacts[step.artifact])
        check(conns[step.host], step.command, f"push of {step.artifact}", stdin=data, timeout=3600,
              exit_code=ExitCode.REMOTE_STEP)
        return len(data)

    sent = fan_out("push", steps, one, fanout, lambda s: f"{s.host}/{s.artifact}")
    return sum(sent.values())  # type: ignore[arg-type]


def launch(plan: Plan, conns: dict[str, Connection], fanout: int, ui) -> None:
    """The plan's launch steps in its order: consecutive launches run at once; a port wait
    (rank 0 first, by default) holds the launches after it back until rank 0 listens."""
    batch: list = []
    for step in [s for s in plan.steps if s.kind in (StepKind.LAUNCH, StepKind.WAIT_PORT)] + [None]:
        if step is not None and step.kind is StepKind.LAUNCH:
            batch.append(step)
            continue
        fan_out("launch", batch, lambda s: check(conns[s.host], s.command, "launch", exit_code=ExitCode.REMOTE_STEP),
                fanout, lambda s: s.host)
        batch = []
        if step is not None:
            ui.detail(f"{step.host}: rank 0 started; waiting for {plan.master_addr}:{plan.port}")
            _wait_port(plan, conns, step)


def _wait_port(plan: Plan, conns: dict[str, Connection], wait) -> None:
    result = conns[wait.host].run(wait.command, timeout=plan.join_timeout + 30)
    if result.exit_code != 0:
        what = result.stdout.strip() or result.stderr.strip()
        why = {"exited": "it exited first", "timeout": f"not within job.join_timeout={plan.join_timeout:g}s"}
        hint = "" if plan.trainer else (" (a program that brings its own rendezvous, or opens the port late: "
                                        "set job.wait_for_rank0: false)")
        raise HostError(wait.host, f"rank 0 did not open {plan.master_addr}:{plan.port}: {why.get(what, what)}"
                        + hint, ExitCode.RUN_FAILED if what == "exited" else ExitCode.HANG)


def run_setup(plan: Plan, conns: dict[str, Connection], fanout: int, ui) -> dict[str, HostFacts]:
    """job.setup on every host at once, its output streamed with the host's prefix; then what the
    host's python (maybe in the venv setup made) has. A failure on any host raises SETUP_FAILED."""
    from orchestrator.scripts import PROBE_MARK
    from orchestrator.stream import Followed

    def one(step) -> HostFacts:
        followed = Followed(step.host, conns[step.host].open_stream(step.command))
        tail: list[str] = []
        probe: list[str] = []
        try:
            while True:
                data = followed.stream.read()
                for line in followed.feed(data):
                    if probe or line == PROBE_MARK:
                        probe.append(line)
                    else:
                        ui.setup_line(step.host, line)
                        tail = (tail + [line])[-10:]
                if not data:
                    break
            code = followed.stream.exit_code()
        finally:
            followed.stream.close()
        if code != 0:
            shown = "".join(f"\n    {line}" for line in tail)
            raise HostError(step.host, f"job.setup exited with code {code}; nothing was launched anywhere. "
                            f"Last lines:{shown}", ExitCode.SETUP_FAILED)
        return facts_mod.parse_facts("\n".join(probe[1:]))

    steps = [s for s in plan.steps if s.kind is StepKind.SETUP]
    found = fan_out("setup", steps, one, fanout, lambda s: s.host)
    return found  # type: ignore[return-value]
