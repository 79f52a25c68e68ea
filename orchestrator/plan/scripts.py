"""The text each step runs on a host: small POSIX shell scripts, and Python where shell
can't do it portably (polling a port, following several logs on one channel, detaching);
the Python lives in orchestrator/hostside/. Every value goes through `shell.join`; nothing
here touches the network."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from orchestrator import shell, timers
from orchestrator.contract import RECORD_MISSING
from orchestrator import hostside
from orchestrator.hostside import program

if TYPE_CHECKING:
    from orchestrator.plan.model import RankPlan


def launch_script(rundir: str, ranks: Sequence[RankPlan], code_dir: str, python: str,
                  agent: dict) -> str:
    """Start each rank in its own session and process group, detached from SSH.

    Ranks run in `work/`, this run's own copy of the pushed code (made once; a resumed run
    keeps its own), so what a run writes next to its code never reaches another run.
    The wrapper traps TERM so that it outlives the program's graceful stop and records the
    exit code; what `distctl_detach` prints is the process group id `stop` signals. More
    than one rank on a host gets OMP_NUM_THREADS=1 unless it is set, as torchrun does.
    The host's agent starts after its ranks and adopts them (hostside/agent.py, its config
    `agent`): with job.max_restarts it restarts them with the same wrappers; a watcher (config
    "watch": neither restarts nor a hang timeout) leaves the `agent.watch` mark, which tells the
    follower and `status` that no rank of this run will start again.
    `stacks/site/sitecustomize.py` arms every Python process of a rank for `distctl stacks`
    (hostside/sitecustomize.py); the wrappers put it on PYTHONPATH.
    """
    # Logs and checkpoints may hold what a rank prints, secrets included: owner-only files.
    code = shell.join([code_dir + "/."])
    commands = [f"cd {shell.join([rundir])} || exit 1", "umask 077",
                f"[ -d work ] || {{ rm -rf work.tmp && cp -R {code} work.tmp && mv work.tmp work; }} || exit 1",
                stack_site_script(), detach_function(python)]
    commands.append("rm -f stop-requested")  # an earlier attempt's stop (lifecycle.STOP_REQUESTED): not this one's
    watch = bool(agent.get("watch"))
    commands.append("rm -f stopping agent.state agent.events agent.watch rank*.env"
                    + (" && : >agent.watch" if watch else ""))
    for r in ranks:
        remove_exit, *rest = _start_rank(r, len(ranks), python, not watch)
        # A resumed run appends to its logs: mark where the new attempt starts.
        log = f"rank{r.rank}.log"
        commands += [remove_exit,
                     # (after a newline of its own when the log ends in an unfinished line: a bar)
                     f"[ -s {log} ] && {{ [ -z \"$(tail -c 1 {log})\" ] || echo >>{log}; "
                     f"echo \"--- distctl: resumed $(date -u +%Y-%m-%dT%H:%M:%SZ) ---\" >>{log}; }}",
                     *rest]
    # The agent gets the run's environment (its marker included, so `stop` sweeps it too).
    start = program(python, "agent", json.dumps(agent, separators=(",", ":"), sort_keys=True))
    commands += [f"pgid=$({DETACH} sh -c '. ./env; exec \"$@\"' distctl-agent {start}) || exit 1",
                 "echo \"$pgid\" >agent.pid", "echo launched agent pgid=$pgid"]
    return shell.lines(*commands)


def _start_rank(r: RankPlan, ranks_here: int, python: str, restarts: bool, extra: Sequence[str] = ()) -> list[str]:
    """One rank started detached: its old exit file gone, its process group id in rankR.pid and
    printed as `launched rank=R pgid=N` (what the restart agent reads back)."""
    exit_file = f"rank{r.rank}.exit"
    return [f"rm -f {exit_file}",
            f"pgid=$({DETACH} sh -c {shell.join([rank_wrapper(r, ranks_here, restarts)])} "
            f"distctl-rank{r.rank} {shell.join([*r.argv, *extra])}) || exit 1",
            f"echo \"$pgid\" >rank{r.rank}.pid",
            f"echo launched rank={r.rank} pgid=$pgid"]


def restart_script(rundir: str, ranks: Sequence[RankPlan], python: str, extra: Sequence[str]) -> str:
    """What a host's restart agent runs to start attempt N of the host's ranks: the launch
    step's own rank starts, with `extra` (the trainer's --resume) after the program. The agent
    first writes each rank's placement and attempt to rankR.env, which the wrapper sources."""
    commands = [f"cd {shell.join([rundir])} || exit 1", "umask 077", detach_function(python)]
    for r in ranks:
        commands += _start_rank(r, len(ranks), python, True, extra)
    return shell.lines(*commands)


def rank_wrapper(r: RankPlan, ranks_here: int, restarts: bool = False) -> str:
    """The shell around one rank's program (its argv follows as "$@"): the run's environment,
    the rank's own variables, its log, and its exit code in rankR.exit. Under an agent, the
    exports of the current attempt (rankR.env: a restart's rank, world size and count) win.
    Nothing else runs beside the program: the host's agent keeps the rank's progress."""
    log, exit_file = f"rank{r.rank}.log", f"rank{r.rank}.exit"
    # Not `env RANK=0 python ...`: env would take a program path holding "=" for a variable.
    own = " ".join(f"{v.name}={shell.join([v.value])}" for v in r.env)
    threads = '[ -n "${OMP_NUM_THREADS+x}" ] || export OMP_NUM_THREADS=1; ' if ranks_here > 1 else ""
    attempt = f"[ ! -f rank{r.rank}.env ] || . ./rank{r.rank}.env; " if restarts else ""
    return (f"trap : TERM INT HUP; . ./env; {f'export {own}; ' if own else ''}{attempt}{threads}{STACK_ENV}"
            f"(cd work && exec \"$@\") >>{log} 2>&1 </dev/null; "
            f"echo $? >{exit_file}.tmp; mv {exit_file}.tmp {exit_file}")


DETACH = "distctl_detach"
# After the run's env: an inventory's PYTHONPATH stays, behind the folder that arms `distctl stacks`.
STACK_ENV = ('export DISTCTL_STACKS="$PWD/stacks" '
             'PYTHONPATH="$PWD/stacks/site${PYTHONPATH:+:$PYTHONPATH}"; ')


def stack_site_script() -> str:
    """Write hostside/sitecustomize.py where the rank wrappers' PYTHONPATH finds it, and the
    folder its armed processes write their dumps to."""
    return (f"mkdir -p stacks/site stacks/live && printf %s {shell.join([hostside.site_source()])} "
            ">stacks/site/sitecustomize.py || exit 1")


def detach_function(python: str) -> str:
    """A shell function `distctl_detach COMMAND...`: `setsid COMMAND &` and `echo $!` in one,
    through Python's os.setsid, because macOS and the BSDs have no setsid binary."""
    return f"{DETACH}() {{ {program(python, 'detach')} \"$@\"; }}"


def wait_port_script(python: str, rundir: str, addr: str, port: int, rank: int, timeout: float) -> str:
    """Poll rank 0's rendezvous port from its own host until it listens or rank 0 dies."""
    return (f"cd {shell.join([rundir])} || exit 1; "
            + program(python, "wait_port", addr, port, f"rank{rank}.pid", timeout))


FROM_PREPARE = "from"  # a follower starts where the prepare step counted each log (prepare_script)


def heartbeat_args(heartbeat: float) -> list[str]:
    """The follower's heartbeat, as its argument only where it is not its default (timers.py)."""
    return [] if heartbeat == timers.DEFAULT.heartbeat else [f"--heartbeat={heartbeat:g}"]


MISSING = RECORD_MISSING  # the follower's one record when the host has no such run directory


def follow_script(python: str, rundir: str, ranks: dict[int, int | str], follow: bool = True,
                  tail: int | None = None, heartbeat: float = timers.DEFAULT.heartbeat, grep: str | None = None) -> str:
    """Print a host's rank logs as `R line` (every line, in order), then `exit R CODE TIME`
    for each rank once its process group is gone (`-`: no code, e.g. SIGKILL; TIME is when
    the exit code was written, by the host's clock). See hostside/follow.py.

    One channel per host, whatever its slot count: sshd allows 10 sessions per connection.
    `ranks` maps rank to log lines already seen (skipped), or to "from": the count the
    prepare step recorded (rankR.from); `tail` keeps only the last N; `grep` only the lines
    that match it (`distctl logs --grep`).
    """
    args = ["--grep", grep] if grep is not None else []
    args += [f"{rank}:{skip}" for rank, skip in sorted(ranks.items())]
    return (f"cd {shell.join([rundir])} 2>/dev/null || {{ echo {MISSING}; exit 1; }}; "
            + program(python, "follow", *heartbeat_args(heartbeat), "follow" if follow else "replay",
                      -1 if tail is None else tail, *args))


# Filled at run time by `fill_shown`: each rank still running, as R:N (N lines already shown).
SHOWN = "<R:lines shown, for each rank of the host still running>"


def refollow_script(python: str, rundir: str, heartbeat: float = timers.DEFAULT.heartbeat) -> str:
    """The follower a lost link reopens (links.py), as the plan shows it: the ranks and the
    lines the workstation already showed are only known then, so they are a placeholder."""
    return (f"cd {shell.join([rundir])} 2>/dev/null || {{ echo {MISSING}; exit 1; }}; "
            + program(python, "follow", *heartbeat_args(heartbeat), "follow", -1, SHOWN))


def fill_shown(command: str, ranks: dict[int, int | str]) -> str:
    """`refollow_script`'s placeholder filled: exactly `follow_script(..., ranks)`."""
    return command.replace(shell.join([SHOWN]), " ".join(f"{rank}:{skip}" for rank, skip in sorted(ranks.items())))


SETUP_DONE = ".distctl-setup-done"
PROBE_MARK = "distctl-probe"


def setup_script(setup_dir: str, code_dir: str, setup: str, python: str) -> str:
    """Run job.setup once in its own copy of the code (a venv made there stays where it was
    made: venvs cannot move), unless it already succeeded for this setup text and code. Then
    probe the host's python (which may be in that venv) for the checks that depend on setup."""
    from orchestrator.plan.facts import probe_script

    q = shell.join
    run = q(["-e", "-c", setup])
    return shell.lines(
        f"if [ -f {q([setup_dir + '/' + SETUP_DONE])} ]; "
        "then echo 'setup unchanged since it last succeeded here; skipped'",
        f"else rm -rf {q([setup_dir])} && mkdir -p {q([setup_dir])} && cp -R {q([code_dir + '/.'])} {q([setup_dir])} "
        f"&& cd {q([setup_dir])} || exit 1",
        f"  if command -v bash >/dev/null 2>&1; then bash {run} </dev/null; else sh {run} </dev/null; fi "
        "2>&1 || exit $?",
        f"  touch {q([SETUP_DONE])}",
        "fi",
        f"echo {PROBE_MARK}",
        probe_script(python),
    )


def prepare_script(workdir: str, rundir: str, artifact_dirs: list[str], ranks: Sequence[int] = (),
                   setup_dir: str | None = None) -> str:
    """Create the workdir (files not world-writable) and a 0700 run dir with the env file.
    Each rank's log length goes to rankR.from: a resumed run appends to its logs, and the
    follower (`R:from`) starts after what an earlier attempt wrote. `uses` lists the shared
    folders the run needs (code, data, setup): `distctl clean` keeps those."""
    q = shell.join
    counts = [f"for r in {' '.join(map(str, ranks))}; do wc -l 2>/dev/null <{q([rundir])}/rank$r.log "
              f">{q([rundir])}/rank$r.from || echo 0 >{q([rundir])}/rank$r.from; done"] if ranks else []
    return shell.lines(
        f"umask 022 && mkdir -p {q([workdir + '/code'])} {q([workdir + '/data'])} || exit 1",
        f"umask 077 && mkdir -p {q([rundir + '/ckpt'])} && chmod 700 {q([rundir])} "
        f"&& cat >{q([rundir + '/env'])} || exit 1",
        f"echo 1 >{q([rundir + '/format'])} || exit 1",  # run dir layout version: a later distctl reads it
        f"printf '%s\\n' {q([*artifact_dirs, *([setup_dir] if setup_dir else [])])} >{q([rundir + '/uses'])}",
        *counts,
        f"for d in {q(artifact_dirs)}; do [ -f \"$d.complete\" ] && echo \"have $d\"; done; true",
    )


def push_script(target: str) -> str:
    """Unpack a tar stream into a fresh directory, rename it into place, then mark it complete.

    The marker sits beside the folder (`<digest>.complete`), not in it: the folder is exactly
    what was pushed ($DISTCTL_DATA lists only the user's files), and a folder without its
    marker (a push cut short) is never taken for done.
    """
    q = shell.join([target])
    done = shell.join([target + ".complete"])
    tmp = shell.join([target + ".tmp"]) + ".$$"
    parent = shell.join([target.rsplit("/", 1)[0] or "/"])
    # tar reports a full disk as "Wrote only N of M bytes": name the cause, and free the space.
    full = (f"df -Pk {parent} 2>/dev/null | awk 'NR==2 && $4 < 1024 "
            "{print \"No space left on device (\" $4 \" KiB free on \" $6 \")\"}' >&2")
    return shell.lines(
        f"[ -f {done} ] && exit 0",
        f"umask 022 && rm -rf {tmp} && mkdir -p {tmp} && tar -xf - -C {tmp} || {{ {full}; rm -rf {tmp}; exit 1; }}",
        f"rm -rf {q} && mv {tmp} {q} && touch {done}",
    )
