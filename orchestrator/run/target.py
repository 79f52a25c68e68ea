"""Where a run runs: the one seam that launching a run, and every command that follows it, go through.

A run runs on an SSH fleet (the inventory's `hosts:`; `cli/commands.py`'s `SshFleet`) or as one batch job on
a Slurm cluster (`slurm:`; `slurm.target.SlurmCluster`). Each implements `Target`. `commands`
picks the target once: by the inventory for `up`, its dry run and `check`; by the recorded run for
`status`, `stop` and `logs`, so a command from any shell acts on the run where it runs. `pull`,
`runs` and `web` read the run record and the run directory, which both targets keep alike.

A target refuses, in one line and with exit 2, what it cannot do (`check --net` on Slurm, say),
rather than doing something else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from orchestrator.ssh.group import DEFAULT_FANOUT

if TYPE_CHECKING:
    from orchestrator.console.ui import Ui
    from orchestrator.inventory.model import Inventory
    from orchestrator.plan.state import RunState


@dataclass(frozen=True)
class Options:
    """How to reach the hosts, for every command."""

    fanout: int = DEFAULT_FANOUT  # hosts asked at once
    accept_new_host_keys: bool = False
    straggler_watch: bool = True  # `up` and `logs -f` name the straggler (run/stragglers.py)


@dataclass(frozen=True)
class CheckRequest:
    """What `check` was asked for beyond the verdict."""

    as_json: bool = False
    show_plan: bool = False
    full: bool = False  # the plan's every command byte for byte
    net: bool = False  # measure each host's link to rank 0's host
    min_gbps: float | None = None
    collective: bool = False  # with net: an all_reduce over every host (needs torch there)


@dataclass(frozen=True)
class LogRequest:
    """Which lines `logs` shows, and how."""

    follow: bool = False
    host: str | None = None
    rank: int | None = None
    tail: int | None = None
    grep: str | None = None  # a Python regex, matched where the logs are
    collapse: bool = False  # alike lines of many ranks once, with their rank ranges


class Target(Protocol):
    """What a place that runs ranks does for distctl's commands."""

    def dry_run(self, inv: Inventory, ui: Ui, resume: bool, full: bool) -> None:
        """Print exactly what `up` would do; connect to nothing."""

    def check(self, inv: Inventory, opts: Options, ui: Ui, request: CheckRequest) -> None:
        """Connect and judge whether `up` would start; start nothing."""

    def up(self, inv: Inventory, opts: Options, ui: Ui, detach: bool, resume: bool,
           on_launch: Callable[[RunState], None] | None) -> None:
        """Launch every rank, then follow them to the end (or return once they run, `detach`)."""

    def status(self, state: RunState, opts: Options, ui: Ui, as_json: bool) -> None:
        """Each rank's state, then how the run ended, when it did."""

    def stop(self, state: RunState, opts: Options, ui: Ui, grace: float) -> None:
        """Stop every rank (SIGTERM, SIGKILL after `grace`) and check that nothing is left."""

    def logs(self, state: RunState, opts: Options, ui: Ui, request: LogRequest) -> None:
        """Replay the ranks' logs, and follow them with `request.follow`."""
