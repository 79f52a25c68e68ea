"""The timers of following a run: how often a quiet follower says it is alive, how long a silent
link may stay silent before it counts as stalled, how fast a lost link is retried, and how
often the straggler watch samples every rank's stack (run/stragglers.py).

None of them is an inventory key: the defaults suit every real fleet (a user's own bound, how long
a host may stay unreachable, is ``ssh.reconnect_timeout``). Tests shorten them, so that a test
of a link fault takes seconds rather than the minute the defaults would, through one test-only
environment variable read here and nowhere else::

    DISTCTL_TEST_TIMERS=stall=2,heartbeat=0.5 distctl up inventory.yaml

The workstation passes the heartbeat on to the hosts' follower as its argument
(``hostside/follow.py --heartbeat=S``), only when it differs from the default, so plans made
without the variable are unchanged.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from orchestrator.errors import DistctlError, ExitCode

TEST_TIMERS = "DISTCTL_TEST_TIMERS"


@dataclasses.dataclass(frozen=True)
class Timers:
    heartbeat: float = 2.0  # hostside/follow.py prints `hb` after this long without output
    # No byte for this long: the link is stalled. Generous: 16 ranks importing torch on 2 cores kept
    # a follower off the CPU for over 10 s here, and a false alarm costs a channel, not a line.
    stall: float = 20.0
    first_retry: float = 0.5  # a lost link is retried after this long, then twice as long each time...
    max_retry: float = 10.0  # ...up to this
    # One stack sample of every rank this often while `up` or `logs -f` follows (run/stragglers.py):
    # a straggler is named after about 10 samples (30 s), at a Python start per host each time.
    straggler_every: float = 3.0


DEFAULT = Timers()


def parse_timers(text: str) -> Timers:
    """``name=seconds,...`` (names: Timers' fields) over the defaults; a clear error for anything else."""
    values: dict[str, float] = {}
    names = [f.name for f in dataclasses.fields(Timers)]
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if name not in names or not seconds > 0:
            raise DistctlError(f"{TEST_TIMERS}: {item!r} is not NAME=SECONDS with SECONDS > 0 and NAME one of "
                               f"{', '.join(names)}", ExitCode.BAD_INPUT)
        values[name] = seconds
    return dataclasses.replace(DEFAULT, **values)


def current(environ: Mapping[str, str] = os.environ) -> Timers:
    """The timers of this process: the defaults, or what the test-only variable sets."""
    return parse_timers(environ.get(TEST_TIMERS, ""))
