"""Programs that run on the hosts, each a stdlib-only module with `main(argv)`.

They are sent as `python -c <source>`, so a host needs nothing of distctl installed and
the wire format stays one command. Because hosts may have an old interpreter, the modules
keep to Python 3.8 syntax; because their source is shell-quoted into every dry run, they
use double quotes only (a single quote would print as '"'"').

    follow     a host's rank logs as `R line`, then `exit R CODE TIME` per rank
    wait_port  poll rank 0's rendezvous port until it listens or rank 0 exits
    port_check the preflight's listener on rank 0's host and the workers' dial
    probe      interpreter, torch and torchvision versions, the loopback interface's name
    detach     start a command in a new session, print its process group id
    store_peers  this host's connections to rank 0's rendezvous store (the join watchdog)
    outputs    list job.outputs with sizes and digests, and send the chosen files
    progress   each rank's progress as the agent keeps it, the trainer's last epoch and the epoch it stopped at
    session    a command server: many commands over one channel, one login shell
    agent      watches each host's ranks and keeps their progress; restarts them after a failure
               (job.max_restarts), coordinated by rank 0's host
    slurm_follow  a Slurm run's rank logs on the login node, ended by Slurm's state and the run's files
    slurm_policy  after a Slurm attempt, restart or end: the agents' policy over the run's exit files
    clean      which old runs and unused code, data and setup folders `distctl clean` may remove
    netbench   a host's bandwidth and latency to rank 0's host (`check --net`)
    collective one rank of a timed all_reduce over every host (`check --net --collective`; needs torch)
    stacks     every rank's Python stacks, through the handler sitecustomize.py armed (`distctl stacks`)

Parts joined before a program (PARTS): `prelude` (process group alive and ours, pid files,
a listening port) for every program that needs it; `tracking` (progress read from a rank's
log) and `agent_policy` (the agent's decisions) for the agent; `agent_policy` for slurm_policy too.

sitecustomize.py is no program: the launch step writes it into the run directory, where
Python's `site` imports it in every Python process of a rank (`site_source`).
"""

from __future__ import annotations

import functools
from pathlib import Path

from orchestrator import shell

PROGRAMS = ("follow", "wait_port", "port_check", "probe", "detach", "store_peers", "outputs", "session",
            "agent", "progress", "slurm_follow", "slurm_policy", "clean", "stacks", "netbench", "collective")


# A program made of several files: the parts come first, in this order, then the program itself.
# Each part is a module here (tests import it); sent, the files are one program: every line
# `from orchestrator.hostside.PART import ...` is left out, and the names are simply there.
PARTS: dict[str, tuple[str, ...]] = {"agent": ("prelude", "tracking", "agent_policy"), "follow": ("prelude",),
                                     "wait_port": ("prelude",), "slurm_follow": ("prelude",),
                                     "slurm_policy": ("agent_policy",)}
FUTURE = "from __future__ import annotations\n"
SIBLING = "from orchestrator.hostside."


@functools.lru_cache(maxsize=None)
def source(name: str) -> str:
    """The text of host-side program `name`, exactly as it is sent."""
    if name not in PROGRAMS:
        raise ValueError(f"no host-side program {name!r}")
    texts = [_body(part) for part in (*PARTS.get(name, ()), name)]
    if len(texts) == 1:
        return texts[0]
    return FUTURE + "\n" + "\n\n".join(t.replace(FUTURE, "", 1).strip("\n") + "\n" for t in texts)


def site_source() -> str:
    """The text of sitecustomize.py as the launch step writes it on the hosts."""
    return _body("sitecustomize")


def _body(name: str) -> str:
    text = (Path(__file__).parent / f"{name}.py").read_text(encoding="utf-8")
    # The module's docstring is for readers of this file; every command line and dry run
    # would carry it otherwise.
    if text.startswith('"""'):
        text = text[text.index('"""', 3) + 3:].lstrip("\n")
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(SIBLING):
            # One import statement, however many lines: up to the line that closes its parenthesis.
            end = i if "(" not in line else next(j for j in range(i, len(lines)) if ")" in lines[j])
            lines[i:end + 1] = [""] * (end + 1 - i)
    return "".join(lines)


def program(python: str, name: str, *args: object) -> str:
    """`python -c <source of hostside/NAME.py> ARGS...`: one command, nothing installed on the host."""
    return shell.join([python, "-c", source(name), *args])
