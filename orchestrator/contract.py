"""What distctl agrees on with the programs it does not import, in one place.

The exit codes distctl itself ends with; the bundled trainer's exit codes and the lines of its
output that distctl reads (the trainer imports nothing of distctl: tests/test_contract.py runs
the trainer's own writers through these readers); the marker every rank's environment carries;
and the kinds of record a host's follower (hostside/follow.py) sends. New kinds only add:
a workstation that meets a kind it does not know skips it.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """distctl's documented exit codes (README: "Exit codes")."""

    OK = 0
    RUN_FAILED = 1  # a rank exited non-zero
    BAD_INPUT = 2  # malformed inventory, bad option, unset secret variable
    UNREACHABLE = 3  # connection refused, timeout, unknown name, authentication
    HOST_KEY = 4  # unknown or changed host key
    PREFLIGHT = 5  # a host is reachable but the job cannot run there
    HANG = 6  # ranks never joined within job.join_timeout
    NO_RUN = 7  # logs/status/stop found no run to act on
    STOP_INCOMPLETE = 8  # stop could not reach a host or left processes behind
    REMOTE_STEP = 9  # a step after preflight failed on a host (prepare, push, launch): host, step, cause
    SETUP_FAILED = 10  # job.setup exited non-zero on a host; nothing was launched
    EXEC_FAILED = 11  # `distctl exec`: the command exited non-zero on at least one host
    PARTIAL = 12  # logs/pull/status: done for the reachable hosts only; the rest are named
    RESTARTS_EXHAUSTED = 13  # job.max_restarts used up (or fewer than job.min_hosts left)
    STOPPED = 14  # `up`: the run was ended by `distctl stop` (from any shell)
    HUNG = 15  # `status`: the run's ranks live but it is judged hung (issue 21's hang timeout)
    SLURM_ENDED = 16  # Slurm ended the job: preempted, time limit, node failure, out of memory
    INTERNAL = 70  # a bug in distctl (EX_SOFTWARE); --debug shows the traceback
    DETACHED = 130  # Ctrl-C while attached: the run goes on


# --- the bundled trainer (trainer/errors.py: ExitCode) ---------------------------------------
STOPPED = 143  # stopped by SIGTERM after checkpointing
PEER_LOST = 4  # a peer died or a collective timed out: a consequence, never the cause
TRAINER_FINAL = (2, 3)  # usage and divergence: a restart would fail the same way

# --- every rank's environment ------------------------------------------------------------
RUN_MARKER = "DISTCTL_RUN_ID"  # `stop` sweeps /proc/*/environ for RUN_MARKER=<run id>

# --- the follower's records, one per line: `R text` is rank R's log line; the others are --------
RECORD_HEARTBEAT = "hb"  # the follower is alive while the ranks are quiet
RECORD_AT = "at"  # `at R N`: the follower starts rank R after its line N
RECORD_EXIT = "exit"  # `exit R CODE TIME`: rank R's wrapper recorded CODE ("-": none) at TIME
RECORD_EVENT = "ev"  # `ev TEXT`: a line of the restart agent's event log
RECORD_PARTIAL = "p"  # `p R TEXT`: rank R's unfinished last line (its newest redraw); never counted as a line
RECORD_STOP = "stop"  # `stop TIME`: `distctl stop` marked the run (stop-requested) at TIME
RECORD_MISSING = "missing"  # the follower's one record when the host has no such run directory
RECORD_KINDS = (RECORD_HEARTBEAT, RECORD_AT, RECORD_EXIT, RECORD_EVENT, RECORD_PARTIAL, RECORD_STOP, RECORD_MISSING)
