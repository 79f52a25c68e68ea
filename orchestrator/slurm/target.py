"""The Slurm cluster as a place where a run runs (run/target.py's `Target`): one batch job per run,
from a login node over SSH. What it cannot do it refuses in one line (exit 2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from orchestrator.errors import DistctlError, ExitCode
from orchestrator.plan.state import new_run_id
from orchestrator.slurm import lifecycle, submit

if TYPE_CHECKING:
    from orchestrator.run.target import CheckRequest, LogRequest, Options
    from orchestrator.console.ui import Ui
    from orchestrator.inventory.model import Inventory
    from orchestrator.plan.state import RunState


def _refuse(what: str) -> DistctlError:
    return DistctlError(f"{what} does not apply to a Slurm run (see the README, \"On a Slurm cluster\")",
                        ExitCode.BAD_INPUT)


class SlurmCluster:
    """`Target` for an inventory with `slurm:` (and a run recorded with its job id)."""

    def dry_run(self, inv: Inventory, ui: Ui, resume: bool, full: bool) -> None:
        submit.dry_run(inv, new_run_id(inv.job.run_name), ui)  # the script is short: shown whole, full or not

    def check(self, inv: Inventory, opts: Options, ui: Ui, request: CheckRequest) -> None:
        if request.net or request.collective:
            raise _refuse("check --net")
        submit.check(inv, ui, request.as_json)

    def up(self, inv: Inventory, opts: Options, ui: Ui, detach: bool, resume: bool,
           on_launch: Callable[[RunState], None] | None) -> None:
        if on_launch is not None:
            raise _refuse("up --web")
        submit.up(inv, new_run_id(inv.job.run_name), ui, detach, resume)

    def status(self, state: RunState, opts: Options, ui: Ui, as_json: bool) -> None:
        lifecycle.status(state, ui, as_json)

    def stop(self, state: RunState, opts: Options, ui: Ui, grace: float) -> None:
        lifecycle.stop(state, ui, grace)

    def logs(self, state: RunState, opts: Options, ui: Ui, request: LogRequest) -> None:
        if request.grep is not None or request.collapse:
            raise _refuse("logs --grep and --collapse")
        lifecycle.logs(state, ui, request.follow, request.host, request.rank, request.tail)


def runs_on_slurm(state: RunState) -> bool:
    return lifecycle.slurm_of(state) is not None
