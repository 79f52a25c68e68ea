"""`distctl pull`: a run's results back on the workstation, under `runs/<run id>/`:
the final checkpoint (`model.pt`), each rank's log, per-epoch metrics as JSON lines,
and a PNG plot of loss and test accuracy per epoch."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from orchestrator import shell
from orchestrator.errors import DistctlError, ExitCode
from orchestrator.ssh.remote import Connection


def fetch(conn: Connection, path: str) -> bytes | None:
    """A remote file's bytes, or None when it does not exist."""
    stream = conn.open_stream(f"cat {shell.join([path])} 2>/dev/null")
    chunks = []
    try:
        while True:
            data = stream.read()
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks) if stream.exit_code() == 0 else None
    finally:
        stream.close()


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


def pull_stacks(conn: Connection, rundir: str, out: Path) -> list[str]:
    """The dumps `distctl stacks` saved on a host (stacks/<stamp>/rankR.txt) into out/stacks/."""
    listing = conn.run(f"cd {shell.join([rundir])} 2>/dev/null && for f in stacks/*/rank*.txt; do "
                       "[ -f \"$f\" ] && case $f in stacks/live/*|stacks/site/*) ;; *) echo \"$f\";; esac; done; true",
                       timeout=30).stdout.split()
    written = []
    for name in listing:
        parts = name.split("/")
        if len(parts) != 3 or any(p in ("", ".", "..") for p in parts):  # a host never names our paths
            continue
        data = fetch(conn, f"{rundir}/{name}")
        if data is not None:
            (out / parts[0] / parts[1]).mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(data)
            written.append(name)
    return written


def pull_run(state, conns: dict[str, Connection], dest: Path, ui) -> tuple[Path, list[str]]:
    """Pull into `dest/<run id>/`; returns that folder and the names of the files written there."""
    out = dest / state.run_id
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    rows: list[dict] = []
    for hs in state.hosts:
        if hs.host.name not in conns:  # unreachable: the caller says so
            continue
        for r in hs.ranks:
            log = fetch(conns[hs.host.name], f"{hs.rundir}/rank{r.rank}.log")
            if log is None:
                ui.warn(f"{hs.host.name}: no log for rank {r.rank}")
                continue
            (out / f"rank{r.rank}.log").write_bytes(log)
            written.append(f"rank{r.rank}.log")
            rows += parse_metrics(log.decode("utf-8", errors="replace"))
        written += pull_stacks(conns[hs.host.name], hs.rundir, out)
    first = state.hosts[0]
    report = fetch(conns[first.host.name], f"{first.rundir}/autopsy.txt") if first.host.name in conns else None
    if report is not None:  # culprit and collateral, kept by the attached up (autopsy.py)
        (out / "autopsy.txt").write_bytes(report)
        written.append("autopsy.txt")
    if not state.trainer:  # a user program's results are its job.outputs (orchestrator/results/outputs.py)
        return out, written
    first = state.hosts[0]
    model = fetch(conns[first.host.name], f"{first.rundir}/ckpt/latest.pt") if first.host.name in conns else None
    if model is None and first.host.name in conns:
        raise DistctlError(f"{first.host.name}: run {state.run_id} has no checkpoint yet "
                           f"(rank 0 writes one after each epoch)", ExitCode.NO_RUN)
    if model is not None:
        (out / "model.pt").write_bytes(model)
        written.append("model.pt")
    rows.sort(key=lambda r: (r.get("epoch", 0), r.get("rank", 0)))
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written.append("metrics.jsonl")
    if plot_metrics(rows, out / "metrics.png"):
        written.append("metrics.png")
    else:
        ui.warn("matplotlib is not installed: no metrics.png (pip install matplotlib)")
    return out, written
