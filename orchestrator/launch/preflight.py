"""Preflight: what must hold on every host before anything is pushed or started. What the
discovered facts alone tell (interpreter, torch, versions, GPUs), and the rendezvous port:
free on rank 0's host and reachable from every worker."""

from __future__ import annotations

import re
import selectors
import time

from orchestrator.errors import ExitCode, GroupError, HostError, PortTakenError
from orchestrator.plan.facts import HostFacts
from orchestrator.ssh.group import fan_out
from orchestrator.inventory.model import Host, Inventory
from orchestrator.ssh.remote import Connection, Stream
from orchestrator.hostside import program


HOSTSIDE_PYTHON = (3, 8)  # orchestrator/hostside/ keeps to 3.8 syntax: any program's host needs this much


def trainer_python_floor() -> tuple[int, int]:
    """The bundled trainer's floor: pyproject's requires-python, its one statement (torch 2.14's own)."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        spec = metadata("distctl")["Requires-Python"] or ""
    except PackageNotFoundError:
        spec = ""
    found = re.fullmatch(r"\s*>=\s*(\d+)\.(\d+)\s*", spec)
    return (int(found[1]), int(found[2])) if found else (3, 10)


def python_too_old(version: str | None, floor: tuple[int, int]) -> bool:
    parts = re.match(r"(\d+)\.(\d+)", version or "")
    return parts is not None and (int(parts[1]), int(parts[2])) < floor


def preflight_facts(inv: Inventory, host_facts: dict[str, HostFacts], after_setup: bool = False) -> None:
    """What the facts alone tell: interpreter, torch, versions, GPUs.

    With job.setup, the interpreter and torch are checked only after setup ran (it may create
    them); the bundled trainer needs torch, a user program may not.
    """
    from orchestrator.launch.programcheck import check_script, torch_missing

    if not after_setup:
        check_script(inv)
    errors: list[HostError] = []
    interpreter = after_setup or not inv.job.setup
    floor, needs = ((trainer_python_floor(), "the bundled trainer (and torch) need") if inv.job.is_trainer
                    else (HOSTSIDE_PYTHON, "distctl's host-side programs need"))
    for h in inv.hosts:
        f = host_facts[h.name]
        if interpreter and f.python is None:
            errors.append(HostError(h.name, f"python '{h.python}' not found (set 'python' for this host)",
                                    ExitCode.PREFLIGHT))
        elif interpreter and python_too_old(f.python, floor):
            errors.append(HostError(h.name, f"python {f.python} at '{h.python}' is too old: {needs} "
                                    f"{floor[0]}.{floor[1]} or newer (set 'python' for this host)",
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
    if interpreter and not errors:
        errors += torch_missing(inv, host_facts)
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
    for port in (inv.job.port, *((inv.job.control_port,) if inv.job.coordinated else ())):
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

        fan_out("preflight (port)", workers, dial, fanout, lambda h: h.name).raise_for("preflight (port)")
    finally:
        stream.close()


def _read_line(stream: Stream, timeout: float) -> str:
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
