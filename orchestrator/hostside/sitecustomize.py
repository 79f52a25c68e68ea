"""Armed in every Python process of a rank: `distctl stacks` asks it for its stacks.

The launch step writes this file to `<run dir>/stacks/site/sitecustomize.py` and each rank's
wrapper puts that folder first on PYTHONPATH (after the inventory's env, whose PYTHONPATH
stays behind it), with DISTCTL_STACKS=<run dir>/stacks. Python's `site` imports it at
start-up in the rank's program and in every Python program below it (DataLoader workers,
a `sh -c "python ..."` wrapper's child); a forked child re-arms with its own file.

It registers `faulthandler` on one real-time signal (SIGRTMIN+6; SIGUSR1/SIGUSR2 stay the
program's: Slurm and Lightning use them) to write every thread's Python stack to
`stacks/live/<pid>`. The dump is written from inside the signal handler, so it comes while
the main thread is blocked in C code (a collective, a socket read), without ptrace. The
handler restarts interrupted system calls (SA_RESTART, kept by siginterrupt), does not chain
(the default action of a real-time signal would end the process), and the file's first line
names the signal and the main thread, which is how `hostside/stacks.py` knows the process is
armed: it signals only processes that wrote this line and have the handler installed.

Then it imports the sitecustomize it shadows, if any, as `site` would have.
"""

import os
import sys

OFFSET = 6  # SIGRTMIN + 6


def arm(folder):
    """Register the dump handler for this process, writing to `folder/live/<pid>`."""
    import _thread
    import faulthandler
    import signal

    number = getattr(signal, "SIGRTMIN", None)
    if number is None or not hasattr(faulthandler, "register"):
        return
    sig = number + OFFSET
    try:
        out = open(os.path.join(folder, "live", str(os.getpid())), "a")  # noqa: SIM115 (kept open: the handler writes to it)
        out.write("distctl-stacks pid=%d signal=%d main=%d\n" % (os.getpid(), sig, _thread.get_ident()))
        out.flush()
    except OSError:
        return
    faulthandler.register(sig, file=out, all_threads=True, chain=False)
    signal.siginterrupt(sig, False)
    ARMED[:] = [out]  # faulthandler keeps the descriptor, not the file object


ARMED = []  # type: list


def import_shadowed():
    """The sitecustomize this one stands in front of (later on sys.path), imported as site would.
    Our folder leaves sys.path: the program sees the path it would have had."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    mine = sys.modules.pop("sitecustomize", None)
    try:
        __import__("sitecustomize")
    except ImportError as exc:
        if exc.name != "sitecustomize":
            raise
        if mine is not None:
            sys.modules["sitecustomize"] = mine


def main(argv):
    folder = os.environ.get("DISTCTL_STACKS")
    if folder:
        try:
            arm(folder)
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=lambda: arm(folder))
        except Exception:  # never the reason a program does not start
            pass
    import_shadowed()
    return 0


main([])
