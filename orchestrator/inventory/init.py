"""`distctl init`: a commented inventory from host names or a DeepSpeed/OpenMPI/MPICH hostfile."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import yaml

from orchestrator.errors import InventoryError
from orchestrator.inventory.model import HOST_NAME


@dataclass(frozen=True)
class HostEntry:
    address: str  # `user@host` keeps its user: render_inventory writes it as the host's `user`
    slots: int | None = None


MAX_SLOTS = 1024  # the inventory's own bound on `slots`
_SPEC = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+)(?::(?P<n>[^:]*))?$")
_OPTION = re.compile(r"(?P<key>[A-Za-z_-]+)\s*=\s*(?P<value>\S*)")
_OPTION_KEYS = {"slots": "slots", "max_slots": "max_slots", "max-slots": "max_slots"}


def _count(text: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_SLOTS:
        raise ValueError(f"{what} must be a whole number from 1 to {MAX_SLOTS}, got {text!r}")
    return int(text)


def parse_host_spec(spec: str) -> HostEntry:
    """`[user@]host` or MPICH's `[user@]host:N` (N slots; an IPv6 address goes in brackets)."""
    user, at, rest = spec.rpartition("@")
    if rest.count(":") > 1 and not rest.startswith("["):  # a bare IPv6 address: no slots
        return HostEntry(spec)
    match = _SPEC.match(rest)
    if not match or (at and not user):
        raise ValueError(f"expected host, user@host or host:SLOTS, got {spec!r}")
    slots = _count(match["n"], "the number after ':' (slots)") if match["n"] is not None else None
    return HostEntry(f"{user}{at}{match['host'].strip('[]')}", slots)


def _parse_line(line: str) -> HostEntry:
    """`host [slots=N] [max_slots=M]` (DeepSpeed, OpenMPI) or `host:N` (MPICH)."""
    spec, *options = re.split(r"\s+", line.strip(), maxsplit=1)
    entry = parse_host_spec(spec)
    found: dict[str, int] = {}
    for match in _OPTION.finditer(options[0] if options else ""):
        _option(match, found)
    if options and _OPTION.sub("", options[0]).strip():
        raise ValueError(f"expected 'host slots=N [max_slots=M]' or 'host:N', got {line.strip()!r}")
    if "slots" in found and entry.slots is not None:
        raise ValueError(f"slots given twice ('host:N' and 'slots='), in {line.strip()!r}")
    slots = found.get("slots", entry.slots)
    # max_slots is OpenMPI's oversubscription limit; distctl never runs more than `slots`
    # ranks on a host, so it is only checked against slots, not used.
    if slots and "max_slots" in found and slots > found["max_slots"]:
        raise ValueError(f"slots={slots} is more than max_slots={found['max_slots']}")
    return HostEntry(entry.address, slots)


def _option(match: re.Match, found: dict[str, int]) -> None:
    key = _OPTION_KEYS.get(match["key"].lower())
    if key is None:
        raise ValueError(f"unknown option {match['key']!r} (hostfiles take slots=N and max_slots=M)")
    if key in found:
        raise ValueError(f"{match['key']} given twice")
    found[key] = _count(match["value"], match["key"])


def host_entries(specs: Sequence[str]) -> list[HostEntry]:
    """Hosts given on the command line, with the same rules as a hostfile's lines."""
    return parse_hostfile("\n".join(specs), "command line", lambda n: f"host {specs[n - 1]!r}")


def parse_hostfile(text: str, path: str = "hostfile",
                   where: Callable[[int], str] | None = None) -> list[HostEntry]:
    """A DeepSpeed/OpenMPI (`host slots=N [max_slots=M]`) or MPICH (`host:N`) hostfile.

    `#` starts a comment; blank lines are skipped. Errors name the file and line
    (or `where(line number)`).
    """
    where = where or (lambda number: f"{path}:{number}")
    out: list[HostEntry] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0]
        if not line.strip():
            continue
        try:
            entry = _parse_line(line)
        except ValueError as exc:
            raise InventoryError(f"{where(number)}: {exc}") from None
        host = entry.address.rpartition("@")[2]
        if host in first_line:
            raise InventoryError(f"{where(number)}: {host} is listed twice (first: {where(first_line[host])}); "
                                 "give it more slots instead")
        first_line[host] = number
        out.append(entry)
    if not out:
        raise InventoryError(f"{where(1)}: no hosts in the hostfile")
    return out


def _label(address: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]", "-", address.split("@")[-1]).strip("-.") or "host"
    base = base if HOST_NAME.match(base) else f"host-{base[:50]}"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


@dataclass(frozen=True)
class Defaults:
    """`init`'s --user/--port/--identity-file/--python/--workdir, for the `defaults:` section."""

    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    python: str | None = None
    workdir: str | None = None
    code: str | None = None  # --code DIR: your program's folder (job.code)
    command: str | None = None  # --command '...': how each rank starts it (job.command)


def _scalar(value: object) -> str:
    """A YAML scalar that reads back as exactly `value` (quoted only when it must be)."""
    text = str(value)
    if isinstance(value, int) or (re.fullmatch(r"[A-Za-z0-9_./~+-][A-Za-z0-9_./~+@:=-]*", text)
                                  and yaml.safe_load(text) == text):
        return text
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


def _default(key: str, value: object, example: str, note: str) -> str:
    line = f"  {key}: {_scalar(value)}" if value is not None else f"  # {key}: {example}"
    return f"{line:<30} # {note}"


def render_inventory(hosts: list[HostEntry], defaults: Defaults = Defaults()) -> str:
    """A commented inventory.yaml; every key the user may want is shown, most commented out."""
    taken: set[str] = set()
    d = defaults
    lines = [
        "# distctl inventory: `distctl check` validates it, `distctl up` trains.",
        "# Every key is documented in the README (\"Inventory reference\").",
        "defaults:                      # any host key; a host's own value wins",
        _default("user", d.user, "ubuntu", "default: ~/.ssh/config, else your user name"),
        _default("port", d.port, "22", "SSH port (default: ~/.ssh/config, else 22)"),
        _default("identity_file", d.identity_file, "~/.ssh/id_ed25519", "default: ssh-agent and the usual keys"),
        _default("python", d.python or "python3", "", "interpreter on the hosts that has torch"),
        _default("workdir", d.workdir or "~/.distctl", "", "code, data and runs live here on each host"),
        "hosts:                         # order = rank order: the first host holds rank 0",
    ]
    for h in hosts:
        user_part, _, address = h.address.rpartition("@")
        lines.append(f"  - name: {_label(address, taken)}")
        lines.append(f"    address: {_scalar(address)}")
        if user_part:
            lines.append(f"    user: {_scalar(user_part)}")
        lines.append(f"    slots: {h.slots}" if h.slots
                     else "    # slots: 1                 # default: one per GPU found, else 1")
    lines += ["job:", *_program(d), "  port: 23456                  # rendezvous port on rank 0's host"]
    if d.code or d.command:
        return "\n".join(lines + [
            "  # data: ./data               # a folder pushed to every host ($DISTCTL_DATA on the ranks)",
            "  # setup: pip install -r requirements.txt   # once per host, before launch",
            "  # outputs: [checkpoints/*.pt]  # what `distctl pull` brings back",
            "  # env: {WANDB_API_KEY: {from_env: WANDB_API_KEY}}  # environment for every rank",
            *_ssh_lines()]) + "\n"
    lines += [
        "  backend: auto                # auto | nccl | gloo",
        "  dataset: mnist               # mnist | generated",
        "  # fallback: generated        # only if downloading MNIST fails: train on generated digits",
        "                               # instead (and say so); default none: the run fails",
        "  # data: ./data               # a folder with MNIST/raw, pushed to every host",
        "  # join_timeout: 300          # seconds for every rank to join, else stop the run",
        "  # env: {NCCL_DEBUG: WARN}    # environment for every rank; secrets: {TOKEN: {from_env: TOKEN}}",
        "  train: {epochs: 10, batch_size: 64, lr: 0.01}",
        *_ssh_lines(),
    ]
    return "\n".join(lines) + "\n"


def _program(d: Defaults) -> list[str]:
    """job.name, code and command: your program's when given, else the bundled trainer's, with
    a user program's two keys shown commented out."""
    if not (d.code or d.command):
        return ["  name: mnist",
                "  # code: .                    # your program's folder, pushed to every host (like git would)",
                "  # command: python train.py   # runs on every rank, torchrun's environment set; "
                "without it: the bundled trainer"]
    name = re.sub(r"[^A-Za-z0-9._-]", "-", os.path.basename(os.path.abspath(d.code or "."))).strip("-.") or "job"
    return [f"  name: {_scalar(name)}",
            f"  code: {_scalar(d.code or '.')}" + "  # pushed to every host (.gitignore honoured)",
            f"  command: {_scalar(d.command or 'python train.py')}" + "  # runs on every rank, torchrun's environment"]


def _ssh_lines() -> list[str]:
    return ["ssh:",
            "  # known_hosts: ~/.ssh/known_hosts  # default: ssh_config's UserKnownHostsFile, as for ssh",
            "  accept_new_host_keys: false  # or once: distctl check --accept-new-host-keys"]
