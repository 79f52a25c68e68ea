"""The inventory's `slurm:` section: where the batch job goes instead of a list of hosts.

    slurm:
      login: {address: hpc-login, user: me, identity_file: ~/.ssh/id_ed25519}
      partition: gpu
      nodes: 2
      slots: 8                  # ranks per node
      gpus_per_node: 8          # --gpus-per-node (omit on CPU partitions)
      preamble: ["module load cuda/12"]
      time: "04:00:00"
      sbatch: ["--account=proj"]

`defaults` gives the login node's `python` and `workdir` (both on the shared file system) and
the ranks' `env`; `job` is read as for SSH hosts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import yaml

from orchestrator.inventory import yamlnodes as y

if TYPE_CHECKING:
    from orchestrator.inventory.model import Host

SLURM_KEYS = ("login", "partition", "nodes", "slots", "gpus_per_node", "preamble", "time", "sbatch")
LOGIN_KEYS = ("address", "user", "port", "identity_file")
LOGIN_NAME = "login"  # the login node's label in messages and run records
PARTITION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# sbatch --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or UNLIMITED
TIME = re.compile(r"(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+(:\d{1,2}){0,2}|UNLIMITED|unlimited|infinite)\Z")


@dataclass(frozen=True)
class SlurmTarget:
    login: Host  # the login node, with the run's python and workdir (shared file system)
    nodes: int
    slots: int = 1  # ranks per node
    partition: str | None = None  # None: the cluster's default partition
    gpus_per_node: int | None = None
    preamble: tuple[str, ...] = ()  # shell lines run before the ranks start (module load ...)
    time: str | None = None
    sbatch: tuple[str, ...] = ()  # passed to sbatch as they are
    port: int | None = None  # job.port as written; None: derived from the job id (nodes are shared)

    @property
    def world_size(self) -> int:
        return self.nodes * self.slots


def parse_slurm(ctx: y.Ctx, node: yaml.Node, port: int | None, login_of: Callable[[yaml.Node], Host]) -> SlurmTarget:
    """The `slurm:` mapping; `login_of` reads the login node as a host (inventory.model, with the
    login node's python/workdir taken from `defaults`)."""
    where = "slurm"
    keys = y.mapping(ctx, node, where, SLURM_KEYS)
    if "login" not in keys:
        raise ctx.fail(node, where, "'login' is missing: the SSH host that runs sbatch, "
                       "like login: {address: hpc-login, user: me}")
    if "nodes" not in keys:
        raise ctx.fail(node, where, "'nodes' is missing: how many nodes the job runs on")
    values: dict[str, Any] = {"login": login_of(keys["login"])}
    checks = {
        "partition": ("a partition name", y.matching(PARTITION)),
        "nodes": ("a positive integer", y.int_in(1, 100_000)),
        "slots": ("a positive integer (ranks per node)", y.int_in(1, 1024)),
        "gpus_per_node": ("a positive integer", y.int_in(1, 1024)),
        "time": ("a time limit like 04:00:00, 1-00:00:00 or 30 (minutes)", _time),
    }
    for key, n in keys.items():
        if key in checks:
            values[key] = y.scalar(ctx, n, where, key, *checks[key])
        elif key in ("preamble", "sbatch"):
            values[key] = _lines(ctx, n, key)
    for option in values.get("sbatch", ()):
        if not option.startswith("-"):
            raise ctx.fail(keys["sbatch"], where, f"'sbatch' entries are sbatch options like --account=proj, "
                           f"got {option!r}")
    return SlurmTarget(**values, port=port)


def _time(raw: Any) -> str:
    text = str(raw)
    if not TIME.match(text):
        raise ValueError(text)
    return text


def _lines(ctx: y.Ctx, node: yaml.Node, key: str) -> tuple[str, ...]:
    nodes = node.value if isinstance(node, yaml.SequenceNode) else [node]
    return tuple(y.scalar(ctx, n, "slurm", key, "a line of text or a list of them", y.single_line) for n in nodes)
