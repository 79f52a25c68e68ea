"""How far each rank got, as `distctl status` asks it on the host.

    progress.py RUNDIR RANK...

It prints `progress R EPOCH STOPPED` for each rank whose log exists (the last epoch logged as
done and the epoch of the latest attempt's `stopped` line, `-` for none), then
`step R step=N [total=N] rate=X at=T [KEY=NUMBER]...` from rankR.progress, which the host's
agent keeps as the rank's log grows (tracking.py: tqdm bars, `distctl: step=N ...` lines).

The bundled trainer's contract (trainer/__main__.py) adds `epoch=E rank=R ...` once each epoch
is done, and `stopped rank=R epoch=E step=S ...` right before it exits 143 after a checkpoint.
Each new attempt appends to the same log after a `--- distctl: ... ---` line (`resumed ...`
for `up --resume`, `restart N/M after ...` from the restart agent), so a `stopped` line before
the latest mark belongs to an earlier attempt and does not count.
"""

import os
import sys

ATTEMPT = b"--- distctl: "  # a new attempt starts below this line


def number(line, key):
    """The integer value of `key=` in a logfmt line, None when absent or not a number."""
    for word in line.split():
        if word.startswith(key + b"="):
            value = word[len(key) + 1:]
            return int(value) if value.isdigit() else None
    return None


def scan(lines):
    """(last epoch done, epoch of the `stopped` line of the latest attempt); None for none."""
    epoch = stopped = None
    for line in lines:
        if line.startswith(b"epoch="):
            epoch = number(line, b"epoch") or epoch
        elif line.startswith(b"stopped rank="):
            stopped = number(line, b"epoch")
        elif line.startswith(ATTEMPT):
            stopped = None
    return epoch, stopped


def main(argv):
    if not argv:
        sys.stderr.write("usage: progress.py RUNDIR RANK...\n")
        return 2
    for rank in argv[1:]:
        try:
            with open(os.path.join(argv[0], "rank%s.log" % rank), "rb") as log:
                epoch, stopped = scan(log)
        except OSError:
            continue
        print("progress %s %s %s" % (rank, "-" if epoch is None else epoch, "-" if stopped is None else stopped))
        try:
            with open(os.path.join(argv[0], "rank%s.progress" % rank)) as f:
                print("step %s %s" % (rank, f.read().strip()))
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
