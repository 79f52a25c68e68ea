"""The workstation's record of each run, so that `logs`, `status`, `stop` and `pull` find a run
again from any shell and any directory.

One JSON file per run in a per-user state directory (XDG: `$XDG_STATE_HOME/distctl`, default
`~/.local/state/distctl`; `DISTCTL_STATE_DIR` overrides it). Each file names its inventory
(absolute path) and the directory `up` ran in, so a bare `distctl status` still means the last
run started from the current directory. Runs that an older distctl recorded in `./.distctl/`
are still found there (read only). Secrets are never stored.

The file carries `"format": 1`. Loading ignores fields it does not know and fills missing
optional ones, so a newer or older distctl reads it; a newer major format is refused in one line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.errors import DistctlError, ExitCode
from orchestrator.inventory.model import Host, Ssh

FORMAT = 1  # major version of the run file; bump only when an older distctl would misread it
STATE_DIR_ENV = "DISTCTL_STATE_DIR"
LEGACY_DIR = Path(".distctl")  # where distctl before format 1 kept runs: relative to the cwd
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")  # what new_run_id makes; never a path


@dataclass(frozen=True)
class RankState:
    rank: int
    local_rank: int


@dataclass(frozen=True)
class HostState:
    host: Host  # connection settings only; env is dropped
    rundir: str
    ranks: tuple[RankState, ...]
    clock_offset: float | None = None  # host clock - workstation clock (s) at discovery; None: not measured
    python: str = ""  # the host's python, a relative one resolved to its path on the host ("": host.python)

    def __post_init__(self) -> None:
        if not self.python:
            object.__setattr__(self, "python", self.host.python)


@dataclass(frozen=True)
class RunState:
    """A run as distctl knows it after launch: who runs which rank where, and how to reach them.

    This is the one run model. `plan.Plan` extends it with what only the launch needs (steps,
    artifacts, each rank's program and environment): `up` records the plan itself, and the record
    reads back as this base part.
    """

    run_id: str
    inventory: str
    ssh: Ssh
    world_size: int
    master_addr: str
    port: int
    hosts: tuple[HostState, ...]
    trainer: bool = True  # the bundled trainer: its exit codes (4 peer lost, 143 stopped) mean something
    outputs: tuple[str, ...] = ()  # job.outputs: globs under each host's <rundir>/work, for `pull`
    cwd: str | None = None  # the directory `up` ran in (save_run fills it)
    started: str | None = None  # ISO 8601 with offset (save_run fills it)
    last_state: str | None = None  # as distctl last saw it: started, running, finished, failed, stopped
    max_restarts: int = 0  # > 0: each host runs an agent that restarts the ranks (hostside/agent.py)
    # The effective job, so that `up --resume` runs what ran (secrets are re-read, never stored):
    overrides: tuple[str, ...] = ()  # the `--set`s applied on top of the inventory file
    args: tuple[str, ...] = ()  # `up ... -- ARGS`
    command: tuple[str, ...] = ()  # the user's command as run, ARGS included (empty: the trainer)
    job_kept: bool = False  # this record keeps the above (older records do not)
    hang_timeout: float | None = None  # job.hang_timeout: the agents end (or restart) a run hung this long

    @property
    def coordinated(self) -> bool:
        """The hosts' agents (hostside/agent.py) talk to a coordinator: for restarts, or to judge a hang."""
        return bool(self.max_restarts) or self.hang_timeout is not None

    @property
    def init_method(self) -> str:
        return f"tcp://{self.master_addr}:{self.port}"

    def refollow(self, hs: HostState) -> str:
        """The command that follows `hs` again after a lost link, its placeholder unfilled
        (scripts.fill_shown); a Plan answers with its own REFOLLOW step."""
        from orchestrator import timers
        from orchestrator.plan.scripts import refollow_script

        return refollow_script(hs.python, hs.rundir, timers.current().heartbeat)

    def clock_offsets(self) -> dict[int, float]:
        """rank -> its host's clock minus the workstation's (seconds), where discovery measured it."""
        return {r.rank: hs.clock_offset for hs in self.hosts if hs.clock_offset is not None for r in hs.ranks}

    def host(self, name: str) -> HostState:
        for h in self.hosts:
            if h.host.name == name:
                return h
        raise DistctlError(f"run {self.run_id} has no host '{name}' "
                           f"(hosts: {', '.join(h.host.name for h in self.hosts)})", ExitCode.BAD_INPUT)


def run_record(state: RunState) -> dict[str, Any]:
    """The run file's content: the RunState part of `state` (a Plan's launch detail and every env,
    which may hold secrets, left out), in format FORMAT."""
    def own(obj: object, cls: type) -> dict[str, Any]:
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)}

    data: dict[str, Any] = {"format": FORMAT, **own(state, RunState)}
    data["ssh"] = dataclasses.asdict(state.ssh)
    data["hosts"] = [{**own(hs, HostState), "host": {**dataclasses.asdict(hs.host), "env": [], "python": hs.python},
                      "ranks": [own(r, RankState) for r in hs.ranks]} for hs in state.hosts]
    data["master"] = state.master_addr  # the key before master_addr: what a distctl of early 2026 reads
    return data


@dataclass(frozen=True)
class RunRecord:
    """What listing and lookup need, read from a run file without loading all of it."""

    run_id: str
    path: Path
    inventory: str
    cwd: str | None
    started: float  # epoch seconds; the file's mtime where the run did not record it
    hosts: tuple[str, ...]
    last_state: str | None
    legacy: bool  # found in ./.distctl/, written by a distctl before format 1



def new_run_id(job: str) -> str:
    """`JOB-YYYYmmdd-HHMMSS-XXXX`: sorts by start, unique enough across workstations."""
    return f"{job}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"

def state_dir() -> Path:
    """`DISTCTL_STATE_DIR`, else `$XDG_STATE_HOME/distctl`, else `~/.local/state/distctl`."""
    override = os.environ.get(STATE_DIR_ENV)
    if override:
        return Path(override).expanduser().absolute()
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "state"  # XDG: relative is invalid
    return base / "distctl"


# ------------------------------------------------------------ writing


def save_run(state: RunState, root: Path | None = None) -> None:
    """Record a run. A new record gets the current directory and time; relative key and config
    paths are stored absolute, since a later command may run from another directory."""
    state = dataclasses.replace(
        state, inventory=str(Path(state.inventory).resolve()), cwd=state.cwd or os.getcwd(),
        started=state.started or datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        last_state=state.last_state or "started", ssh=_absolute_ssh(state.ssh),
        hosts=tuple(dataclasses.replace(h, host=_absolute_host(h.host)) for h in state.hosts))
    try:
        _write(_runs(root) / f"{state.run_id}.json", run_record(state))
    except OSError as exc:  # before launch: a run distctl can't find again must not start
        raise DistctlError(f"cannot record the run in {_runs(root)}: {exc.strerror or exc}; set "
                           f"{STATE_DIR_ENV} to a writable folder", ExitCode.BAD_INPUT) from None


def note_state(run_id: str, text: str, root: Path | None = None, keep: tuple[str, ...] = ()) -> None:
    """Remember what distctl last saw of a run (for `distctl runs`) unless it is one of `keep`;
    best effort, and never in an old `./.distctl/`, which stays as the older distctl left it."""
    path = _runs(root) / f"{run_id}.json"
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and _major(data.get("format", 1)) == FORMAT and data.get("last_state") not in keep:
            _write(path, {**data, "last_state": text})
    except (OSError, ValueError):
        pass


def _write(path: Path, data: dict) -> None:
    _make_private_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _make_private_dirs(path: Path) -> None:
    """mkdir -p with 0700 for each directory made (XDG asks that of the state directory)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(mode=0o700, exist_ok=True)


def _absolute(path: str | None) -> str | None:
    if not path or path.startswith("~") or os.path.isabs(path):
        return path
    return os.path.abspath(path)


def _absolute_ssh(ssh: Ssh) -> Ssh:
    return dataclasses.replace(ssh, config=_absolute(ssh.config),
                               known_hosts=tuple(_absolute(k) or k for k in ssh.known_hosts))


def _absolute_host(host: Host) -> Host:
    return dataclasses.replace(host, identity_file=_absolute(host.identity_file))


# ------------------------------------------------------------ reading


def load_run(path: Path) -> RunState:
    """A run file of format 1 or older; unknown fields ignored, missing optional ones filled."""
    data = _read(path)
    if data is None:
        raise DistctlError(f"run file {path} is not readable JSON", ExitCode.NO_RUN)
    _check_format(data, path)
    hosts = data.get("hosts")
    if not isinstance(hosts, list) or not hosts:
        raise _damaged(path, "no hosts")
    try:
        host_states = tuple(HostState(_build(Host, {**h["host"], "env": ()}), h["rundir"],
                                      tuple(_build(RankState, r) for r in h["ranks"]),
                                      _seconds(h.get("clock_offset")), str(h.get("python") or ""))
                            for h in hosts)
        ssh = _build(Ssh, data.get("ssh") or {})
    except (KeyError, TypeError) as exc:
        raise _damaged(path, f"missing or malformed {exc}") from None
    world_size = data.get("world_size") or sum(len(h.ranks) for h in host_states)
    return RunState(str(data.get("run_id") or path.stem), data.get("inventory", ""), ssh, world_size,
                    data.get("master_addr") or data.get("master", ""), data.get("port", 0), host_states,
                    bool(data.get("trainer", True)),
                    tuple(data.get("outputs") or ()), data.get("cwd"), data.get("started"), data.get("last_state"),
                    int(data.get("max_restarts") or 0), overrides=_strings(data.get("overrides")),
                    args=_strings(data.get("args")), command=_strings(data.get("command")),
                    job_kept=data.get("job_kept") is True, hang_timeout=_seconds(data.get("hang_timeout")))


_T = TypeVar("_T")


def _strings(value: object) -> tuple[str, ...]:
    """A list of strings from the file, else () (absent before the effective job was recorded)."""
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _seconds(value: object) -> float | None:
    """A number from the file, else None (absent before clock offsets were recorded)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _build(cls: type[_T], values: dict[str, Any]) -> _T:
    """cls from a JSON object: fields this distctl doesn't know are dropped, lists become tuples."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known})


def _major(fmt: object) -> int | None:
    try:
        return int(str(fmt).split(".")[0])
    except ValueError:
        return None


def _check_format(data: dict, path: Path) -> None:
    fmt = data.get("format", 1)  # no key: the layout before versioning, which format 1 kept
    major = _major(fmt)
    if major is None:
        raise _damaged(path, f"format {fmt!r} is not a version number")
    if major > FORMAT:
        raise DistctlError(f"run {data.get('run_id') or path.stem} was recorded by a newer distctl "
                           f"(run file format {fmt}, this distctl reads format {FORMAT}): upgrade distctl "
                           f"to act on it ({path})", ExitCode.NO_RUN)


def _damaged(path: Path, why: str) -> DistctlError:
    return DistctlError(f"run file {path} is damaged: {why}", ExitCode.NO_RUN)


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _runs(root: Path | None) -> Path:
    return (root or state_dir()) / "runs"


def _record(path: Path, legacy: bool) -> RunRecord | None:
    data = _read(path)
    if data is None:
        return None
    try:
        started = datetime.fromisoformat(data["started"]).timestamp()
    except (KeyError, TypeError, ValueError):
        started = path.stat().st_mtime
    hosts = data.get("hosts")
    names = tuple(str(h["host"].get("name", "?")) for h in (hosts if isinstance(hosts, list) else [])
                  if isinstance(h, dict) and isinstance(h.get("host"), dict))
    return RunRecord(str(data.get("run_id") or path.stem), path, str(data.get("inventory", "")),
                     str(Path.cwd()) if legacy else data.get("cwd"), started, names,
                     data.get("last_state"), legacy)


def list_runs(inventory: str | None = None, root: Path | None = None) -> list[RunRecord]:
    """Every run recorded here and in ./.distctl/, oldest first; only `inventory`'s if given."""
    found: dict[str, RunRecord] = {}
    for folder, legacy in ((LEGACY_DIR / "runs", True), (_runs(root), False)):
        for path in folder.glob("*.json") if folder.is_dir() else ():
            record = _record(path, legacy)
            if record:
                found[record.run_id] = record  # a resumed old run: its new record wins
    target = str(Path(inventory).resolve()) if inventory else None
    return sorted((r for r in found.values() if target is None or r.inventory == target),
                  key=lambda r: (r.started, r.run_id))


def _where(root: Path | None) -> str:
    places = [str(_runs(root))]
    if (LEGACY_DIR / "runs").is_dir():
        places.append(f"{LEGACY_DIR}/runs")
    return " or ".join(places)


def run_by_id(run_id: str, root: Path | None = None) -> RunState:
    for path in (_runs(root) / f"{run_id}.json", LEGACY_DIR / "runs" / f"{run_id}.json"):
        if _RUN_ID.match(run_id) and path.is_file():
            return load_run(path)
    raise DistctlError(f"no run '{run_id}' in {_where(root)} (distctl runs lists them)", ExitCode.NO_RUN)


def last_run_of(inventory: str, root: Path | None = None, doing: str = "recorded") -> RunState:
    """The newest run of an inventory file, wherever it was started from."""
    runs = list_runs(inventory, root)
    if not runs:
        raise DistctlError(f"no run of {inventory} {doing} in {_where(root)}", ExitCode.NO_RUN)
    return load_run(runs[-1].path)


def last_run_here(root: Path | None = None) -> RunState:
    """The newest run started from the current directory: recorded by this distctl, or named
    by an older distctl's ./.distctl/last."""
    here = str(Path.cwd())
    candidates = [r for r in list_runs(root=root) if not r.legacy and r.cwd == here]
    try:
        last = (LEGACY_DIR / "last").read_text().strip()
    except OSError:
        last = ""
    legacy = _record(LEGACY_DIR / "runs" / f"{last}.json", True) if _RUN_ID.match(last) else None
    if legacy:
        candidates.append(legacy)
    if not candidates:
        raise DistctlError(f"no run started from this directory ({here}) in {_where(root)}; "
                           "give a run id or an inventory (distctl runs lists them)", ExitCode.NO_RUN)
    return load_run(max(candidates, key=lambda r: (r.started, r.run_id)).path)


def note_ranks(run_id: str, states: list[tuple[str, int | None]], root: Path | None = None) -> None:
    """Note what `status` saw of each rank (state, exit code), when that says how the run is."""
    summary = summarize(states)
    if summary:
        note_state(run_id, summary, root)


def summarize(states: list[tuple[str, int | None]]) -> str | None:
    """One word for a run from its ranks' (state, exit code); None: unknown."""
    if any(s in ("running", "restarting") for s, _ in states):
        return "running"
    if states and all(s == "exited" for s, _ in states):
        codes = {c for _, c in states}
        if codes == {0}:
            return "finished"
        return "stopped" if codes <= {0, 143} else "failed"  # 143: checkpointed after SIGTERM
    if any(s == "killed" or (s == "exited" and c != 0) for s, c in states):
        return "failed"
    return None
