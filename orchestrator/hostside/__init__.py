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
    progress   the bundled trainer's last epoch per rank log, and the epoch it stopped at
    session    a command server: many commands over one channel, one login shell
    agent      restarts the ranks after a failure (job.max_restarts), coordinated by rank 0's host
    netbench   a host's bandwidth and latency to rank 0's host (`check --net`)
    stacks     every rank's Python stacks, through the handler sitecustomize.py armed (`distctl stacks`)

sitecustomize.py is no program: the launch step writes it into the run directory, where
Python's `site` imports it in every Python process of a rank (`site_source`).
"""

from __future__ import annotations

import functools
from pathlib import Path

PROGRAMS = ("follow", "wait_port", "port_check", "probe", "detach", "store_peers", "outputs", "session",
            "agent", "progress", "stacks", "netbench")


@functools.lru_cache(maxsize=None)
def source(name: str) -> str:
    """The text of host-side program `name`, exactly as it is sent."""
    if name not in PROGRAMS:
        raise ValueError(f"no host-side program {name!r}")
    return _without_docstring(name)


def site_source() -> str:
    """The text of sitecustomize.py as the launch step writes it on the hosts."""
    return _without_docstring("sitecustomize")


@functools.lru_cache(maxsize=None)
def _without_docstring(name: str) -> str:
    text = (Path(__file__).parent / f"{name}.py").read_text(encoding="utf-8")
    # The module's docstring is for readers of this file; every command line and dry run
    # would carry it otherwise.
    if text.startswith('"""'):
        text = text[text.index('"""', 3) + 3:].lstrip("\n")
    return text
