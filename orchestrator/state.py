"""Local run state under `.distctl/` in the current directory, so that `logs`,
`status` and `stop` find a run again from a new shell. Secrets are never stored."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import DistctlError, ExitCode
from orchestrator.inventory import Host, Ssh

STATE_DIR = Path(".distctl")


@dataclass(frozen=True)
class RankState:
    rank: int
    local_rank: int


@dataclass(frozen=True)
class HostState:
    host: Host  # connection settings only; env is dropped
    rundir: str
    ranks: tuple[RankState, ...]


@dataclass(frozen=True)
class RunState:
    run_id: str
    inventory: str
    ssh: Ssh
    world_size: int
    master: str
    port: int
    hosts: tuple[HostState, ...]
    trainer: bool = True  # the bundled trainer: its exit codes (4 peer lost, 143 stopped) mean something
    outputs: tuple[str, ...] = ()  # job.outputs: globs under each host's <rundir>/work, for `pull`

    def host(self, name: str) -> HostState:
        for h in self.hosts:
            if h.host.name == name:
                return h
        raise DistctlError(f"run {self.run_id} has no host '{name}' "
                           f"(hosts: {', '.join(h.host.name for h in self.hosts)})", ExitCode.BAD_INPUT)


def save_run(state: RunState, root: Path = STATE_DIR) -> None:
    root.joinpath("runs").mkdir(parents=True, exist_ok=True, mode=0o700)
    data = dataclasses.asdict(state)
    for h in data["hosts"]:
        h["host"]["env"] = []
    path = root / "runs" / f"{state.run_id}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
    (root / "last.tmp").write_text(state.run_id + "\n")
    os.replace(root / "last.tmp", root / "last")


def load_run(run_id: str | None = None, root: Path = STATE_DIR) -> RunState:
    """A run by id, or the last run started from this directory."""
    if run_id is None:
        try:
            run_id = (root / "last").read_text().strip()
        except OSError:
            raise DistctlError("no run started from this directory (no .distctl/last); "
                               "give a run id or an inventory", ExitCode.NO_RUN) from None
    try:
        data = json.loads((root / "runs" / f"{run_id}.json").read_text())
    except (OSError, ValueError):
        raise DistctlError(f"no run '{run_id}' in {root}/runs", ExitCode.NO_RUN) from None
    ssh = Ssh(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["ssh"].items()})
    hosts = tuple(
        HostState(Host(**{**h["host"], "env": ()}), h["rundir"],
                  tuple(RankState(**r) for r in h["ranks"]))
        for h in data["hosts"])
    return RunState(data["run_id"], data["inventory"], ssh, data["world_size"], data["master"],
                    data["port"], hosts, bool(data.get("trainer", True)), tuple(data.get("outputs", ())))


def runs_of_inventory(inventory: str, root: Path = STATE_DIR) -> list[str]:
    """Run ids started from an inventory file, oldest first."""
    target = str(Path(inventory).resolve())
    found = []
    for path in sorted((root / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime):
        try:
            if json.loads(path.read_text()).get("inventory") == target:
                found.append(path.stem)
        except (OSError, ValueError):
            continue
    return found
