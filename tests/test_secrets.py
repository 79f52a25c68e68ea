"""Secrets (`from_env` values): they reach the rank and nothing else (no command line, no file
but the owner-only env file, no run record, no output), and a rank that prints one is shown
masked. The real `distctl` against the real SSH test cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

from cluster import Cluster
from e2e import distctl, last_run_id, run_pids, wait_for
from support.reports import assert_clean
from support.workdirs import inventory, workdir_of


# ---------------------------------------------------------------- secrets

# Stands in for python on the host: discovery and preflight get the real interpreter; the
# "trainer" listens on the rendezvous port, records its pid, then holds (SHIM_MODE=hold) until
# stopped or prints its token and exits 0 (SHIM_MODE=print).
SHIM = """#!/usr/bin/python3 -S
import json, os, signal, socket, sys, time
if sys.argv[1:3] != ["-m", "trainer"]:
    os.execv(%(real)r, [%(real)r] + sys.argv[1:])
addr, port = os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]
srv = socket.create_server((addr, int(port)))
record = os.environ["SHIM_RECORD"]
with open(record + ".tmp", "w") as f:
    json.dump({"pid": os.getpid()}, f)
os.rename(record + ".tmp", record)
print("joined rank=0", flush=True)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
if os.environ["SHIM_MODE"] == "print":
    srv.settimeout(30)
    srv.accept()  # the wait-port step has seen the port: rank 0 is up
    print("token=" + os.environ["TOKEN"], flush=True)
    sys.exit(0)
time.sleep(120)
"""

SCAN = """
import os, sys
secret = sys.stdin.buffer.read()
for root, dirs, files in os.walk(sys.argv[1]):
    for name in files:
        path = os.path.join(root, name)
        if os.path.isfile(path) and secret in open(path, "rb").read():
            print(path, oct(os.stat(path).st_mode & 0o777), oct(os.stat(root).st_mode & 0o777))
"""


def secret_inventory(tmp_path: Path, cluster: Cluster, mode: str) -> tuple[Path, Path]:
    """node1 running the shim as its 'trainer', TOKEN from the workstation's $MY_TOKEN."""
    shared = tmp_path / "shared"  # under /tmp, which the hosts share
    shared.mkdir()
    shim = shared / "python"
    shim.write_text(SHIM % {"real": cluster.python})
    shim.chmod(0o755)
    record = shared / "record.json"
    inv = inventory(tmp_path, cluster, ["node1"], host_extra={"node1": {"python": str(shim)}},
                    env={"TOKEN": {"from_env": "MY_TOKEN"}, "SHIM_RECORD": str(record), "SHIM_MODE": mode})
    return inv, record


def no_secret(secret: str, *outputs: subprocess.CompletedProcess) -> None:
    for done in outputs:
        assert_clean(done)
        assert secret not in done.stdout + done.stderr


def test_a_secret_reaches_the_rank_and_nothing_else(cluster, tmp_path):
    secret = f"s3cr3t-{secrets.token_hex(8)}"
    env = {"MY_TOKEN": secret}
    inv, record = secret_inventory(tmp_path, cluster, "hold")
    node1 = cluster.host("node1")
    workdir = workdir_of(inv, "node1")

    dry = distctl("up", "--dry-run", str(inv), cwd=tmp_path, env=env)
    assert dry.returncode == 0, dry.stderr
    assert "export TOKEN='***'" in dry.stdout or "export TOKEN=***" in dry.stdout
    checked = distctl("check", str(inv), cwd=tmp_path, env=env)
    assert checked.returncode == 0, checked.stderr
    started = distctl("up", "--detach", str(inv), cwd=tmp_path, env=env, timeout=120)
    no_secret(secret, dry, checked, started)
    assert started.returncode == 0, started.stderr
    run_id = last_run_id(tmp_path)
    try:
        pid = json.loads(wait_for(lambda: record.exists() and record.read_text(), 30, "the rank to start"))["pid"]
        environ = node1.run(["cat", f"/proc/{pid}/environ"], check=True).stdout.split("\0")
        assert f"TOKEN={secret}" in environ  # it did arrive
        pids = run_pids(cluster, run_id)["node1"]
        assert pid in pids
        for p in pids:  # the rank, its wrapper shell: no command line carries it
            cmdline = node1.run(["cat", f"/proc/{p}/cmdline"]).stdout
            assert secret not in cmdline, cmdline.split("\0")

        found = node1.run([cluster.python, "-c", SCAN, workdir], input=secret, check=True).stdout.split("\n")
        rundir = f"{workdir}/runs/{run_id}"
        assert [line for line in found if line] == [f"{rundir}/env 0o600 0o700"]
        modes = node1.run(["stat", "-c", "%a %n", rundir], check=True).stdout.split()
        assert modes[0] == "700"
        code = node1.run(["find", f"{workdir}/code", "-perm", "/022"], check=True).stdout
        assert code == ""  # no pushed file or directory is group- or world-writable
        assert node1.run(["find", f"{workdir}/code", "-type", "f"], check=True).stdout.strip()  # there was a push

        for path in Path(os.environ["DISTCTL_STATE_DIR"]).rglob("*"):
            assert not path.is_file() or secret not in path.read_text(errors="replace"), path
        status = distctl("status", cwd=tmp_path, env=env)
        assert status.returncode == 0, status.stderr
        assert "running" in status.stdout
        no_secret(secret, status)
    finally:
        stopped = distctl("stop", "--grace", "5", cwd=tmp_path, env=env)
    assert stopped.returncode == 0, stopped.stderr
    no_secret(secret, stopped)


def test_a_secret_printed_by_a_rank_is_shown_masked(cluster, tmp_path):
    secret = f"s3cr3t-{secrets.token_hex(8)}"
    inv, _record = secret_inventory(tmp_path, cluster, "print")
    done = distctl("up", str(inv), cwd=tmp_path, env={"MY_TOKEN": secret}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "[node1 r0] token=***" in done.stdout
    no_secret(secret, done)
    replay = distctl("logs", cwd=tmp_path, env={"MY_TOKEN": secret})
    assert replay.returncode == 0, replay.stderr
    assert "[node1 r0] token=***" in replay.stdout
    no_secret(secret, replay)
    # the rank's log on the host holds it now: an owner-only file in the 0700 run dir
    workdir = workdir_of(inv, "node1")
    found = cluster.host("node1").run([cluster.python, "-c", SCAN, workdir], input=secret, check=True).stdout
    rundir = f"{workdir}/runs/{last_run_id(tmp_path)}"
    assert sorted(line.split()[0] for line in found.splitlines()) == [f"{rundir}/env", f"{rundir}/rank0.log"]
    assert all(line.split()[1:] == ["0o600", "0o700"] for line in found.splitlines()), found
