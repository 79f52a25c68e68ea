"""Human renderings of a plan: `up --dry-run` and `check` print the same object `up` walks."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path

from orchestrator.facts import Clock, HostFacts
from orchestrator.plan import Plan, StepKind
from orchestrator.state import RunRecord

_TITLES = {
    StepKind.PREPARE: "create the run directory and write the rank environment (stdin)",
    StepKind.PUSH: "push {artifact} (a tar stream on stdin; skipped when the host has it)",
    StepKind.SETUP: "run job.setup in its own copy of the code (skipped when it last succeeded for this "
                     "code), then probe python",
    StepKind.LAUNCH: "start ranks {ranks} in the run's copy of the code, detached, one process group each",
    StepKind.WAIT_PORT: "wait until rank 0 listens on {addr}:{port}",
    StepKind.STREAM: "stream the logs of ranks {ranks}",
}


def render_plan(plan: Plan) -> str:
    out = [f"run {plan.run_id}: {plan.world_size} rank(s), init method {plan.init_method}"]
    for hp in plan.hosts:
        ranks = ", ".join(str(r.rank) for r in hp.ranks)
        out.append(f"  {hp.host.name} ({hp.host.address}): ranks {ranks}; interface {hp.iface}; "
                   f"run dir {hp.rundir}")
    out += [f"  note: {n}" for n in plan.notes]
    for number, step in enumerate(plan.steps, 1):
        hp = plan.host_plan(step.host)
        title = _TITLES[step.kind].format(artifact=step.artifact, addr=plan.master_addr,
                                          port=plan.port, ranks=", ".join(str(r.rank) for r in hp.ranks))
        out.append(f"\n# {number}. {step.host}: {title}")
        out.append(step.command)
        if step.stdin:
            out.append("# stdin:")
            out += [f"#   {line}" for line in step.stdin.splitlines()]
    return "\n".join(out)


def plan_json(plan: Plan, facts: dict[str, HostFacts]) -> str:
    return json.dumps({
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
