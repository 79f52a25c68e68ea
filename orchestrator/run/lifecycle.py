"""After launch: status, stop and logs of a run, on every host in parallel.

`stop` signals each rank's process group (recorded at launch), waits out the
grace period, kills what is left, then sweeps /proc for processes carrying this
run's exact marker in their environment: a worker that left its group (torchrun
starts workers with a new session) is still found, and no other run is touched.
Where there is no /proc (macOS), the process groups are all `stop` can see.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from orchestrator import shell
from orchestrator.errors import HostError
from orchestrator.contract import RUN_MARKER
from orchestrator.ssh.remote import Connection


def _sweep(run_id: str, action: str) -> str:
    """A loop over every process whose environment holds exactly DISTCTL_RUN_ID=<run_id>."""
    marker = shell.join([f"{RUN_MARKER}={run_id}"])
    # 2>/dev/null before <"$e": a process gone since the glob is no error worth printing.
    return (f"for e in /proc/[0-9]*/environ; do p=${{e#/proc/}}; p=${{p%/environ}}; "
            f"[ \"$p\" = \"$$\" ] && continue; "
            f"if tr '\\000' '\\n' 2>/dev/null <\"$e\" | grep -qxF {marker}; then {action}; fi; done")


# `ours G`: process group G (from a pid file) may be signalled. Its leader (a rank's wrapper, the
# agent) was started in the run directory and never leaves it. A leader there elsewhere is
# a recycled pid: the run's group ended long ago, or the host rebooted since the pid file was
# written; it is left alone. No readable cwd (no /proc on macOS, a zombie leader whose group
# still holds the id, no such process) keeps the old rule: the group is ours.
OURS = 'here=$(pwd -P); ours() { c=$(readlink "/proc/$1/cwd" 2>/dev/null) || return 0; [ "$c" = "$here" ]; }'
# The agent was started by distctl_detach in a session of its own: its pid is its group's id.
HALT_AGENT = ('touch stopping; [ -f agent.pid ] && g=$(cat agent.pid) && ours "$g" && kill -KILL -"$g" 2>/dev/null; '
              'true')


# Written by `distctl stop` (the user's, not distctl's own teardown after a failure) on every host
# before any rank is signalled: whatever a rank then exits with, on whichever host, is the stop's
# doing. The follower relays it (`stop TIME`) and `status` reads it (`stop=TIME`).
STOP_REQUESTED = "stop-requested"


def halt_script(rundir: str, requested: bool = False) -> str:
    """No restart from now on: the `stopping` file, then the restart agent killed (ranks untouched).
    `stop` runs this on every host before it signals any rank: otherwise a rank stopped on one
    host looks like a failure to an agent on another, which would restart the run. `requested`:
    a user's stop, marked (STOP_REQUESTED) first."""
    mark = f"[ -e {STOP_REQUESTED} ] || touch {STOP_REQUESTED}" if requested else "true"
    return shell.lines(f"cd {shell.join([rundir])} 2>/dev/null || exit 0", mark, OURS, HALT_AGENT, "echo halted")


def stop_script(rundir: str, run_id: str, grace: float) -> str:
    """TERM each rank group, KILL after `grace` seconds, sweep, and report what is left."""
    ticks = max(0, int(grace * 10))
    return shell.lines(
        f"cd {shell.join([rundir])} 2>/dev/null || {{ echo left=0; exit 0; }}",
        OURS,
        HALT_AGENT,
        # `kill -SIG -PGID`, never `kill -SIG -- -PGID`: dash's kill (Debian's sh) reads `--`
        # as a process id ("Illegal number: -"), and the group would go unsignalled.
        "pgids=$(for g in $(cat rank*.pid 2>/dev/null); do ours \"$g\" && echo \"$g\"; done)",
        "alive() { for g in $pgids; do kill -0 -\"$g\" 2>/dev/null && return 0; done; return 1; }",
        "for g in $pgids; do kill -TERM -\"$g\" 2>/dev/null; done",
        f"i=0; while alive && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done",
        "for g in $pgids; do kill -KILL -\"$g\" 2>/dev/null; done",
        "if [ -d /proc/self ]; then " + _sweep(run_id, "kill -KILL \"$p\" 2>/dev/null") + "; fi",
        # Killed processes vanish from /proc once reaped; give them a moment, then count.
        # Without /proc (macOS) the groups are all there is to count; with it, a group of
        # zombies (init reaps them late in some containers) must not count as left.
        "i=0; while [ $i -lt 20 ]; do n=0; if [ -d /proc/self ]; then " + _sweep(run_id, "n=$((n+1))") +
        "; else for g in $pgids; do kill -0 -\"$g\" 2>/dev/null && n=$((n+1)); done; fi"
        "; [ $n = 0 ] && break; sleep 0.1; i=$((i+1)); done",
        'echo "left=$n"',
    )


def status_script(rundir: str, ranks: list[int]) -> str:
    """One line per rank: `rank=R state=running|restarting|exited|killed|not-started code=C at=MTIME`.
    `restarting`: the rank is not running (or failed) while its host's restart agent lives."""
    return shell.lines(
        f"cd {shell.join([rundir])} 2>/dev/null || {{ echo missing=1; exit 0; }}",
        OURS,
        'alive() { [ -f "$1" ] && g=$(cat "$1") && ours "$g" && kill -0 -"$g" 2>/dev/null; }',
        # (a watcher, agent.watch, starts no rank again: its ranks are never `restarting`)
        "agent=0; alive agent.pid && agent=1; restarter=$agent; [ ! -f agent.watch ] || restarter=0",
        f"for r in {' '.join(str(r) for r in ranks)}; do",
        "  live=0; alive rank$r.pid && live=1",
        # (an exit file while the group lingers: a restart's teardown under way, not the run's end)
        '  if [ $restarter = 1 ] && { [ $live = 0 ] || [ -f rank$r.exit ]; } && '
        '[ "$(cat rank$r.exit 2>/dev/null)" != 0 ]; then '
        'echo "rank=$r state=restarting";',
        '  elif [ -f rank$r.exit ]; then echo "rank=$r state=exited code=$(cat rank$r.exit) '
        'at=$(stat -c %Y rank$r.exit 2>/dev/null || stat -f %m rank$r.exit)";',
        '  elif [ $live = 1 ]; then echo "rank=$r state=running";',
        '  elif [ -f rank$r.pid ]; then echo "rank=$r state=killed"; else echo "rank=$r state=not-started"; fi',
        "done",
        f'[ -f {STOP_REQUESTED} ] && echo "stop=$(stat -c %Y {STOP_REQUESTED} 2>/dev/null || '
        f'stat -f %m {STOP_REQUESTED})"',
        '[ -f agent.state ] && echo "agent $(cat agent.state)"',
        '[ -f agent.pid ] && echo "agent-alive=$agent"; true',
    )


def parse_agent(output: str) -> dict | None:
    """The restart agent's agent.state from status_script's output (None: no agent)."""
    for line in output.splitlines():
        if line.startswith("agent {"):
            try:
                data = json.loads(line[6:])
            except ValueError:
                return None
            if not isinstance(data, dict):
                return None
            # An agent whose process is gone before it recorded an outcome died (killed, crashed).
            data["gone"] = "agent-alive=0" in output.splitlines() and not data.get("outcome")
            return data
    return None


@dataclass(frozen=True)
class RankStatus:
    rank: int
    state: str  # running | restarting | exited | killed | not-started | unreachable | missing
    code: int | None = None
    at: float | None = None  # when the exit code was written (host clock)


def parse_status(output: str) -> list[RankStatus]:
    out = []
    for line in output.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "rank" in fields:
            code = fields.get("code", "")
            at = fields.get("at", "")
            out.append(RankStatus(int(fields["rank"]), fields.get("state", "?"),
                                  int(code) if code.lstrip("-").isdigit() else None,
                                  float(at) if at.isdigit() else None))
    return out


def parse_left(output: str) -> int:
    for line in output.splitlines():
        if line.startswith("left="):
            return int(line[5:] or 0)
    return -1


def halt_host(conn: Connection, rundir: str, requested: bool = False) -> None:
    conn.run(halt_script(rundir, requested), timeout=30)


def parse_stop(output: str) -> float | None:
    """When a user's `distctl stop` was requested (host clock), from status_script's `stop=` line."""
    for line in output.splitlines():
        if line.startswith("stop=") and line[5:].isdigit():
            return float(line[5:])
    return None


def parse_missing(output: str) -> bool:
    """status_script found no run directory (host reimaged, workdir cleaned)."""
    return "missing=1" in output.splitlines()


def stop_host(conn: Connection, rundir: str, run_id: str, grace: float) -> int:
    """Stop one host's ranks; returns how many of the run's processes are left (0 = clean)."""
    result = conn.run(stop_script(rundir, run_id, grace), timeout=grace + 30)
    left = parse_left(result.stdout)
    if left < 0:
        raise HostError(conn.name, f"stop failed: {result.stderr.strip() or 'no report'}")
    return left
