"""`distctl pull`: a run's results back on the workstation, under `runs/<run id>/`:
each rank's log and, for the bundled trainer, the final checkpoint (`model.pt`), per-epoch
metrics as JSON lines and a PNG plot of loss and test accuracy per epoch. A user program's own
files are its job.outputs (outputs.py), pulled over the same path."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import DistctlError, ExitCode
from orchestrator.results.outputs import PullReport, pull_outputs
from orchestrator.ssh.remote import Connection

if TYPE_CHECKING:
    from orchestrator.console.ui import Ui


def parse_metrics(log: str) -> list[dict]:
    """The trainer's per-epoch logfmt lines (`epoch=E rank=R loss=... ...`) as dicts."""
    rows = []
    for line in log.splitlines():
        if not line.startswith("epoch="):
            continue
        row: dict = {}
        for word in shlex.split(line):
            key, _, value = word.partition("=")
            try:
                row[key] = int(value) if key in ("epoch", "rank") else float(value)
            except ValueError:
                row[key] = value
        rows.append(row)
    return rows


def plot_metrics(rows: list[dict], path: Path) -> bool:
    """Loss (mean over ranks) and rank 0's test accuracy per epoch; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = sorted({r["epoch"] for r in rows})
    loss = [sum(r["loss"] for r in rows if r["epoch"] == e) / max(1, sum(r["epoch"] == e for r in rows))
            for e in epochs]
    acc = [(r["epoch"], r["test_accuracy"]) for r in rows if "test_accuracy" in r]
    fig, left = plt.subplots(figsize=(7, 4), dpi=100)
    left.plot(epochs, loss, marker="o", color="tab:blue", label="training loss")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss", color="tab:blue")
    right = left.twinx()
    right.plot([a[0] for a in acc], [a[1] for a in acc], marker="s", color="tab:orange", label="test accuracy")
    right.set_ylabel("test accuracy", color="tab:orange")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


LOGS = "rank*.log"  # each rank's log, in its host's run directory
CHECKPOINT = "ckpt/latest.pt"  # the trainer's, read from rank 0's host; it lands as model.pt
STACKS = "stacks/*/rank*.txt"  # the dumps `distctl stacks` saved on each host (stacks/<stamp>/rankR.txt)
AUTOPSY = "autopsy.txt"  # culprit and collateral, kept on rank 0's host by the attached up (run/autopsy.py)


def pull_run(state, conns: dict[str, Connection], dest: Path, ui: Ui) -> tuple[Path, list[str], PullReport]:
    """Pull into `dest/<run id>/` the rank logs, the saved stacks, the failure report and, for the
    trainer, the checkpoint (as model.pt) and the metrics read from the logs; returns that folder,
    the names of the files now there, and the transfer's report (its per-host errors).

    Everything comes over the one verified path job.outputs uses (outputs.py: streamed into a
    temp file, renamed once its sha256 checks; a file already there unchanged is not sent again).
    """
    reachable = replace(state, hosts=tuple(hs for hs in state.hosts if hs.host.name in conns))
    report = pull_outputs(reachable, conns, [LOGS, STACKS], dest, workdir_of=lambda hs: hs.rundir)
    out = report.dest
    present = {path for path, _ in report.written} | set(report.unchanged)
    for hs in reachable.hosts:
        for r in hs.ranks:
            if f"rank{r.rank}.log" not in present:
                ui.warn(f"{hs.host.name}: no log for rank {r.rank}")
    written = sorted(present, key=_log_order)
    first = state.hosts[0]
    if first.host.name in conns:
        autopsy = pull_outputs(replace(state, hosts=(first,)), conns, [AUTOPSY], dest, workdir_of=lambda hs: hs.rundir)
        report.errors += autopsy.errors
        written += [AUTOPSY] if autopsy.written or autopsy.unchanged else []
    if not state.trainer:  # a user program's results are its job.outputs
        return out, written, report
    first = state.hosts[0]
    if first.host.name in conns:
        ckpt = pull_outputs(replace(state, hosts=(first,)), conns, [CHECKPOINT], dest,
                            workdir_of=lambda hs: hs.rundir, rename={CHECKPOINT: "model.pt"})
        report.errors += ckpt.errors
        if CHECKPOINT in ckpt.unmatched:
            raise DistctlError(f"{first.host.name}: run {state.run_id} has no checkpoint yet "
                               f"(rank 0 writes one after each epoch)", ExitCode.NO_RUN)
        if ckpt.written or ckpt.unchanged:
            written.append("model.pt")
    rows = [row for name in written if name.endswith(".log")
            for row in parse_metrics((out / name).read_text(encoding="utf-8", errors="replace"))]
    rows.sort(key=lambda r: (r.get("epoch", 0), r.get("rank", 0)))
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written.append("metrics.jsonl")
    if plot_metrics(rows, out / "metrics.png"):
        written.append("metrics.png")
    else:
        ui.warn("matplotlib is not installed: no metrics.png (pip install matplotlib)")
    return out, written, report


def _log_order(name: str) -> tuple[int, str]:
    digits = name.removeprefix("rank").removesuffix(".log")
    return (int(digits), name) if digits.isdigit() else (1 << 30, name)
