"""Start a command detached from this session, and print its process group id.

    detach.py COMMAND [ARG...]

COMMAND runs in a new session (os.setsid: its own process group, no controlling
terminal), with stdin, stdout and stderr on /dev/null and no other descriptor of
ours, so it outlives the SSH channel that started it; detach.py does not wait for it.
It prints the id of the new process, which is also the id of its process group (what
`kill -TERM -PGID` stops). This is `setsid COMMAND &` plus `echo $!` for hosts
without the setsid binary (macOS, BSD). When COMMAND cannot be started, the reason
goes to stderr and the exit code is 127, as a shell does for a missing command.
"""

from __future__ import annotations

import subprocess
import sys

CANNOT_RUN = 127


def detach(argv: list[str]) -> int:
    """The process group id of `argv`, started in a new session."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    return proc.pid


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.stderr.write("usage: detach.py COMMAND [ARG...]\n")
        return 2
    try:
        pgid = detach(argv)
    except OSError as e:
        sys.stderr.write("detach: cannot run %s: %s\n" % (argv[0], e.strerror or e))
        return CANNOT_RUN
    print(pgid, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
