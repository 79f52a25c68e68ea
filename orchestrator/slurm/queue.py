"""Slurm's view of a job, read from plain formatted output with explicit fields.

`squeue --json` changed its schema between versions (and in 22.05 ignores `-j`); the text
formats below have been stable for a decade: `squeue -o` with named fields, `scontrol show job`'s
`Key=Value` pairs, `sbatch --parsable`/`--test-only` and `--version` lines. Every parser is pure
and tested with recorded output (tests/test_slurm_queue.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# squeue -h -j ID --states=all -o FORMAT: job id, state, partition, nodes, expected/actual start, reason
SQUEUE_FORMAT = "%i|%T|%P|%N|%S|%r"
ACTIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
                    "REQUEUE_HOLD", "RESIZING", "SIGNALING", "SPECIAL_EXIT", "STAGE_OUT", "STOPPED",
                    "RESV_DEL_HOLD", "POWER_UP_NODE"})
# Ended by Slurm, not by the program: never reported as "finished" (exit 16).
SLURM_ENDED = frozenset({"PREEMPTED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"})
ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED"}) | SLURM_ENDED
WHY = {
    "PREEMPTED": "preempted by a higher-priority job",
    "TIMEOUT": "reached its time limit (slurm.time)",
    "NODE_FAIL": "a node of the allocation failed",
    "OUT_OF_MEMORY": "ran out of memory (the kernel's OOM killer ended a rank)",
    "BOOT_FAIL": "a node failed to boot",
    "DEADLINE": "reached its deadline",
}


@dataclass(frozen=True)
class QueueEntry:
    job_id: str
    state: str  # RUNNING, PENDING, COMPLETED, TIMEOUT...
    partition: str = ""
    nodes: str = ""  # Slurm's node list, cn[1-2]
    start: str = ""  # expected start while pending, actual start once running
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def ended_by_slurm(self) -> bool:
        return self.state in SLURM_ENDED


def base_state(state: str) -> str:
    """`CANCELLED by 0` (scontrol, squeue %T) → CANCELLED; `RUNNING+` → RUNNING."""
    return re.split(r"[\s+]", state.strip(), maxsplit=1)[0] if state.strip() else ""


def parse_squeue(text: str) -> dict[str, QueueEntry]:
    """Lines of `squeue -h -o SQUEUE_FORMAT`: job id → entry (malformed lines are skipped)."""
    out = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 6 or not fields[0]:
            continue
        job_id, state, partition, nodes, start, reason = fields
        out[job_id] = QueueEntry(job_id, base_state(state), partition, nodes, start, reason)
    return out


def parse_scontrol(text: str) -> dict[str, str]:
    """`scontrol show job ID`: its Key=Value pairs (values up to the next space)."""
    return {k: v for k, v in re.findall(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=(\S*)", text)}


@dataclass(frozen=True)
class JobRecord:
    """What `scontrol show job` says of a job (kept MinJobAge seconds after it ends)."""

    state: str
    exit_code: int | None  # the batch script's exit code; None while running
    signal: int | None
    reason: str
    restarts: int
    nodes: str
    batch_host: str


def job_record(text: str) -> JobRecord | None:
    """None when scontrol does not know the job (`Invalid job id specified`)."""
    fields = parse_scontrol(text)
    if "JobState" not in fields:
        return None
    code, sig = None, None
    match = re.fullmatch(r"(\d+):(\d+)", fields.get("ExitCode", ""))
    if match:
        code, sig = int(match[1]), int(match[2])
    restarts = fields.get("Restarts", "0")
    return JobRecord(base_state(fields["JobState"]), code, sig, fields.get("Reason", ""),
                     int(restarts) if restarts.isdigit() else 0, fields.get("NodeList", ""),
                     fields.get("BatchHost", ""))


def parse_submitted(text: str) -> str | None:
    """`sbatch --parsable` prints `ID` or `ID;CLUSTER`."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    job_id = first.split(";")[0]
    return job_id if job_id.isdigit() else None


def parse_version(text: str) -> str | None:
    """`sbatch --version` → `slurm 22.05.8` → 22.05.8."""
    match = re.search(r"slurm(?:-wlm)?\s+(\d+\.\d+[\w.-]*)", text)
    return match[1] if match else None


@dataclass(frozen=True)
class TestOnly:
    """`sbatch --test-only`: when the job would start, where (nothing is queued)."""

    start: str
    nodes: str
    partition: str


def parse_test_only(text: str) -> TestOnly | None:
    """`sbatch: Job 12 to start at 2026-12-06T09:50:00 using 4 processors on nodes cn[1-2] in partition batch`."""
    match = re.search(r"to start at (\S+) using \d+ processors on nodes (\S+) in partition (\S+)", text)
    return TestOnly(match[1], match[2], match[3]) if match else None


def slurm_error(text: str) -> str:
    """The line of a Slurm client's stderr that says what is wrong (`sbatch: error: ...`)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line or "fatal:" in line]
    line = (errors or lines or [""])[-1]
    return re.sub(r"^\w+: (error|fatal): ", "", line)
