"""The test cluster itself: each host is what it claims to be, and teardown leaves nothing.

Every product test that crosses a network trusts these properties, so each one is checked from
the outside (plain OpenSSH client, strict host keys) or from inside the hosts.
"""

from __future__ import annotations

import errno
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import cluster as testcluster
from cluster import WORKDIR, Cluster, HostSpec
from support import procfs

# Accepts one connection and answers with this host's name and the peer's address.
SERVER = """
import socket, sys
srv = socket.create_server((sys.argv[1], 0))
srv.settimeout(20)
print(srv.getsockname()[1], flush=True)
conn, peer = srv.accept()
conn.sendall(f"{socket.gethostname()} {peer[0]}".encode())
conn.close()
"""
CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    print(s.recv(200).decode())
"""


def ssh(cluster: Cluster, host: str, command: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` on ``host`` through the OpenSSH client, as a user would."""
    return subprocess.run(cluster.ssh_argv(host, command), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=30)


def ssh_all(cluster: Cluster, command: str) -> dict[str, subprocess.CompletedProcess[str]]:
    """``command`` on every host at once (``$``-expansions happen on each host)."""
    with ThreadPoolExecutor(len(cluster.hosts)) as pool:
        results = pool.map(lambda h: ssh(cluster, h.name, command), cluster.hosts)
        return dict(zip([h.name for h in cluster.hosts], results))


def wait_until(condition, what: str, timeout: float = 10.0):
    """Poll ``condition`` until it is truthy and return that value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return value


def connect_errno(address: str, port: int) -> int:
    """errno of a TCP connect from the root namespace (0 if it connects)."""
    try:
        socket.create_connection((address, port), timeout=3).close()
        return 0
    except OSError as exc:
        return exc.errno or -1


def read_line(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    """One line of ``proc``'s stdout, failing the test if none comes in time."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            pytest.fail(f"no output from {proc.args!r} within {timeout}s")
    return proc.stdout.readline().strip()


def test_every_host_answers_through_its_own_sshd(cluster):
    """Each sshd is distinct: the SetEnv tag of the session names the host that answered."""
    results = ssh_all(cluster, f"echo ${testcluster.ENV_TAG}")
    for host in cluster.hosts:
        result = results[host.name]
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == host.env_tag


def test_each_host_reports_its_own_hostname_and_address(isolated):
    results = ssh_all(isolated, "hostname; ip -4 -o addr show")
    for host in isolated.hosts:
        result = results[host.name]
        assert result.returncode == 0, result.stderr
        name, addrs = result.stdout.split("\n", 1)
        assert name == host.name
        for iface, address in host.interfaces:
            assert re.search(rf"^\d+: {iface}\s+inet {re.escape(address)}/24 ", addrs, re.M), addrs
        assert len(re.findall(r" inet ", addrs)) == len(host.interfaces) + 1  # plus lo


def test_interfaces_are_named_per_host(isolated):
    """node2 has ens5 and no eth0; node3 has a second interface on the back net."""
    node2, node3 = isolated.host("node2"), isolated.host("node3")
    assert node2.iface == "ens5"
    links = node2.run(["ip", "-o", "link", "show"], check=True).stdout
    assert re.search(r"^\d+: ens5@", links, re.M) and not re.search(r" eth0[@:]", links), links
    assert [name for name, _ in node3.interfaces] == ["eth0", "eth1"]
    eth1 = node3.run(["ip", "-4", "-o", "addr", "show", "dev", "eth1"], check=True).stdout
    assert f"inet {node3.interfaces[1][1]}/24" in eth1


def test_hosts_have_no_default_route(isolated):
    for host in isolated.hosts:
        assert host.run(["ip", "route", "show", "default"], check=True).stdout == ""
        outside = host.run(["ip", "route", "get", "192.0.2.1"])
        assert outside.returncode != 0 and "unreachable" in outside.stderr


def test_own_hostname_resolves_to_loopback_and_peers_to_their_address(isolated):
    """The trap distributed training must survive: a host's own name is 127.0.0.1."""
    code = "import socket; print(socket.gethostbyname(socket.gethostname()))"
    node1, node2 = isolated.host("node1"), isolated.host("node2")
    result = ssh(isolated, "node1", f"{isolated.python} -c '{code}'; getent hosts node2")
    assert result.returncode == 0, result.stderr
    own, peer = result.stdout.splitlines()
    assert own == "127.0.0.1"
    assert peer.split() == [node2.address, "node2"]
    assert node1.run(["getent", "hosts", "node1"]).stdout.split() == ["127.0.0.1", "node1"]


def test_work_directory_is_private_to_each_host(cluster):
    node1, node2 = cluster.host("node1"), cluster.host("node2")
    name = f"private-{uuid.uuid4().hex}"
    wrote = ssh(cluster, "node1", f"echo from-node1 > {node1.workdir}/{name}")
    assert wrote.returncode == 0, wrote.stderr
    assert ssh(cluster, "node1", f"cat {node1.workdir}/{name}").stdout == "from-node1\n"
    assert ssh(cluster, "node2", f"test -e {node2.workdir}/{name}").returncode == 1
    if cluster.isolated:  # same path on every host, and the root namespace sees its own dir
        assert node1.workdir == node2.workdir == WORKDIR
        assert not Path(WORKDIR, name).exists()
        assert node2.run(["test", "-e", f"{WORKDIR}/{name}"]).returncode == 1


def test_tcp_listener_on_one_host_is_reachable_from_another(isolated):
    node1, node2 = isolated.host("node1"), isolated.host("node2")
    server = subprocess.Popen(node1.argv([isolated.python, "-c", SERVER, node1.address]),
                              stdout=subprocess.PIPE, text=True)
    try:
        port = read_line(server)
        reply = node2.run([isolated.python, "-c", CLIENT, node1.address, port], timeout=30)
        assert reply.returncode == 0, reply.stderr
        assert reply.stdout.strip() == f"node1 {node2.address}"
        assert server.wait(timeout=10) == 0
    finally:
        server.kill()
        server.wait()


def test_jump_only_host_is_unreachable_directly_but_reachable_through_bastion(isolated_jump):
    node5 = isolated_jump.host("node5")
    # refused by the unreachable route at once (a packet leaving by the default route would time out)
    assert connect_errno(node5.address, node5.port) in (errno.EHOSTUNREACH, errno.ENETUNREACH)
    argv = isolated_jump.ssh_argv(node5, "hostname")
    assert argv[argv.index("-J") + 1] == f"root@{isolated_jump.host('bastion').address}:22"
    via_jump = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert via_jump.returncode == 0, via_jump.stderr
    assert via_jump.stdout.strip() == "node5"
    by_alias = subprocess.run(["ssh", "-F", str(isolated_jump.ssh_config), "node5", "hostname"],
                              capture_output=True, text=True, timeout=30)
    assert by_alias.stdout.strip() == "node5", by_alias.stderr


def test_host_keys_are_checked_strictly(cluster, tmp_path):
    """Each host has its own key: node2's key under node1's address must be rejected."""
    lines = dict(line.split(" ", 1) for line in cluster.known_hosts.read_text().splitlines())
    node1, node2 = cluster.host("node1"), cluster.host("node2")
    addr = lambda h: h.address if h.port == 22 else f"[{h.address}]:{h.port}"  # noqa: E731
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{addr(node1)} {lines[addr(node2)]}\n")
    argv = cluster.ssh_argv(node1, "true")
    argv[argv.index(f"UserKnownHostsFile={cluster.known_hosts}")] = f"UserKnownHostsFile={wrong}"
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 255 and "Host key verification failed" in result.stderr


def test_stop_and_start_sshd_keeps_the_host(cluster):
    node4 = cluster.host("node4")
    name = f"{node4.workdir}/survives-{uuid.uuid4().hex}"
    assert ssh(cluster, "node4", f"echo kept > {name}").returncode == 0
    before = cluster.sshd_pid(node4)
    cluster.stop_sshd(node4)
    assert cluster.sshd_pid(node4) is None
    assert connect_errno(node4.address, node4.port) == errno.ECONNREFUSED
    assert ssh(cluster, "node4", "true").returncode == 255
    cluster.start_sshd(node4)
    after = ssh(cluster, "node4", f"hostname; cat {name}")
    assert after.returncode == 0, after.stderr
    assert after.stdout.splitlines()[1] == "kept"
    assert cluster.sshd_pid(node4) not in (None, before)
    if cluster.isolated:
        assert after.stdout.splitlines()[0] == "node4"


def test_a_crash_kills_every_process_and_frees_the_rehash_lock_a_killed_rehash_held(isolated, tmp_path,
                                                                                      monkeypatch):
    node4 = isolated.host("node4")
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))  # never the machine's own pyenv
    lock = tmp_path / "shims" / ".pyenv-shim"
    lock.parent.mkdir()
    lock.write_text("held\n")
    # Stand-ins: node4's rehash holds the lock; one here waits for it, and must not keep it held.
    waiter = subprocess.Popen(["sh", "-c", "sleep 300; true", "pyenv-rehash"])
    node4.run("setsid sh -c 'sleep 300; true' pyenv-rehash >/dev/null 2>&1 </dev/null &")
    wait_for_pids = time.monotonic() + 10
    while not any(b"pyenv-rehash" in procfs.cmdline(p) for p in node4.processes()):
        assert time.monotonic() < wait_for_pids, "the stand-in rehash did not start"
        time.sleep(0.05)
    try:
        isolated.crash(node4)
        assert (node4.processes(), lock.exists(), isolated.sshd_pid(node4)) == ([], False, None)
    finally:
        waiter.kill()
        waiter.wait()
        isolated.start_sshd(node4)
    assert ssh(isolated, "node4", "true").returncode == 0


def test_processes_and_env_markers_are_per_host(cluster):
    node1, node3 = cluster.host("node1"), cluster.host("node3")
    marker = f"DISTCTL_RUN_ID={uuid.uuid4().hex}"
    started = ssh(cluster, "node3", f"{marker} setsid sleep 300 >/dev/null 2>&1 </dev/null & echo $!")
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout)
    assert wait_until(lambda: node3.pids_with_env(marker), "the marked sleep") == [pid]
    assert pid in node3.processes() and pid not in node1.processes()
    assert node1.pids_with_env(marker) == [] and node3.pids_with_env(marker[:-1]) == []
    assert node3.anchor_pid not in node3.processes()
    assert cluster.sshd_pid(node3) not in node3.processes()
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: pid not in node3.processes(), "the sleep to end")


def test_close_removes_everything_it_created(make_cluster):
    solo = make_cluster([HostSpec("solo")])
    # env -i: only the namespace sweep can find it (the fallback has just the SetEnv tag)
    scrub = "env -i " if solo.isolated else ""
    sleeper = subprocess.run(
        solo.ssh_argv("solo", f"{scrub}setsid sleep 300 >/dev/null 2>&1 </dev/null & echo $!"),
        capture_output=True, text=True, timeout=30)
    pids = [int(sleeper.stdout), solo.sshd_pid("solo"), solo.host("solo").anchor_pid]
    netns, tmpdir = solo.host("solo").netns, solo.tmpdir
    solo.close()
    assert [p for p in pids if p and procfs.alive(p, None)] == []
    assert not tmpdir.exists()
    assert solo.tag not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    if netns:
        assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.mark.usefixtures("make_cluster")  # a cluster must be possible here
def test_cleanup_stale_undoes_a_crashed_run():
    """A run killed with SIGKILL leaves sshd, anchor and namespace; the next start removes them."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import cluster; "
         "c = cluster.start_cluster([cluster.HostSpec('crash')]); h = c.host('crash'); "
         "print(c.tag, h.netns, c.sshd_pid(h), c.tmpdir, flush=True); sys.stdin.read()",
         str(Path(testcluster.__file__).parent)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        tag, netns, sshd, tmpdir = read_line(child, timeout=30).split()
        with testcluster._locked():  # no other session's cleanup may run before we look
            child.kill()
            child.wait()
            assert procfs.alive(int(sshd), None), "the crash should leave sshd running"
            removed = testcluster.cleanup_stale()
    finally:
        child.kill()
        child.wait()
    assert any(tag in line or sshd in line for line in removed), removed
    wait_until(lambda: not procfs.alive(int(sshd), None), "the orphaned sshd to die")
    assert not Path(tmpdir).exists()
    if netns != "None":
        assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_a_stale_pyenv_rehash_lock_is_removed_and_a_fresh_one_kept(tmp_path, monkeypatch):
    """A login killed mid-rehash must not make every later login on every host wait 60 s."""
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    lock = tmp_path / "shims" / ".pyenv-shim"
    lock.parent.mkdir()
    lock.touch()
    old = time.time() - testcluster.REHASH_STALE_S - 5
    os.utime(lock, (old, old))
    testcluster._start_rehash_janitor()
    wait_until(lambda: not lock.exists(), "the stale lock to be removed")
    lock.touch()
    time.sleep(2.5)  # two sweeps: a fresh lock (a rehash at work) stays
    assert lock.exists()
