"""The text each step runs on a host: small POSIX shell scripts, and Python where shell
can't do it portably (polling a port, following several logs on one channel). Every value
goes through `shell.join`; nothing here touches the network."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from orchestrator import shell

if TYPE_CHECKING:
    from orchestrator.plan import RankPlan


def launch_script(rundir: str, ranks: Sequence[RankPlan], code_dir: str) -> str:
    """Start each rank in its own session and process group, detached from SSH.

    Ranks run in `work/`, this run's own copy of the pushed code (made once; a resumed run
    keeps its own), so what a run writes next to its code never reaches another run.
    The wrapper traps TERM so that it outlives the program's graceful stop and records the
    exit code; `$!` of `setsid` is the process group id `stop` signals. More than one rank on
    a host gets OMP_NUM_THREADS=1 unless it is set, as torchrun does.
    """
    # Logs and checkpoints may hold what a rank prints, secrets included: owner-only files.
    code = shell.join([code_dir + "/."])
    commands = [f"cd {shell.join([rundir])} || exit 1", "umask 077",
                f"[ -d work ] || {{ rm -rf work.tmp && cp -R {code} work.tmp && mv work.tmp work; } || exit 1"]
    threads = '[ -n "${OMP_NUM_THREADS+x}" ] || export OMP_NUM_THREADS=1; ' if len(ranks) > 1 else ""
    for r in ranks:
        log, code = f"rank{r.rank}.log", f"rank{r.rank}.exit"
        wrapper = (f"trap : TERM INT HUP; . ./env; {threads}(cd work && exec \"$@\") >>{log} 2>&1 </dev/null; "
                   f"echo $? >{code}.tmp; mv {code}.tmp {code}")
        commands += [
            f"rm -f {code}",
            f"setsid sh -c {shell.join([wrapper])} distctl-rank{r.rank} {shell.join(r.argv)} "
            f">/dev/null 2>&1 </dev/null &",
            f"echo $! >rank{r.rank}.pid",
            f"echo launched rank={r.rank} pgid=$!",
        ]
    return shell.lines(*commands)


WAIT_PORT = (
    "import os, socket, sys, time\n"
    "addr, port, pidfile, deadline = sys.argv[1], int(sys.argv[2]), sys.argv[3], time.time() + float(sys.argv[4])\n"
    "pid = int(open(pidfile).read())\n"
    "while time.time() < deadline:\n"
    "    try:\n"
    "        socket.create_connection((addr, port), timeout=1).close()\n"
    "        print('ready'); sys.exit(0)\n"
    "    except OSError:\n"
    "        pass\n"
    "    if not os.path.exists('/proc/%d' % pid):\n"
    "        print('exited'); sys.exit(3)\n"
    "    time.sleep(0.05)\n"
    "print('timeout'); sys.exit(4)\n"
)


def wait_port_script(python: str, rundir: str, addr: str, port: int, rank: int, timeout: float) -> str:
    """Poll rank 0's rendezvous port from its own host until it listens or rank 0 dies."""
    return (f"cd {shell.join([rundir])} || exit 1; "
            + shell.join([python, "-c", WAIT_PORT, addr, port, f"rank{rank}.pid", timeout]))


FOLLOW = (
    "import os, sys, time\n"
    "follow, tail = sys.argv[1] == 'follow', int(sys.argv[2])\n"
    "out = sys.stdout.buffer\n"
    "state = {}\n"
    "for arg in sys.argv[3:]:\n"
    "    rank, skip = map(int, arg.split(':'))\n"
    "    state[rank] = [0, b'', skip]\n"
    "def read(rank):\n"
    "    try:\n"
    "        with open('rank%d.log' % rank, 'rb') as f:\n"
    "            f.seek(state[rank][0]); return f.read()\n"
    "    except OSError:\n"
    "        return b''\n"
    "def alive(rank):\n"
    "    try:\n"
    "        os.kill(-int(open('rank%d.pid' % rank).read()), 0); return True\n"
    "    except (OSError, ValueError):\n"
    "        return False\n"
    "def pump(rank, final=False):\n"
    "    st = state[rank]\n"
    "    data = read(rank); st[0] += len(data)\n"
    "    lines = (st[1] + data).split(b'\\n'); st[1] = lines.pop()\n"
    "    if final and st[1]:\n"
    "        lines.append(st[1]); st[1] = b''\n"
    "    for line in lines:\n"
    "        if st[2] > 0:\n"
    "            st[2] -= 1; continue\n"
    "        out.write(b'%d %s\\n' % (rank, line))\n"
    "if tail >= 0:\n"
    "    for rank, st in state.items():\n"
    "        lines = read(rank).split(b'\\n'); st[0] = sum(len(l) + 1 for l in lines[:-1]); st[2] = 0\n"
    "        for line in (lines[:-1][-tail:] if tail else []):\n"
    "            out.write(b'%d %s\\n' % (rank, line))\n"
    "while state:\n"
    "    ended = [rank for rank in state if not follow or not alive(rank)]\n"
    "    for rank in list(state):\n"
    "        pump(rank, rank in ended)\n"
    "    for rank in ended:\n"
    "        try:\n"
    "            code = open('rank%d.exit' % rank).read().strip()\n"
    "            at = '%.3f' % os.path.getmtime('rank%d.exit' % rank)\n"
    "        except (OSError, ValueError):\n"
    "            code, at = '-', '-'\n"
    "        out.write(b'exit %d %s %s\\n' % (rank, code.encode(), at.encode())); del state[rank]\n"
    "    out.flush()\n"
    "    if state:\n"
    "        time.sleep(0.2)\n"
)


def follow_script(python: str, rundir: str, ranks: dict[int, int], follow: bool = True,
                  tail: int | None = None) -> str:
    """Print a host's rank logs as `R line` (every line, in order), then `exit R CODE TIME`
    for each rank once its process group is gone (`-`: no code, e.g. SIGKILL; TIME is when
    the exit code was written, by the host's clock).

    One channel per host, whatever its slot count: sshd allows 10 sessions per connection.
    `ranks` maps rank to log lines already seen (skipped); `tail` keeps only the last N.
    """
    args = [f"{rank}:{skip}" for rank, skip in sorted(ranks.items())]
    return (f"cd {shell.join([rundir])} || exit 1; "
            + shell.join([python, "-c", FOLLOW, "follow" if follow else "replay",
                          -1 if tail is None else tail, *args]))


SETUP_DONE = ".distctl-setup-done"
PROBE_MARK = "distctl-probe"


def setup_script(setup_dir: str, code_dir: str, setup: str, python: str) -> str:
    """Run job.setup once in its own copy of the code (a venv made there stays where it was
    made: venvs cannot move), unless it already succeeded for this setup text and code. Then
    probe the host's python (which may be in that venv) for the checks that depend on setup."""
    from orchestrator.facts import probe_script

    q = shell.join
    run = q(["-e", "-c", setup])
    return shell.lines(
        f"if [ -f {q([setup_dir + '/' + SETUP_DONE])} ]; then echo 'setup unchanged since it last succeeded here; skipped'",
        f"else rm -rf {q([setup_dir])} && mkdir -p {q([setup_dir])} && cp -R {q([code_dir + '/.'])} {q([setup_dir])} "
        f"&& cd {q([setup_dir])} || exit 1",
        f"  if command -v bash >/dev/null 2>&1; then bash {run} </dev/null; else sh {run} </dev/null; fi 2>&1 || exit $?",
        f"  touch {q([SETUP_DONE])}",
        "fi",
        f"echo {PROBE_MARK}",
        probe_script(python),
    )


def prepare_script(workdir: str, rundir: str, artifact_dirs: list[str]) -> str:
    """Create the workdir (files not world-writable) and a 0700 run dir with the env file."""
    q = shell.join
    return shell.lines(
        f"umask 022 && mkdir -p {q([workdir + '/code'])} {q([workdir + '/data'])} || exit 1",
        f"umask 077 && mkdir -p {q([rundir + '/ckpt'])} && chmod 700 {q([rundir])} "
        f"&& cat >{q([rundir + '/env'])} || exit 1",
        f"echo 1 >{q([rundir + '/format'])} || exit 1",  # run dir layout version: a later distctl reads it
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
    return shell.lines(
        f"[ -f {done} ] && exit 0",
        f"umask 022 && rm -rf {tmp} && mkdir -p {tmp} && tar -xf - -C {tmp} || exit 1",
        f"rm -rf {q} && mv {tmp} {q} && touch {done}",
    )
