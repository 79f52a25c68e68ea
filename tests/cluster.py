"""Real multi-host test clusters: one OpenSSH server per test host, each host in its own namespaces.

Every distctl behaviour that crosses a network is tested against these hosts, driven exactly as a
user drives distctl: the plain OpenSSH client (or Fabric) talks to a real ``/usr/sbin/sshd``.

Isolated mode (root, ``ip netns``, ``nsenter``, ``unshare``) -- the normal one:
  * Each host is a network namespace ``dctl<pid><seq>-<name>`` attached by a veth pair to a bridge
    in the root namespace. The "front" net is ``10.213.S.0/24`` (bridge at ``.1``, host i at
    ``.10+i``); the "back" net ``10.214.S.0/24`` has no address in the root namespace and an
    ``unreachable`` route, so hosts only on it can be reached only through a jump host. ``S`` is a
    per-cluster slot so parallel sessions never share a subnet. No default route inside a host:
    private training networks rarely have one.
  * A long-lived anchor process per host (``sleep infinity`` behind ``unshare --uts --mount``)
    holds its UTS and mount namespaces: its own hostname, a private tmpfs on ``WORKDIR``, and a
    private ``/etc/hosts`` in which the host's own name is ``127.0.0.1`` (the trap real clusters
    set: gloo/torchrun then advertise loopback) and peers resolve to their addresses. sshd and
    ``TestHost.run`` enter those namespaces with ``nsenter -t ANCHOR -n -u -m``, so restarting
    sshd keeps the host's state. The rest of the file system (``/tmp``, ``/root``, the venv) is
    shared, like an NFS home: ``Cluster.python`` runs on every host.
  * Teardown kills the processes it started and every process still inside its network
    namespaces, then deletes only the links, routes and namespaces it recorded. What it creates
    is recorded first in a ledger file, so ``cleanup_stale()`` (run at every start) undoes what a
    crashed run left once its owner pid is dead.

Loopback fallback (not root, no ``ip netns``, or ``DISTCTL_TEST_CLUSTER=loopback``):
  sshd per host on ``127.0.0.(10+i)`` with a free high port, run as the current user; each host's
  ``workdir`` is a separate temp directory. There is no hostname, interface or network isolation:
  ``Cluster.isolated`` is False, ``netns`` is None, ``iface`` is ``lo``, ``TestHost.run`` runs
  locally, and a host's processes are those whose environment carries the
  ``DISTCTL_TEST_HOST=<tag>-<name>`` entry its sshd sets (``SetEnv``). Tests that need isolation
  must check ``Cluster.isolated``.

Example::

    with start_cluster([HostSpec("node1"), HostSpec("node2")]) as cluster:
        subprocess.run(cluster.ssh_argv("node2", "hostname"), check=True)
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import pwd
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support import procfs

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
WORKDIR = "/srv/dctl-work"
FRONT, BACK = "front", "back"
ENV_TAG = "DISTCTL_TEST_HOST"
READY_TIMEOUT_S = 10.0

_NET_PREFIX = {FRONT: "10.213", BACK: "10.214"}
_STATE_DIR = Path(tempfile.gettempdir()) / f"distctl-test-cluster-{os.geteuid()}"
_NAME_RE = re.compile(r"^dctl(\d+)[a-z]-")
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_seq = iter(_B36[10:])  # one letter per cluster in this process: main and jump clusters coexist

Command = str | Sequence[str]


class ClusterError(RuntimeError):
    """The test cluster could not be brought up or torn down; the message says what and where."""


@dataclass(frozen=True)
class Nic:
    """One network interface of a test host: which network, and its name inside the host."""

    network: str = FRONT
    name: str = "eth0"


@dataclass(frozen=True)
class HostSpec:
    """What to build: a host name, its interfaces (the first carries sshd), an optional jump host."""

    name: str
    nics: tuple[Nic, ...] = (Nic(),)
    via: str | None = None


@dataclass(frozen=True)
class TestHost:
    """A running test host. ``address:port`` is where its sshd listens (reached via ``via``)."""

    __test__ = False  # not a pytest test class, despite the name

    name: str
    address: str
    port: int
    workdir: str
    iface: str
    netns: str | None
    interfaces: tuple[tuple[str, str], ...]  # (interface name, IPv4 address), sshd's first
    via: str | None
    anchor_pid: int | None
    sshd_pidfile: str
    env_tag: str

    def argv(self, cmd: Command) -> list[str]:
        """The argv running ``cmd`` (argv list, or a string for ``sh -c``) inside this host."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if self.anchor_pid is None:
            return argv
        return ["nsenter", "-t", str(self.anchor_pid), "-n", "-u", "-m", "--", *argv]

    def run(self, cmd: Command, *, check: bool = False, timeout: float = 60.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside this host (not over SSH) and capture its text output."""
        return subprocess.run(self.argv(cmd), capture_output=True, text=True, check=check,
                              timeout=timeout, input=input)

    def processes(self, *, infra: bool = False) -> list[int]:
        """PIDs living in this host; without ``infra``, minus the anchor and the sshd listener."""
        if self.netns is None:
            pids = procfs.pids_with_env(lambda entry: entry == f"{ENV_TAG}={self.env_tag}")
        else:
            pids = procfs.pids_in_netns(self.netns)
        skip = set() if infra else {self.anchor_pid, procfs.read_pid(self.sshd_pidfile)}
        return [pid for pid in pids if pid not in skip]

    def pids_with_env(self, marker: str) -> list[int]:
        """PIDs in this host whose environment holds exactly the entry ``marker`` (KEY=VALUE)."""
        return [pid for pid in self.processes(infra=True) if marker in procfs.environ(pid)]


class Cluster:
    """Running test hosts plus the client side: key, known_hosts, ssh_config, user."""

    def __init__(self, specs: Sequence[HostSpec], isolated: bool) -> None:
        _validate(specs)
        self.specs = tuple(specs)
        self.isolated = isolated
        self.tag = f"dctl{os.getpid()}{next(_seq)}"
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        self.key_path = self.tmpdir / "id_ed25519"
        self.known_hosts = self.tmpdir / "known_hosts"
        self.ssh_config = self.tmpdir / "ssh_config"
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.python = sys.executable
        self.hosts: tuple[TestHost, ...] = ()
        self._ledger = _Ledger(_STATE_DIR / f"{self.tag}.json", self.tag, str(self.tmpdir))
        self._procs: list[subprocess.Popen] = []
        self._sshd: dict[str, subprocess.Popen] = {}
        self._closed = False

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host(self, name: str | TestHost) -> TestHost:
        """The host called ``name`` (a TestHost passes through)."""
        if isinstance(name, TestHost):
            return name
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"no test host {name!r}; hosts: {[h.name for h in self.hosts]}")

    def ssh_argv(self, host: str | TestHost, *cmd: str) -> list[str]:
        """An OpenSSH client argv for ``host`` that checks host keys strictly; ``cmd`` is a
        remote shell command (ssh joins several words with spaces)."""
        host = self.host(host)
        argv = ["ssh", "-F", str(self.ssh_config), "-i", str(self.key_path),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-p", str(host.port)]
        if host.via:
            jump = self.host(host.via)  # the jump child ssh gets -F, hence key and known_hosts
            argv += ["-J", f"{self.user}@{jump.address}:{jump.port}"]
        return [*argv, f"{self.user}@{host.address}", *cmd]

    def veth(self, host: str | TestHost) -> str:
        """The root-namespace end of a host's first interface (what `tc qdisc ... tbf` throttles)."""
        h = self.host(host)
        index = [s.name for s in self.specs].index(h.name) + 1
        return f"{self.tag}-{_B36[index]}0"

    def sshd_pid(self, host: str | TestHost) -> int | None:
        """PID of the host's running sshd listener, None while stopped."""
        proc = self._sshd.get(self.host(host).name)
        return proc.pid if proc and proc.poll() is None else None

    def stop_sshd(self, host: str | TestHost) -> None:
        """Stop the host's sshd (its namespaces, files and other processes stay)."""
        proc = self._sshd.pop(self.host(host).name, None)
        if proc is not None:
            _stop(proc)

    def start_sshd(self, host: str | TestHost) -> None:
        """Start the host's sshd again inside the same namespaces; returns once it accepts."""
        host = self.host(host)
        if self.sshd_pid(host) is None:
            self._sshd[host.name] = self._spawn_sshd(host)
            self._wait_ready(host)

    def crash(self, host: str | TestHost) -> None:
        """The host goes down hard: its sshd stopped, then every process in it SIGKILLed at
        once, ranks and wrappers alike (no exit code is written). `start_sshd` brings it back,
        as a reboot would.

        Unlike real machines, the test hosts share this machine's file system, home included.
        A login shell killed halfway through `pyenv rehash` (a .bashrc may run it) leaves
        pyenv's lock file behind, and then every login on every host waits 60 s for it: a
        crash of one real host cannot do that to the others, so that lock is removed when
        a rehash was among the processes killed."""
        host = self.host(host)
        self.stop_sshd(host)
        rehashing = [pid for pid in host.processes() if b"pyenv-rehash" in procfs.cmdline(pid)]
        _kill_all(host.processes)
        if rehashing:  # one of them held the lock (other hosts' rehashes may be waiting for it)
            _rehash_lock().unlink(missing_ok=True)

    def close(self) -> None:
        """Kill what this cluster started and delete what it created; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        errors = self._ledger.undo()
        for proc in self._procs:
            _stop(proc)
        if errors:
            raise ClusterError("test cluster teardown left things behind:\n" + "\n".join(errors))

    # -- bring-up ---------------------------------------------------------------------------

    def _bring_up(self) -> None:
        """Keys, networks, hosts, sshds: everything per host runs in parallel."""
        _keygen([self.key_path, *(self._dir(s.name) / "ssh_host_ed25519_key" for s in self.specs)])
        plan = self._plan_addresses()
        with ThreadPoolExecutor(len(self.specs)) as pool:
            self.hosts = tuple(pool.map(lambda s: self._make_host(s, plan), self.specs))
            self._write_client_files()
            self._sshd = dict(zip([h.name for h in self.hosts], pool.map(self._spawn_sshd, self.hosts)))
            list(pool.map(self._wait_ready, self.hosts))

    def _dir(self, name: str) -> Path:
        """The host's private directory on the controller: config, keys, logs."""
        path = self.tmpdir / name
        path.mkdir(exist_ok=True)
        return path

    def _plan_addresses(self) -> dict[str, list[tuple[Nic, str, int]]]:
        """Each host's (nic, address, port); isolated mode also creates the bridges first."""
        with _locked():
            cleanup_stale()
            if not self.isolated:
                return {s.name: [(Nic(name="lo"), *_free_loopback(10 + i))]
                        for i, s in enumerate(self.specs, 1)}
            slot = _free_slot()
            self._ledger.record("slot", slot)
            for net in sorted({nic.network for s in self.specs for nic in s.nics}):
                self._make_bridge(net, slot)
        return {s.name: [(nic, f"{_NET_PREFIX[nic.network]}.{slot}.{10 + i}", 22) for nic in s.nics]
                for i, s in enumerate(self.specs, 1)}

    def _make_bridge(self, net: str, slot: int) -> None:
        """A bridge per network; only the front one gets a root-namespace address."""
        bridge = f"{self.tag}-{net[0]}"
        self._ledger.record("links", bridge)
        _ip("link", "add", bridge, "type", "bridge")
        _ip("link", "set", bridge, "up")
        if net == FRONT:
            _ip("addr", "add", f"{_NET_PREFIX[net]}.{slot}.1/24", "dev", bridge)
        else:  # nothing for the back net may leave through the machine's default route
            route = f"{_NET_PREFIX[net]}.{slot}.0/24"
            self._ledger.record("routes", route)
            _ip("route", "add", "unreachable", route)

    def _make_host(self, spec: HostSpec, plan: dict[str, list[tuple[Nic, str, int]]]) -> TestHost:
        """Namespaces, interfaces and anchor for one host, then its TestHost record."""
        nics = plan[spec.name]
        folder = self._dir(spec.name)
        (folder / "hosts").write_text(_hosts_file(spec.name, plan))
        (folder / "sshd_config").write_text(self._sshd_config(spec.name, nics))
        anchor, netns, workdir = None, None, str(folder / "work")
        if self.isolated:
            netns, workdir = f"{self.tag}-{spec.name}", WORKDIR
            self._make_netns(netns, self.specs.index(spec) + 1, nics)
            anchor = self._start_anchor(netns, spec.name, folder)
        else:
            os.makedirs(workdir)
        return TestHost(
            name=spec.name, address=nics[0][1], port=nics[0][2], workdir=workdir,
            iface=nics[0][0].name, netns=netns,
            interfaces=tuple((nic.name, addr) for nic, addr, _ in nics), via=spec.via,
            anchor_pid=anchor, sshd_pidfile=str(folder / "sshd.pid"),
            env_tag=f"{self.tag}-{spec.name}")

    def _make_netns(self, netns: str, index: int, nics: list[tuple[Nic, str, int]]) -> None:
        """The namespace, one veth pair per NIC (root side on the bridge), lo up, no default route."""
        self._ledger.record("netns", netns)
        _ip("netns", "add", netns)
        for j, (nic, addr, _) in enumerate(nics):
            veth = f"{self.tag}-{_B36[index]}{j}"  # IFNAMSIZ: at most 15 characters
            self._ledger.record("links", veth)
            _ip("link", "add", veth, "type", "veth", "peer", "name", nic.name, "netns", netns)
            _ip("link", "set", veth, "master", f"{self.tag}-{nic.network[0]}", "up")
            _ip("-n", netns, "addr", "add", f"{addr}/24", "dev", nic.name)
            _ip("-n", netns, "link", "set", nic.name, "up")
        _ip("-n", netns, "link", "set", "lo", "up")

    def _start_anchor(self, netns: str, name: str, folder: Path) -> int:
        """Start the process that holds the host's UTS and mount namespaces; its PID."""
        script = ('set -e; hostname "$1"; mkdir -p "$2"; '
                  'mount -t tmpfs -o size=512m,mode=0755 "dctl-$1" "$2"; '
                  'mount --bind "$3" /etc/hosts; echo ready; exec sleep infinity >/dev/null 2>&1')
        os.makedirs(WORKDIR, exist_ok=True)  # the mount point, empty on the root file system
        with open(folder / "anchor.log", "wb") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", netns, "unshare", "--uts", "--mount", "--propagation",
                 "private", "sh", "-c", script, "anchor", name, WORKDIR, str(folder / "hosts")],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                start_new_session=True)  # Ctrl-C must not kill it before teardown does
        self._adopt(proc)  # ip and unshare exec, so this PID ends up being `sleep`
        if _read_line(proc, time.monotonic() + READY_TIMEOUT_S) != "ready":
            raise ClusterError(f"{name}: namespace anchor failed: {_tail(folder / 'anchor.log')}")
        proc.stdout.close()
        return proc.pid

    def _sshd_config(self, name: str, nics: list[tuple[Nic, str, int]]) -> str:
        """sshd_config for one host: its own host key, the session's client key, no PAM."""
        folder = self.tmpdir / name
        listen = [f"ListenAddress {addr}:{port}" for _, addr, port in nics]
        return "\n".join([
            *listen, f"HostKey {folder}/ssh_host_ed25519_key",
            f"AuthorizedKeysFile {self.tmpdir}/authorized_keys", f"PidFile {folder}/sshd.pid",
            f"Subsystem sftp {SFTP_SERVER}", "PermitRootLogin prohibit-password",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
            "StrictModes no",  # the keys live in a temp dir with the runner's permissions
            "MaxStartups 100:30:200",  # the default 10:30:100 drops 16-host fan-out connects
            "PrintMotd no", f"SetEnv {ENV_TAG}={self.tag}-{name}", ""])

    def _write_client_files(self) -> None:
        """authorized_keys, known_hosts (one ``ip ssh-ed25519 KEY`` line per host), ssh_config."""
        shutil.copyfile(f"{self.key_path}.pub", self.tmpdir / "authorized_keys")
        lines = []
        for host in self.hosts:
            key = " ".join((self.tmpdir / host.name / "ssh_host_ed25519_key.pub").read_text().split()[:2])
            where = host.address if host.port == 22 else f"[{host.address}]:{host.port}"
            lines.append(f"{where} {key}\n")
        self.known_hosts.write_text("".join(lines))
        self.ssh_config.write_text(_ssh_config(self))

    def _spawn_sshd(self, host: TestHost) -> subprocess.Popen:
        """Start sshd in the foreground (-D), logging to the host's sshd.log; nsenter execs it."""
        if os.geteuid() == 0:  # sshd running as root insists on its privsep chroot directory
            os.makedirs("/run/sshd", exist_ok=True)
        folder = self.tmpdir / host.name
        with open(folder / "sshd.log", "ab") as log:
            proc = subprocess.Popen(host.argv([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")]),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        self._adopt(proc)
        return proc

    def _wait_ready(self, host: TestHost) -> None:
        """Wait until the host's sshd accepts TCP; from inside its jump host when it has one."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        prober = self.host(host.via) if host.via and self.isolated else None
        while not _accepts(host.address, host.port, prober):
            proc = self._sshd[host.name]
            if proc.poll() is not None or time.monotonic() > deadline:
                log = _tail(self.tmpdir / host.name / "sshd.log")
                raise ClusterError(f"{host.name}: sshd not accepting on "
                                   f"{host.address}:{host.port}: {log}")
            time.sleep(0.01)  # poll interval; the deadline above bounds the wait

    def _adopt(self, proc: subprocess.Popen) -> None:
        """Remember a started process: close() stops it, a later run kills it after a crash."""
        self._procs.append(proc)
        self._ledger.record("pids", [proc.pid, procfs.start_time(proc.pid)])


def start_cluster(specs: Sequence[HostSpec], *, isolated: bool | None = None) -> Cluster:
    """Bring up one sshd per spec and return the Cluster; on failure, undo and re-raise."""
    if isolated is None:
        isolated = netns_available()
    cluster = Cluster(specs, isolated)
    _start_rehash_janitor()
    try:
        cluster._bring_up()
    except BaseException:
        cluster.close()
        raise
    return cluster


def cluster_unavailable() -> str | None:
    """Why no test cluster can run here (a missing program), or None when one can."""
    for program in (SSHD, "ssh", "ssh-keygen"):
        if shutil.which(program) is None:
            return f"{program} is not installed (apt-get install openssh-server openssh-client)"
    return None


def netns_available() -> bool:
    """True when isolated mode can work: root, ip/nsenter/unshare present, not forced off."""
    if os.environ.get("DISTCTL_TEST_CLUSTER") == "loopback" or os.geteuid() != 0:
        return False
    if any(shutil.which(p) is None for p in ("ip", "nsenter", "unshare")):
        return False
    return subprocess.run(["ip", "netns", "list"], capture_output=True).returncode == 0


def close_on_exit(cluster: Cluster) -> None:
    """Close ``cluster`` at interpreter exit, and turn SIGTERM/SIGHUP into KeyboardInterrupt so
    pytest unwinds (running fixture teardown) instead of dying with the namespaces up."""
    atexit.register(cluster.close)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _interrupt)


def cleanup_stale() -> list[str]:
    """Undo what earlier, crashed runs of this module left (their owner pid is dead)."""
    removed = []
    _STATE_DIR.mkdir(parents=True, exist_ok=True)
    for path in _STATE_DIR.glob("*.json"):
        ledger = _Ledger.load(path)
        if ledger is not None and not procfs.alive(*ledger.data["owner"]):
            removed += ledger.describe()
            ledger.undo()
    for kind, names in (("netns", _ip_names("netns", "list")), ("links", _ip_names("-o", "link"))):
        for name in names:  # left before the ledger was written, or the ledger was deleted
            match = _NAME_RE.match(name)
            if match and not procfs.alive(int(match[1]), None):
                removed.append(f"{kind} {name}")
                _Ledger(None, name, None, {kind: [name]}).undo()
    return removed


# -- the ledger: what a cluster created, kept on disk --------------------------------------------

class _Ledger:
    """Everything one cluster created, saved on each change, so teardown and crash cleanup undo
    exactly that and nothing else."""

    def __init__(self, path: Path | None, tag: str, tmpdir: str | None,
                 data: dict | None = None) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.data = data or {"owner": [os.getpid(), procfs.start_time(os.getpid())], "tag": tag,
                             "tmpdir": tmpdir, "slot": None, "netns": [], "links": [],
                             "routes": [], "pids": []}

    @classmethod
    def load(cls, path: Path) -> _Ledger | None:
        """Read a ledger file; None if it is unreadable (then it is only removed)."""
        try:
            return cls(path, "", None, json.loads(path.read_text()))
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            return None

    def record(self, kind: str, item: object) -> None:
        """Note ``item`` BEFORE creating it: a crash in between still leaves it findable."""
        with self.lock:
            if isinstance(self.data.get(kind), list):
                self.data[kind].append(item)
            else:
                self.data[kind] = item
            if self.path is not None:
                _STATE_DIR.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.data))
                os.replace(tmp, self.path)

    def describe(self) -> list[str]:
        """What this ledger holds, one line per thing."""
        return [f"{kind} {item}" for kind in ("netns", "links", "routes", "pids")
                for item in self.data.get(kind, [])]

    def undo(self) -> list[str]:
        """Kill, then delete, what the ledger names; returns what could not be removed."""
        data, errors = self.data, []
        for netns in data.get("netns", []):
            _kill_all(lambda ns=netns: procfs.pids_in_netns(ns))
        _kill_all(lambda: [pid for pid, start in data.get("pids", []) if procfs.alive(pid, start)])
        if data.get("tag"):  # loopback fallback: sessions carry the SetEnv entry
            prefix = f"{ENV_TAG}={data['tag']}-"
            _kill_all(lambda: procfs.pids_with_env(lambda entry: entry.startswith(prefix)))
        for args in ([("link", "del", n) for n in reversed(data.get("links", []))]
                     + [("route", "del", "unreachable", r) for r in data.get("routes", [])]
                     + [("netns", "del", n) for n in data.get("netns", [])]):
            errors += _ip_undo(*args)
        if data.get("tmpdir"):
            shutil.rmtree(data["tmpdir"], ignore_errors=True)
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        return errors


# -- small helpers ---------------------------------------------------------------------------------

def _validate(specs: Sequence[HostSpec]) -> None:
    """Reject specs that cannot be built, naming the host."""
    names = [s.name for s in specs]
    if not specs or len(set(names)) != len(names) or len(specs) > 35:
        raise ClusterError(f"need 1..35 distinct host names, got {names}")
    for spec in specs:
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,20}", spec.name) or not spec.nics:
            raise ClusterError(f"host {spec.name!r}: name must be a short hostname, nics non-empty")
        if spec.nics[0].network != FRONT and spec.via is None:
            raise ClusterError(f"host {spec.name!r}: first nic is not on the front net; set via=")
        if spec.via is not None and spec.via not in names[:names.index(spec.name)]:
            raise ClusterError(f"host {spec.name!r}: via={spec.via!r} must name an earlier host")


def _hosts_file(name: str, plan: dict[str, list[tuple[Nic, str, int]]]) -> str:
    """A host's /etc/hosts: its own name is 127.0.0.1 (the realistic trap), peers resolve to
    their address on a network they share with this host."""
    mine = {nic.network for nic, _, _ in plan[name]}
    lines = ["127.0.0.1\tlocalhost", f"127.0.0.1\t{name}", "::1\tlocalhost ip6-localhost"]
    for peer, nics in plan.items():
        shared = [addr for nic, addr, _ in nics if nic.network in mine]
        if peer != name and shared:
            lines.append(f"{shared[0]}\t{peer}")
    return "\n".join(lines) + "\n"


def _ssh_config(cluster: Cluster) -> str:
    """An ssh_config naming every host (ProxyJump for jump-only ones) with strict host keys."""
    blocks = []
    for host in cluster.hosts:
        blocks += [f"Host {host.name}", f"    HostName {host.address}", f"    Port {host.port}"]
        blocks += [f"    ProxyJump {host.via}"] if host.via else []
    return "\n".join([
        *blocks, "Host *", f"    User {cluster.user}", f"    IdentityFile {cluster.key_path}",
        "    IdentitiesOnly yes", f"    UserKnownHostsFile {cluster.known_hosts}",
        "    GlobalKnownHostsFile /dev/null", "    StrictHostKeyChecking yes",
        "    BatchMode yes", "    ConnectTimeout 5", ""])


def _keygen(paths: Sequence[Path]) -> None:
    """Generate ed25519 key pairs at ``paths``, all at once."""
    procs = [subprocess.Popen(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "distctl-test",
                               "-f", str(p)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for p in paths]
    for path, proc in zip(paths, procs):
        if proc.wait(timeout=30) != 0:
            raise ClusterError(f"ssh-keygen {path}: {proc.stdout.read().decode(errors='replace')}")


def _free_loopback(last_octet: int) -> tuple[str, int]:
    """A loopback address and a port free on it right now (fallback mode)."""
    addr = f"127.0.0.{last_octet}"
    with socket.socket() as sock:
        sock.bind((addr, 0))
        return addr, sock.getsockname()[1]


def _free_slot() -> int:
    """A subnet slot S with neither 10.213.S.0/24 nor 10.214.S.0/24 in use (call under lock)."""
    text = _ip("-4", "route", "show", "table", "all") + _ip("-4", "-o", "addr")
    used = {int(s) for s in re.findall(r"\b10\.21[34]\.(\d+)\.", text)}
    for path in _STATE_DIR.glob("*.json"):
        ledger = _Ledger.load(path)
        if ledger is not None and ledger.data.get("slot") is not None:
            used.add(ledger.data["slot"])
    free = [s for s in range(256) if s not in used]
    if not free:
        raise ClusterError("no free 10.213.S.0/24 subnet slot")
    return free[0]


@contextmanager
def _locked() -> Iterator[None]:
    """Serialise slot allocation and stale cleanup between concurrent test sessions."""
    _STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(_STATE_DIR / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _ip(*args: str) -> str:
    """Run ``ip ARGS``; its stdout, or ClusterError with its stderr."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ClusterError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def _ip_undo(*args: str) -> list[str]:
    """Run a deleting ``ip`` command; something already gone is not an error."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    gone = ("Cannot find device", "No such file", "No such process", "not found")
    if proc.returncode == 0 or any(g in proc.stderr for g in gone):
        return []
    return [f"ip {' '.join(args)}: {proc.stderr.strip()}"]


def _ip_names(*args: str) -> list[str]:
    """Names from ``ip netns list`` / ``ip -o link`` output; empty when ip is unavailable."""
    try:
        out = subprocess.run(["ip", *args], capture_output=True, text=True).stdout
    except OSError:
        return []
    names = [line.split()[0] if args[0] == "netns" else line.split(":")[1].strip()
             for line in out.splitlines() if line.strip()]
    return [n.split("@")[0] for n in names]


def _accepts(address: str, port: int, prober: TestHost | None) -> bool:
    """Whether a TCP connect to address:port succeeds, from here or from inside ``prober``."""
    if prober is not None:
        code = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)"
        return prober.run([sys.executable, "-c", code, address, str(port)]).returncode == 0
    try:
        socket.create_connection((address, port), timeout=1).close()
        return True
    except OSError:
        return False


def _read_line(proc: subprocess.Popen, deadline: float) -> str:
    """One line from ``proc``'s stdout, or '' at EOF or at the deadline."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(max(0.0, deadline - time.monotonic())):
            return ""
    return proc.stdout.readline().decode(errors="replace").strip()


def _stop(proc: subprocess.Popen) -> None:
    """Terminate a child we started and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _kill_all(find: Callable[[], list[int]], timeout: float = 5.0) -> None:
    """SIGKILL whatever ``find()`` returns until it returns nothing (zombies drop out of it)."""
    deadline = time.monotonic() + timeout
    while (pids := find()) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)  # poll until the kernel has reaped or zombified them


def _rehash_lock() -> Path:
    """The file `pyenv rehash` creates as its lock, and removes when it exits (not on SIGKILL)."""
    return Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "shims" / ".pyenv-shim"


REHASH_STALE_S = 10.0  # a rehash takes well under a second; a lock this old lost its holder
_janitor_started = threading.Event()


def _start_rehash_janitor() -> None:
    """Remove pyenv's rehash lock once it is REHASH_STALE_S old, checking every second.

    The test hosts share this machine's home, so where a login's .bashrc runs `pyenv rehash`,
    every login of every host takes the same lock, and one killed mid-rehash (a rank's login
    shell torn down as it starts, by distctl or by a test) leaves it behind: every later login,
    on every host of every pytest-xdist worker's clusters, then waits 60 s for it. `crash` knows
    when it killed the holder; a teardown by distctl does not, so this thread cleans up after it."""
    if _janitor_started.is_set():
        return
    _janitor_started.set()

    def sweep() -> None:
        while True:
            lock = _rehash_lock()
            try:
                if time.time() - lock.stat().st_mtime > REHASH_STALE_S:
                    lock.unlink(missing_ok=True)
            except OSError:
                pass  # no lock: nothing to do
            time.sleep(1.0)

    threading.Thread(target=sweep, name="pyenv-rehash-janitor", daemon=True).start()


def _tail(path: Path, limit: int = 2000) -> str:
    """The end of a log file, for error messages."""
    try:
        return path.read_text(errors="replace")[-limit:].strip() or "(empty log)"
    except OSError:
        return "(no log)"


def _interrupt(signum: int, frame: object) -> None:
    """Signal handler: unwind like Ctrl-C so teardown runs."""
    raise KeyboardInterrupt(f"signal {signum}")
