"""Human and JSON renderings: of a plan (`up --dry-run` and `check` print the same object `up`
walks), of `check`'s verdict, of the recorded runs (`runs`), of what `status` found, and the
lines `up`, `stop` and `pull` report. Pure: commands.py decides, these make the text, the Ui
prints it (colours and the guard on remote text come in as callables)."""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from orchestrator.cli import planview
from orchestrator.plan.facts import Clock, HostFacts, describe_clock
from orchestrator.inventory.model import Host
from orchestrator.plan.model import HostPlan, Plan
from orchestrator.plan.state import RunRecord, RunState
from orchestrator.run.status import RankRow, RunStatus

def render_plan(plan: Plan, full: bool = False) -> str:
    """The plan `up --dry-run` prints: readable by default, every command byte for byte with
    `full` (planview.py)."""
    return planview.full_text(plan) if full else planview.readable_text(plan)


CHECK_JSON_FORMAT = 1  # `check --json` layout; new keys may be added, readers ignore those they don't know


def plan_json(plan: Plan, facts: dict[str, HostFacts]) -> str:
    return json.dumps({
        "format": CHECK_JSON_FORMAT,
        "run_id": plan.run_id,
        "init_method": plan.init_method,
        "world_size": plan.world_size,
        "hosts": [{
            "name": hp.host.name,
            "address": hp.host.address,
            "hostname": facts[hp.host.name].hostname,
            "interface": hp.iface,
            "python": facts[hp.host.name].python,
            "torch": facts[hp.host.name].torch,
            "gpus": facts[hp.host.name].gpus,
            **_clock_json(facts[hp.host.name].clock),
            "ranks": [r.rank for r in hp.ranks],
            "commands": [" ".join(r.argv) for r in hp.ranks],
        } for hp in plan.hosts],
    }, indent=2)


def _clock_json(clock: Clock | None) -> dict[str, float | None]:
    """The host's clock offset from the workstation and its error bound, in seconds (None: not read)."""
    if clock is None:
        return {"clock_offset_s": None, "clock_error_s": None}
    return {"clock_offset_s": round(clock.offset, 3), "clock_error_s": round(clock.error, 3)}


# ------------------------------------------------------------ `distctl check`


def check_lines(plan: Plan, facts: dict[str, HostFacts], describe_ssh: Callable[[Host], str]) -> list[str]:
    """The verdict: each host as discovered, how SSH reaches it, and rank 0's address.
    `describe_ssh` names a host's SSH chain (remote.py resolves it; rendering opens nothing)."""
    lines = []
    for hp in plan.hosts:
        lines.append(_check_host(hp, facts[hp.host.name]))
        if not hp.host.is_local:
            lines.append(f"{hp.host.name}: ssh {describe_ssh(hp.host)}")
    return [*lines, f"rank 0 address: {plan.master_addr} (init method {plan.init_method})"]


def _check_host(hp: HostPlan, f: HostFacts) -> str:
    return (f"{hp.host.name}: hostname {f.hostname}, python {f.python}, torch {f.torch}, {f.gpus} GPU(s), "
            f"interface {hp.iface}, {describe_clock(f.clock)}, ranks {', '.join(str(r.rank) for r in hp.ranks)}")


def check_passed(plan_shown: bool) -> str:
    """The last word of `check`; without the plan, where to see it."""
    hint = "" if plan_shown else " (the commands it would run: --show-plan)"
    return f"check passed: 'distctl up' would start{hint}"


# ------------------------------------------------------------ `distctl up` and `stop`


def up_started(plan: Plan) -> str:
    return f"run {plan.run_id} started: {plan.world_size} rank(s), init method {plan.init_method}"


def up_detached(run_id: str) -> str:
    """`up --detach` returned: where to follow, see and stop the run."""
    return (f"detached from run {run_id}. Follow it: distctl logs -f {run_id}   "
            f"Status: distctl status {run_id}   Stop it: distctl stop {run_id}")


def up_watch_interrupted(run_id: str) -> str:
    """Ctrl-C while `up` follows the logs: the run goes on."""
    return f"detached; run {run_id} goes on. Follow it: distctl logs -f {run_id}   Stop it: distctl stop {run_id}"


def up_start_interrupted(run_id: str) -> str:
    """Ctrl-C while `up` launches: what had started was stopped."""
    return f"interrupted while starting run {run_id}: stopped what had started; nothing runs"


def stop_lines(state: RunState, problems: dict[str, str]) -> list[str]:
    """A line per host, in the run's order: `node1: stopped`, or what kept it from stopping."""
    return [f"{hs.host.name}: {problems.get(hs.host.name, 'stopped')}" for hs in state.hosts]


def stop_done(run_id: str) -> str:
    return f"run {run_id} stopped; no process of it is left on any host"


# ------------------------------------------------------------ `distctl runs`

RUNS_COLUMNS = ["run id", "inventory", "hosts", "started", "state"]
RUNS_JSON_FORMAT = 1  # `runs --json` layout; readers ignore keys they don't know


def runs_rows(records: list[RunRecord]) -> list[list[str]]:
    """`distctl runs` rows: run id, inventory, hosts, started (local time), state (`?`: not seen)."""
    return [[r.run_id, _home_short(r.inventory), _few(r.hosts),
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started)), r.last_state or "?"]
            for r in records]


def runs_text(records: list[RunRecord]) -> str:
    """The rows under a header, in aligned columns (what a pipe or a log gets)."""
    rows = [RUNS_COLUMNS, *runs_rows(records)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(RUNS_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def runs_json(records: list[RunRecord]) -> str:
    return json.dumps({"format": RUNS_JSON_FORMAT, "runs": [
        {"run_id": r.run_id, "inventory": r.inventory, "hosts": list(r.hosts), "cwd": r.cwd,
         "started": datetime.fromtimestamp(r.started).astimezone().isoformat(timespec="seconds"),
         "state": r.last_state, "file": str(r.path.absolute())} for r in records]}, indent=2)


def _few(names: tuple[str, ...], shown: int = 3) -> str:
    """`h01,h02,h03 +13`: a 16-host run stays one readable row."""
    rest = len(names) - shown
    return ",".join(names[:shown]) + (f" +{rest}" if rest > 0 else "")


def _home_short(path: str) -> str:
    home = str(Path.home())
    return "~" + path[len(home):] if path.startswith(home + os.sep) else path


# ------------------------------------------------------------ `distctl status`

STATUS_JSON_FORMAT = 1  # `status --json` layout; new keys may be added, readers ignore those they don't know


def status_header(found: RunStatus) -> str:
    """`run ID: started 2026-01-01 12:00:00, elapsed 0:03:12` (local time; elapsed to the last
    exit once every rank has exited)."""
    head = f"run {found.state.run_id}"
    if found.started is None or found.elapsed is None:  # recorded by a distctl that kept no start time
        return head
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(found.started))
    return f"{head}: started {started}, elapsed {timedelta(seconds=int(found.elapsed))}"


STATUS_COLUMNS = ["host", "rank", "state", "epoch", "progress", "detail"]


def status_rows(found: RunStatus) -> list[list[str]]:
    """The status table's rows (on a terminal), a rank each."""
    return [[r.host, str(r.status.rank), status_state(r) + status_mark(found, r), status_epoch(r), status_steps(r),
             r.detail] for r in found.rows]


def status_lines(found: RunStatus, prefix: Callable[[str, int], str]) -> list[str]:
    """The table as lines (for a pipe or a log): the header, then `  [node1 r0] running, epoch 2  (detail)`.
    `prefix` labels a rank (the Ui's `[host rN]`, in the host's colour on a terminal)."""
    return [status_header(found), *(_status_line(r, prefix(r.host, r.status.rank), status_mark(found, r))
                                    for r in found.rows)]


def _status_line(row: RankRow, prefix: str, mark: str = "") -> str:
    epoch, detail, steps = status_epoch(row), row.detail, status_steps(row)
    return (f"  {prefix} {status_state(row)}{f', epoch {epoch}' if epoch else ''}{f', {steps}' if steps else ''}"
            f"{mark}{f'  ({detail})' if detail else ''}")


def status_mark(found: RunStatus, row: RankRow) -> str:
    """`, straggler` on the row of the rank the straggler watch named (run/stragglers.py)."""
    named = found.straggler
    return ", straggler" if named and named.get("rank") == row.status.rank and named.get("host") == row.host else ""


def status_straggler(found: RunStatus) -> list[str]:
    """The watch's verdict in words, with the time it was named (local time)."""
    named = found.straggler
    if not named:
        return []
    try:
        since = datetime.strptime(str(named.get("since")), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        when = f" (since {since.astimezone().strftime('%Y-%m-%d %H:%M:%S')})"
    except ValueError:
        when = ""
    return [f"{named.get('line') or 'straggler: rank ' + str(named.get('rank'))}{when}"]


def status_steps(row: RankRow) -> str:
    """`step 120/1000 (3.2/s, 0:04:35 left)` from the rank's progress tracker, while the rank runs
    ("" without steps, and once it exited: its exit and epoch say how it ended)."""
    p = row.progress
    if p.step is None or row.status.state == "exited":
        return ""
    extra = [f"{p.rate:.3g}/s" if p.rate else "",
             str(timedelta(seconds=int(p.left_s))) + " left" if p.left_s is not None else ""]
    shown = ", ".join(e for e in extra if e)
    return f"step {p.step}{f'/{p.total}' if p.total else ''}{f' ({shown})' if shown else ''}"


def status_state(row: RankRow) -> str:
    return f"exited {row.status.code}" if row.status.state == "exited" else row.status.state


def status_epoch(row: RankRow) -> str:
    return "" if row.progress.epoch is None else str(row.progress.epoch)


def status_restarts(found: RunStatus) -> list[str]:
    """With job.max_restarts: the attempt, each restart and why, dropped hosts, the agents' outcome."""
    info = found.restarts
    if info is None:
        return []
    # The agents count attempts from 0 (the first launch); people count from 1.
    lines = [f"attempt {info['attempt'] + 1} of at most {info['max_restarts'] + 1} "
             f"(restarts used {info['attempt']} of {info['max_restarts']})"]
    lines += [f"  restart {i}/{info['max_restarts']} after {why}" for i, why in enumerate(info["restarts"], 1)]
    if info["dropped"]:
        lines.append(f"  dropped: {', '.join(info['dropped'])}")
    if info["outcome"] and info["outcome"] not in ("finished", "stopped"):
        lines.append(f"  agents: {info['outcome']}")
    for host in info.get("agents_gone", []):
        lines.append(f"  {host}: its restart agent is gone (killed?): its ranks run on, nothing restarts them there")
    return lines


def status_outcome(found: RunStatus, failure: dict | None, shown: Callable[[str], str]) -> list[str]:
    """A stopped run: the epoch it checkpointed and how to continue it; a failed one: its first
    failure and that rank's last log lines, each passed through `shown` (the Ui's guard on remote text)."""
    if found.stopped:
        at = found.stopped_epoch
        how = ("stopped by distctl stop" if not found.state.trainer else
               f"stopped (checkpointed at epoch {at})" if at is not None else "stopped (no checkpoint reported)")
        return [how, f"continue it with: distctl up {shlex.quote(found.state.inventory)} --resume"]
    if not failure:
        return []
    tail = [f"    {shown(line)}" for line in failure["log_tail"]]
    return [f"first failure: rank {failure['rank']} on {failure['host']} exited with code {failure['exit_code']}; "
            "last lines of its log:", *(tail or [""])]  # an empty tail still prints its (blank) line


def status_json(found: RunStatus, failure: dict | None) -> str:
    return json.dumps({
        "format": STATUS_JSON_FORMAT,
        "run_id": found.state.run_id,
        "state": found.summary,
        "started": found.state.started,
        "elapsed_s": None if found.elapsed is None else round(found.elapsed, 1),
        "ranks": [{"host": r.host, "rank": r.status.rank, "state": r.status.state, "exit_code": r.status.code,
                   "detail": r.detail, "epoch": r.progress.epoch, "step": r.progress.step, "total": r.progress.total,
                   "steps_per_s": r.progress.rate, "left_s": r.progress.left_s, "metrics": r.progress.metrics,
                   "straggler": bool(status_mark(found, r))}
                  for r in found.rows],
        "unreachable": list(found.unreachable),
        "missing": list(found.missing),
        "stopped_epoch": found.stopped_epoch,
        "first_failure": failure,
        "restarts": found.restarts,
        "autopsy": found.autopsy, "autopsy_by": found.autopsy_by if found.autopsy else None,
        "straggler": found.straggler,
    }, indent=2)


# ------------------------------------------------------------ `distctl pull`


def pull_done(run_id: str, into: Path, names: list[str]) -> str:
    """`pulled run R into runs/R/: model.pt, 2 rank logs, metrics.jsonl`."""
    return f"pulled run {run_id} into {into}/: {pull_files(names)}"


def pull_files(names: list[str]) -> str:
    """What pull wrote, rank logs counted: `model.pt, 2 rank logs, metrics.jsonl`."""
    logs = [n for n in names if n.startswith("rank") and n.endswith(".log")]
    shown = [n for n in names if n not in logs]
    if logs:
        shown.insert(min(1, len(shown)), f"{len(logs)} rank log{'s' if len(logs) > 1 else ''}")
    return ", ".join(shown) or "nothing"


def pull_checkpoint(label: str) -> str:
    """The pulled model.pt, as ckptinfo.describe_checkpoint labels it."""
    return f"model.pt: {label}"
