"""The effective job: the inventory as this run runs it, after `--set`, `-- ARGS` and the host
choice (`--only`/`--exclude`, like pdsh's `-w`/`-x`). `up` records these with the run, so that
`up --resume` runs what ran, whatever the inventory file says now, and says where the two differ.

    distctl up inv.yaml --exclude gpu3 -- --epochs 3     # recorded: hosts, ARGS
    distctl up inv.yaml --resume --set job.env.LR=0.1    # the same job, this --set on top
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable, Sequence

from orchestrator.errors import DistctlError, ExitCode
from orchestrator.inventory.model import Inventory, Job
from orchestrator.plan.state import RunState


def host_names(values: Sequence[str]) -> tuple[str, ...]:
    """`--only a,b --only c` -> (a, b, c): repeatable, comma lists."""
    return tuple(name.strip() for value in values for name in value.split(",") if name.strip())


def choose_hosts(inv: Inventory, only: Sequence[str] = (), exclude: Sequence[str] = ()) -> Inventory:
    """The inventory with only the chosen hosts, in its order; an unknown name or no host left is
    bad input."""
    only, exclude = host_names(only), host_names(exclude)
    if not only and not exclude:
        return inv
    known = [h.name for h in inv.hosts]
    unknown = [n for n in (*only, *exclude) if n not in known]
    if unknown:
        raise DistctlError(f"{inv.path}: no host {', '.join(repr(n) for n in dict.fromkeys(unknown))} "
                           f"(hosts: {', '.join(known)})", ExitCode.BAD_INPUT)
    hosts = tuple(h for h in inv.hosts if (not only or h.name in only) and h.name not in exclude)
    if not hosts:
        raise DistctlError(f"{inv.path}: --only/--exclude leave no host (hosts: {', '.join(known)})",
                           ExitCode.BAD_INPUT)
    if inv.job.min_hosts is not None and inv.job.min_hosts > len(hosts):
        raise DistctlError(f"{inv.path}: job.min_hosts is {inv.job.min_hosts} but --only/--exclude leave "
                           f"{len(hosts)} host(s)", ExitCode.BAD_INPUT)
    return dataclasses.replace(inv, hosts=hosts)


def with_args(inv: Inventory, args: Sequence[str]) -> Inventory:
    """`-- ARGS`: appended to job.command, or to the bundled trainer's arguments."""
    return dataclasses.replace(inv, job=dataclasses.replace(inv.job, args=tuple(args))) if args else inv


def effective(inv: Inventory, args: Sequence[str], only: Sequence[str], exclude: Sequence[str]) -> Inventory:
    return with_args(choose_hosts(inv, only, exclude), args)


def resumed(run: RunState, load: Callable[[tuple[str, ...]], Inventory], sets: tuple[str, ...],
            args: Sequence[str], only: Sequence[str], exclude: Sequence[str]) -> tuple[Inventory, list[str]]:
    """The job `run` ran, rebuilt from its record and the inventory file (for what the record
    does not keep: connection settings, secrets, re-read now), `sets` applied on top; and lines
    saying how it differs from the inventory as it is now. `load(overrides)` reads the file."""
    if not run.job_kept:  # recorded by a distctl that kept no job: the file is all there is
        inv = effective(load(sets), args, only, exclude)
        return inv, [f"run {run.run_id} was recorded without its job: resuming it as {inv.path} says now"]
    inv = load(run.overrides + tuple(sets))
    names = [hs.host.name for hs in run.hosts]
    known = {h.name for h in inv.hosts}
    gone = [n for n in names if n not in known]
    if gone:
        raise DistctlError(f"cannot resume run {run.run_id}: {inv.path} no longer has host(s) {', '.join(gone)}; "
                           "a resume runs on the run's own hosts", ExitCode.BAD_INPUT)
    if only or exclude:
        chosen = [h.name for h in choose_hosts(inv, only, exclude).hosts]
        if chosen != names:
            raise DistctlError(f"cannot resume run {run.run_id} on {', '.join(chosen)}: it ran on "
                               f"{', '.join(names)}; start a new run for other hosts", ExitCode.BAD_INPUT)
    inv = dataclasses.replace(inv, hosts=tuple(inv.host(n) for n in names))
    for hs in run.hosts:
        slots = inv.host(hs.host.name).slots
        if slots is not None and slots != len(hs.ranks):
            raise DistctlError(f"cannot resume run {run.run_id} with {slots} slot(s) on {hs.host.name}: it ran "
                               f"{len(hs.ranks)} rank(s) there; start a new run for another slot count",
                               ExitCode.BAD_INPUT)
    inv = with_args(inv, args or run.args)
    return inv, differences(inv, load(()), run.run_id)


def differences(ran: Inventory, now: Inventory, run_id: str) -> list[str]:
    """`resuming run R as it ran; it differs from inv.yaml now in:` and a line per difference."""
    mine, theirs = _flat(ran), _flat(now)
    lines = [f"  {key}: {mine.get(key, '(unset)')} (the file now: {theirs.get(key, '(unset)')})"
             for key in dict.fromkeys([*mine, *theirs]) if mine.get(key) != theirs.get(key)]
    if not lines:
        return []
    return [f"resuming run {run_id} as it ran; it differs from {ran.path} now in:", *lines]


def _flat(inv: Inventory) -> dict[str, str]:
    """What a resume could differ in, as `key: shown value` (secrets shown as ***)."""
    out = {"hosts": ", ".join(f"{h.name}" + (f" ({h.slots} slots)" if h.slots is not None else "")
                              for h in inv.hosts)}
    out.update(_job(inv.job))
    for h in inv.hosts:
        out.update({f"hosts.{h.name}.env.{v.name}": v.shown for v in h.env})
    return out


def _job(job: Job) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in dataclasses.fields(job):
        value = getattr(job, f.name)
        if f.name in ("args", "command"):
            continue
        if f.name == "env":
            out.update({f"job.env.{v.name}": v.shown for v in value})
        elif f.name == "train":
            if job.is_trainer:
                out.update({f"job.train.{t.name}": str(getattr(value, t.name)) for t in dataclasses.fields(value)})
        elif value not in (None, ()):
            out[f"job.{f.name}"] = " ".join(value) if isinstance(value, tuple) else str(value)
    if job.command:
        out["job.command"] = shlex.join(job.command + job.args)
    elif job.args:
        out["trainer arguments"] = shlex.join(job.args)
    return out
