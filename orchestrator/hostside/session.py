"""Run many commands over one SSH channel: a small command server on the host.

    session.py

Every command sent over its own SSH channel starts the user's login shell, and a conda or
pyenv block in ~/.bashrc makes that cost a quarter of a second of CPU per command and host.
distctl starts this server once per connection (through the login shell, so commands see
the same environment) and sends its commands here instead.

Protocol, on stdin and stdout: the server first writes `ready`. Each request is one JSON line
{"cmd": TEXT, "stdin": N, "timeout": SECONDS or null} followed by N bytes for the command's
stdin; the answer is one JSON line {"exit": CODE, "out": N1, "err": N2, "timed_out": BOOL}
followed by N1 bytes of stdout and N2 bytes of stderr. A command runs as `/bin/sh -c TEXT` in its own process
group; one that outlives its timeout has that group killed and exits 124 (as timeout(1)).
A signal ends it with 128 + the signal, as a shell reports it. End of stdin ends the server.
"""

import json
import os
import signal
import subprocess
import sys

TIMED_OUT = 124


def read_exact(stream, n):
    chunks = []
    while n > 0:
        chunk = stream.read(n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def run(cmd, data, timeout):
    proc = subprocess.Popen(["/bin/sh", "-c", cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        out, err = proc.communicate()
        return TIMED_OUT, out, err + b"timed out\n", True
    code = proc.returncode
    return (128 - code if code < 0 else code), out, err, False


def main(argv):
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    while True:
        header = inp.readline()
        if not header:
            return 0
        request = json.loads(header.decode("utf-8"))
        try:
            data = read_exact(inp, int(request["stdin"]))
        except EOFError:
            return 0
        code, stdout, stderr, timed_out = run(request["cmd"], data, request.get("timeout"))
        answer = {"exit": code, "out": len(stdout), "err": len(stderr), "timed_out": timed_out}
        out.write(json.dumps(answer).encode("utf-8") + b"\n")
        out.write(stdout)
        out.write(stderr)
        out.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
