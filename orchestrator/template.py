"""`distctl init`: a commented inventory from host names or a DeepSpeed/MPI hostfile."""

from __future__ import annotations

import re
from dataclasses import dataclass

from orchestrator.errors import InventoryError
from orchestrator.inventory import HOST_NAME


@dataclass(frozen=True)
class HostEntry:
    address: str
    slots: int | None = None


_HOSTFILE_LINE = re.compile(r"^\s*(?P<host>[^\s#]+)(?:\s+(?:slots|max_slots)\s*=\s*(?P<slots>\d+))?\s*(?:#.*)?$")


def parse_hostfile(text: str, path: str = "hostfile") -> list[HostEntry]:
    """DeepSpeed/MPI hostfile lines: `host slots=N` (comments and blank lines skipped)."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _HOSTFILE_LINE.match(line)
        if not match:
            raise InventoryError(f"{path}:{number}: expected 'host slots=N', got {line.strip()!r}")
        slots = int(match["slots"]) if match["slots"] else None
        if slots == 0:
            raise InventoryError(f"{path}:{number}: slots must be at least 1")
        out.append(HostEntry(match["host"], slots))
    if not out:
        raise InventoryError(f"{path}:1: no hosts in the hostfile")
    return out


def _label(address: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]", "-", address.split("@")[-1]).strip("-.") or "host"
    base = base if HOST_NAME.match(base) else f"host-{base[:50]}"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def render_inventory(hosts: list[HostEntry], user: str | None = None) -> str:
    """A commented inventory.yaml; every key the user may want is shown, most commented out."""
    taken: set[str] = set()
    lines = [
        "# distctl inventory: `distctl check` validates it, `distctl up` trains.",
        "# Every key is documented in the README (\"Inventory reference\").",
        "defaults:                      # any host key; a host's own value wins",
        f"  user: {user}" if user else "  # user: ubuntu                # default: ~/.ssh/config, else your user name",
        "  # port: 22",
        "  # identity_file: ~/.ssh/id_ed25519",
        "  python: python3              # interpreter on the hosts that has torch",
        "  workdir: ~/.distctl          # code, data and runs live here on each host",
        "hosts:                         # order = rank order: the first host holds rank 0",
    ]
    for h in hosts:
        user_part, _, address = h.address.rpartition("@")
        lines.append(f"  - name: {_label(address, taken)}")
        lines.append(f"    address: {address}")
        if user_part:
            lines.append(f"    user: {user_part}")
        lines.append(f"    slots: {h.slots}" if h.slots else "    # slots: 1                 # default: one per GPU found, else 1")
    lines += [
        "job:",
        "  name: mnist",
        "  port: 23456                  # rendezvous port on rank 0's host",
        "  backend: auto                # auto | nccl | gloo",
        "  dataset: mnist               # mnist | generated",
        "  fallback: generated          # when MNIST can't be had: none | generated",
        "  # data: ./data               # a folder with MNIST/raw, pushed to every host",
        "  # join_timeout: 300          # seconds for every rank to join, else stop the run",
        "  # env: {NCCL_DEBUG: WARN}    # environment for every rank; secrets: {TOKEN: {from_env: TOKEN}}",
        "  train: {epochs: 10, batch_size: 64, lr: 0.01}",
        "ssh:",
        "  # known_hosts: ~/.ssh/known_hosts  # default: ssh_config's UserKnownHostsFile, as for ssh",
        "  accept_new_host_keys: false  # or once: distctl check --accept-new-host-keys",
    ]
    return "\n".join(lines) + "\n"
