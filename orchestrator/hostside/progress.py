"""How far each rank got, read from its log on the host, without changing the program.

    progress.py RUNDIR RANK...          what `distctl status` asks
    progress.py track RANK              beside one rank (its wrapper starts it): rankR.progress

Progress lines, one parser for all (`parse`): a tqdm bar (`120/1000 [00:37<04:35, 3.20it/s]`,
`120it [00:37, 3.20it/s]`; each `\\r` redraw counts), and a program's own logfmt line on
stdout, `distctl: step=N [total=N] [KEY=NUMBER]...`, which the bundled trainer prints too.
The live view (web/progress.py) reads its curves with the same `parse`, imported on the workstation.

The bundled trainer's contract (trainer/__main__.py) adds `epoch=E rank=R ...` once each epoch
is done, and `stopped rank=R epoch=E step=S ...` right before it exits 143 after a checkpoint.
Each new attempt appends to the same log after a `--- distctl: ... ---` line (`resumed ...`
for `up --resume`, `restart N/M after ...` from the restart agent), so a `stopped` line before
the latest mark belongs to an earlier attempt and does not count.

The status form prints `progress R EPOCH STOPPED` for each rank whose log exists (the last
epoch logged as done and the epoch of the latest attempt's `stopped` line, `-` for none),
then `step R step=N [total=N] rate=X at=T [KEY=NUMBER]...` from rankR.progress.

`track` follows rankR.log from its end at start-up (a resumed run's log holds earlier
attempts) and rewrites rankR.progress (atomically, at most once a second) with the step,
the total, the rate in steps per second over the last RATE_WINDOW seconds, the time of the
last step (this host's clock) and the numbers of the latest logfmt line. A step lower than
the last one (a new tqdm bar, a restart) starts the rate afresh. It ends with its rank:
the wrapper kills it once the program exited.
"""

import os
import re
import sys
import time
from typing import Optional

ATTEMPT = b"--- distctl: "  # a new attempt starts below this line
LOGFMT = b"distctl: step="
TQDM = re.compile(rb"(\d+)/(\d+) \[[\d:]+<[\d:?]*")
TQDM_OPEN = re.compile(rb"(\d+)it \[[\d:]+[,\]]")
POLL_S = 0.5
RATE_WINDOW = 30.0


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


def as_number(text):
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def parse(segment):
    """(step, total or None, {key: number}) from one line or `\\r` redraw, or None."""
    if segment.startswith(LOGFMT):
        fields = {}
        for word in segment[len(b"distctl: "):].split():
            key, _, value = word.partition(b"=")
            found = as_number(value.decode("ascii", "replace"))
            if found is not None and key:
                fields[key.decode("ascii", "replace")] = found
        step = fields.pop("step", None)
        if step is None or step < 0 or step != int(step):
            return None
        total = fields.pop("total", None)
        return int(step), (int(total) if total is not None and total > 0 else None), fields
    bar = TQDM.search(segment)
    if bar:
        return int(bar.group(1)), int(bar.group(2)) or None, {}
    bar = TQDM_OPEN.search(segment)
    if bar:
        return int(bar.group(1)), None, {}
    return None


class Tracker:
    """The progress of one rank as its log grows (pure but for the clock it is given)."""

    def __init__(self):
        self.step: Optional[int] = None
        self.total: Optional[int] = None
        self.at: Optional[float] = None
        self.metrics = {}
        self.history = []  # (time, step) within RATE_WINDOW

    def feed(self, segment, now):
        found = parse(segment)
        return found is not None and self.take(found, now)

    def take(self, found, now):
        step, total, metrics = found
        if self.step is not None and step < self.step:
            self.history = []
        if step != self.step:
            self.at = now
        self.step, self.total = step, total or (self.total if step >= (self.step or 0) else None)
        self.metrics.update(metrics)
        if self.history and self.history[-1][0] == now:  # one point per read of the log
            self.history[-1] = (now, step)
        else:
            self.history.append((now, step))
        while now - self.history[0][0] > RATE_WINDOW:
            self.history.pop(0)
        return True

    def rate(self):
        if len(self.history) < 2 or self.history[-1][0] <= self.history[0][0]:
            return None
        (t0, s0), (t1, s1) = self.history[0], self.history[-1]
        return (s1 - s0) / (t1 - t0)

    def line(self):
        words = ["step=%d" % (self.step or 0)]
        if self.total:
            words.append("total=%d" % self.total)
        rate = self.rate()
        words += ["rate=%.4g" % rate if rate is not None else "rate=-", "at=%.3f" % (self.at or 0.0)]
        words += ["%s=%.6g" % (k, v) for k, v in sorted(self.metrics.items())]
        return " ".join(words)


MARKS = (LOGFMT, b"it/s]", b"s/it]", b"it]")  # where a progress line may be


def latest(text):
    """The last progress line or redraw in `text`, parsed (None: none). Only the segments
    around the last few marks are parsed: a chunk of 100,000 lines costs a few searches."""
    found = []
    for mark in MARKS:
        end = len(text)
        for _ in range(3):
            at = text.rfind(mark, 0, end)
            if at < 0:
                break
            start = max(text.rfind(b"\n", 0, at), text.rfind(b"\r", 0, at)) + 1
            found.append((at, start))
            end = start
    for _, start in sorted(found, reverse=True):
        stop = min([i for i in (text.find(b"\n", start), text.find(b"\r", start)) if i >= 0] or [len(text)])
        parsed = parse(text[start:stop])
        if parsed:
            return parsed
    return None


def track(rank):
    """Follow rankR.log from its current end; keep rankR.progress up to date."""
    log, out = "rank%s.log" % rank, "rank%s.progress" % rank
    try:
        offset = os.path.getsize(log)
    except OSError:
        offset = 0
    tracker, tail, written, changed = Tracker(), b"", 0.0, False
    while True:
        try:
            with open(log, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            data = b""
        offset += len(data)
        if data:
            # the last line so far, whole or not: a bar redrawn without a newline counts
            text = tail + data
            found = latest(text)
            cut = max(text.rfind(b"\n"), text.rfind(b"\r"))
            tail = text[cut + 1:][-4096:]
            if found:
                changed = tracker.take(found, time.time()) or changed
        now = time.time()
        if changed and now - written >= 1.0:
            with open(out + ".tmp", "w") as f:
                f.write(tracker.line() + "\n")
            os.replace(out + ".tmp", out)
            written, changed = now, False
        time.sleep(POLL_S)


def main(argv):
    if argv[:1] == ["track"] and len(argv) == 2:
        track(argv[1])
        return 0
    if not argv:
        sys.stderr.write("usage: progress.py RUNDIR RANK... | progress.py track RANK\n")
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
