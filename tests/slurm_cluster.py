"""A real Slurm cluster for the tests: Debian's slurmctld, slurmd and munge (22.05), no emulator.

Layout (every name carries the tag ``dsl<pid>``, every address the slot S of 10.218.S.0/24)::

    root netns     bridge dsl<pid>-br  10.218.S.1      the workstation: distctl runs here
    netns -ctl     10.218.S.10         slurmctld (hostname "head") and the login node's sshd
                                        (hostname "login", its own PID namespace: nothing there
                                        can see a rank's process, /proc shows only sshd's)
    netns -cn1     10.218.S.11         slurmd, hostname "cn1"
    netns -cn2     10.218.S.12         slurmd, hostname "cn2"
    one munged (root netns) on a socket of its own; its path reaches every namespace

Each daemon runs in the foreground (``-D``/``-F``) as a child of the test session, inside
``nsenter --net`` + ``unshare --uts --mount``: its own hostname (slurmd finds its NodeName by
it), /etc/hosts bind-mounted, and a fresh /sys with the host's cgroup tree moved back in
(slurmd 22.05 initialises its cgroup plugin even with proctrack/linuxproc; see
../shared/slurm-lab/NOTES.md, whose recipe this follows). The nodes share the root file system,
so ``Slurm.shared`` (under the cluster's temp folder) is the shared file system runs live on.

Teardown cancels every job while slurmctld answers, then kills what the cluster started and
everything left in its namespaces, and deletes links and namespaces. What it creates is written
to a ledger first (tests/cluster.py's), so a crashed session's leftovers are undone at the next
start, with the SSH test cluster's (``cleanup_stale``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster import (_STATE_DIR, ClusterError, _ip, _keygen, _Ledger, _locked, _rehash_lock, _tail,
                     cleanup_stale)
from support import procfs

PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client")
NET = "10.218"
CTL_HOST, LOGIN_HOST = "head", "login"
NODES = ("cn1", "cn2")
PARTITION = "batch"
READY_TIMEOUT_S = 30.0
_STALE = re.compile(r"^dsl(\d+)-")


def slurm_unavailable() -> str | None:
    """Why no Slurm cluster can run here, or None."""
    if os.geteuid() != 0:
        return "the Slurm test cluster needs root (network namespaces, daemons)"
    for program in ("slurmctld", "slurmd", "munged", "sbatch", "ip", "nsenter", "unshare", "setpriv",
                    "/usr/sbin/sshd"):
        if shutil.which(program) is None:
            return f"{program} is not installed (apt-get install {' '.join(PACKAGES)} openssh-server)"
    return None


class Slurm:
    """A running test Slurm cluster. ``env`` runs Slurm's clients from the root namespace."""

    def __init__(self) -> None:
        self.tag = f"dsl{os.getpid()}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        os.chmod(self.tmp, 0o755)  # munged (user munge) must reach its folder below
        self.conf = self.tmp / "etc" / "slurm.conf"
        self.shared = self.tmp / "shared"  # the shared file system: workdirs and runs live here
        self.key_path = self.tmp / "ssh" / "id_ed25519"
        self.known_hosts = self.tmp / "ssh" / "known_hosts"
        self.user = "root"
        self.python = sys.executable
        self.partition = PARTITION
        self.nodes = NODES
        self.slot = 0
        self.munge_socket = self.tmp / "munge-run" / "munge.socket"
        self.login_only_python = self.tmp / "login-only" / "python3"  # runs on the login node only
        self._ledger = _Ledger(_STATE_DIR / f"{self.tag}.json", self.tag, str(self.tmp))
        self._procs: list[subprocess.Popen] = []
        self._closed = False

    # -- addresses and names -------------------------------------------------------------------

    def netns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def address(self, name: str) -> str:
        index = {CTL_HOST: 10, LOGIN_HOST: 10, **{n: 11 + i for i, n in enumerate(NODES)}}[name]
        return f"{NET}.{self.slot}.{index}"

    @property
    def login_address(self) -> str:
        return self.address(LOGIN_HOST)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def client(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """A Slurm client command (squeue, scontrol...) from the root namespace."""
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=self.env)

    def node_processes(self, node: str) -> list[int]:
        """Processes on a compute node other than its slurmd: job steps, ranks."""
        daemons = {p.pid for p in self._procs}
        return [pid for pid in procfs.pids_in_netns(self.netns(node)) if pid not in daemons]

    def active_jobs(self) -> list[str]:
        """Job ids Slurm still holds as pending, running, completing or suspended."""
        out = self.client("squeue", "-h", "-o", "%i %T").stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    # -- bring-up ------------------------------------------------------------------------------

    def bring_up(self) -> None:
        with _locked():
            cleanup_stale()
            _cleanup_stray()
            self.slot = _free_slot()
            self._ledger.record("slot", self.slot)
            self._network()
        self._files()
        self._start_munge()
        self._start(CTL_HOST, ["slurmctld", "-D", "-f", str(self.conf)])
        self._wait(lambda: "is UP" in self.client("scontrol", "ping", timeout=5).stdout, "slurmctld to answer",
                   "slurmctld.log")
        for node in NODES:
            self._start(node, ["slurmd", "-D", "-f", str(self.conf)])
        want = " ".join(f"{n} idle" for n in NODES)
        self._wait(lambda: " ".join(sorted(self.client("sinfo", "-h", "-N", "-o", "%N %t").stdout.split("\n")))
                   .strip() == want, "both nodes idle", "slurmd-cn1.log")
        self._start_login()

    def _network(self) -> None:
        bridge = f"{self.tag}-br"
        self._ledger.record("links", bridge)
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{NET}.{self.slot}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, name in enumerate(("ctl", *NODES)):
            ns, veth = self.netns(name), f"{self.tag}-v{i}"
            self._ledger.record("netns", ns)
            _ip("netns", "add", ns)
            self._ledger.record("links", veth)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "master", bridge, "up")
            addr = self.address(CTL_HOST if name == "ctl" else name)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def _files(self) -> None:
        for sub in ("etc", "ctld", "log", "ssh", *(f"spool/{n}" for n in NODES), *(f"mnt/{n}" for n in
                                                                                    ("ctl", *NODES))):
            (self.tmp / sub).mkdir(parents=True, exist_ok=True)
        self.shared.mkdir(mode=0o1777)
        hosts = ["127.0.0.1 localhost", f"{self.address(CTL_HOST)} {CTL_HOST} {LOGIN_HOST}",
                 *(f"{self.address(n)} {n}" for n in NODES)]
        (self.tmp / "etc" / "hosts").write_text("\n".join(hosts) + "\n")
        self.conf.write_text(_slurm_conf(self))
        _keygen([self.key_path, self.tmp / "ssh" / "host_key"])
        shutil.copyfile(f"{self.key_path}.pub", self.tmp / "ssh" / "authorized_keys")
        host_key = " ".join((self.tmp / "ssh" / "host_key.pub").read_text().split()[:2])
        self.known_hosts.write_text(f"{self.login_address} {host_key}\n")
        (self.tmp / "ssh" / "sshd_config").write_text(_sshd_config(self))

    def _start_munge(self) -> None:
        for sub, mode in (("munge", 0o700), ("munge-run", 0o755)):
            (self.tmp / sub).mkdir(mode=mode)
            shutil.chown(self.tmp / sub, "munge", "munge")
        as_munge = ["setpriv", "--reuid=munge", "--regid=munge", "--init-groups"]
        key = self.tmp / "munge" / "munge.key"
        subprocess.run([*as_munge, "mungekey", "-c", "-k", str(key)], check=True, capture_output=True)
        self._spawn([*as_munge, "munged", "-F", f"--socket={self.munge_socket}", f"--key-file={key}",
                     f"--pid-file={self.tmp / 'munge-run' / 'munged.pid'}",
                     f"--log-file={self.tmp / 'munge' / 'munged.log'}",
                     f"--seed-file={self.tmp / 'munge' / 'munged.seed'}"], "munged.log")
        self._wait(lambda: self.munge_socket.exists(), "munged's socket", "munged.log")

    def _in_ns(self, ns: str, hostname: str, argv: list[str], pid_ns: bool = False,
               binds: tuple[tuple[str, str], ...] = ()) -> list[str]:
        """argv run in netns `ns` with its own hostname, /etc/hosts and /sys (cgroups kept), and
        each (source, target) of `binds` mounted there."""
        mnt = self.tmp / "mnt" / ns.rsplit("-", 1)[1]
        script = ('mount --bind "$2" /etc/hosts && mount --rbind /sys/fs/cgroup "$1" && '
                  'mount -t sysfs sysfs /sys && mount --move "$1" /sys/fs/cgroup && hostname "$3" && '
                  + "".join(f"mount --bind {shlex.quote(a)} {shlex.quote(b)} && " for a, b in binds)
                  + 'shift 3 && exec "$@"')
        isolate = ["--pid", "--fork", "--kill-child", "--mount-proc"] if pid_ns else []
        return ["nsenter", f"--net=/run/netns/{ns}", "--", "unshare", "--uts", "--mount", "--propagation",
                "private", *isolate, "--", "sh", "-ec", script, "sh", str(mnt), str(self.tmp / "etc" / "hosts"),
                hostname, *argv]

    def _start(self, name: str, argv: list[str]) -> None:
        ns = self.netns("ctl" if name == CTL_HOST else name)
        self._spawn(self._in_ns(ns, name, argv), f"{name}.out")

    def _start_login(self) -> None:
        """sshd in the controller's network namespace, in a PID namespace of its own."""
        os.makedirs("/run/sshd", exist_ok=True)
        argv = ["/usr/sbin/sshd", "-D", "-e", "-f", str(self.tmp / "ssh" / "sshd_config")]
        # The login node is a machine of its own: this one's shell start-up files (a pyenv block
        # whose rehash lock every login on this box shares) are not its.
        home = Path.home()
        binds = tuple(("/dev/null", str(home / f)) for f in (".bashrc", ".profile", ".bash_profile", ".bash_login")
                      if (home / f).is_file())
        # A python only the login node has (an empty, non-executable file on the nodes): what a
        # venv on the login node's local disk looks like to the compute nodes.
        self.login_only_python.parent.mkdir()
        self.login_only_python.touch(mode=0o644)
        binds += ((os.path.realpath(self.python), str(self.login_only_python)),)
        self._spawn(self._in_ns(self.netns("ctl"), LOGIN_HOST, argv, pid_ns=True, binds=binds), "sshd.log")
        self._wait(lambda: _accepts(self.login_address, 22), "the login node's sshd", "sshd.log")

    def _spawn(self, argv: list[str], log: str) -> None:
        with open(self.tmp / "log" / log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True, env=self.env)
        self._procs.append(proc)
        self._ledger.record("pids", [proc.pid, procfs.start_time(proc.pid)])

    def _wait(self, ready, what: str, log: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready():
            dead = [p.args for p in self._procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise ClusterError(f"slurm test cluster: no {what} ({'exited: ' + str(dead[0]) if dead else 'timeout'})"
                                   f": {_tail(self.tmp / 'log' / log)}")
            time.sleep(0.1)

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Cancel the jobs, stop the daemons, delete namespaces, links and files; twice is fine."""
        if self._closed:
            return
        self._closed = True
        if self.conf.exists():
            try:
                jobs = self.active_jobs()
                if jobs:
                    self.client("scancel", *jobs, timeout=10)
                    deadline = time.monotonic() + 10
                    while self.active_jobs() and time.monotonic() < deadline:
                        time.sleep(0.1)
            except (OSError, subprocess.SubprocessError):
                pass  # the controller is gone: the sweep below ends what is left
        # A login shell killed halfway through `pyenv rehash` (a .bashrc may run it) leaves pyenv's
        # lock behind, and every later login on this machine then waits for it (tests/cluster.py).
        rehashing = [p for p in procfs.pids_in_netns(self.netns("ctl")) if b"pyenv-rehash" in procfs.cmdline(p)]
        errors = self._ledger.undo()
        if rehashing:
            _rehash_lock().unlink(missing_ok=True)
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if errors:
            raise ClusterError("slurm test cluster teardown left things behind:\n" + "\n".join(errors))


def start_slurm() -> Slurm:
    """Bring a cluster up; on failure, undo what was made and re-raise."""
    cluster = Slurm()
    try:
        cluster.bring_up()
    except BaseException:
        cluster.close()
        raise
    return cluster


def _slurm_conf(c: Slurm) -> str:
    tmp = c.tmp
    nodes = "\n".join(f"NodeName={n} NodeAddr={c.address(n)}" for n in NODES)
    return f"""# generated by tests/slurm_cluster.py
ClusterName={c.tag}
SlurmctldHost={CTL_HOST}({c.address(CTL_HOST)})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={c.munge_socket}
StateSaveLocation={tmp}/ctld
SlurmctldPidFile={tmp}/ctld/slurmctld.pid
SlurmctldLogFile={tmp}/log/slurmctld.log
SlurmdPidFile={tmp}/spool/slurmd-%n.pid
SlurmdSpoolDir={tmp}/spool/%n
SlurmdLogFile={tmp}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={tmp}/log/jobcomp.log
MinJobAge=300
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=5
NodeName=DEFAULT CPUs=2 Sockets=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=1000 State=UNKNOWN
{nodes}
PartitionName={PARTITION} Nodes={",".join(NODES)} Default=YES MaxTime=30 State=UP
"""


def _sshd_config(c: Slurm) -> str:
    ssh = c.tmp / "ssh"
    return "\n".join([
        f"ListenAddress {c.login_address}:22", f"HostKey {ssh}/host_key", f"AuthorizedKeysFile {ssh}/authorized_keys",
        f"PidFile {ssh}/sshd.pid", "PermitRootLogin prohibit-password", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "PrintMotd no",
        "MaxStartups 100:30:200",
        f"SetEnv SLURM_CONF={c.conf}", ""])


def _free_slot() -> int:
    """S with 10.218.S.0/24 in use nowhere on this machine (under the cluster lock)."""
    text = _ip("-4", "route", "show", "table", "all") + _ip("-4", "-o", "addr")
    used = {int(s) for s in re.findall(r"\b10\.218\.(\d+)\.", text)}
    for path in _STATE_DIR.glob("dsl*.json"):
        ledger = _Ledger.load(path)
        if ledger is not None and ledger.data.get("slot") is not None:
            used.add(ledger.data["slot"])
    return next(s for s in range(256) if s not in used)


def _cleanup_stray() -> None:
    """Namespaces and links named dsl<pid>- whose session died before its ledger named them."""
    for kind, args in (("netns", ("netns", "list")), ("links", ("-o", "link"))):
        out = subprocess.run(["ip", *args], capture_output=True, text=True).stdout
        for line in out.splitlines():
            name = (line.split()[0] if kind == "netns" else line.split(":")[1].strip()).split("@")[0]
            match = _STALE.match(name)
            if match and not procfs.alive(int(match[1]), None):
                _Ledger(None, "", None, {kind: [name]}).undo()


def _accepts(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=1).close()
        return True
    except OSError:
        return False

