"""Security and bad input: host keys, connection failures, shell injection, secrets.

Everything that crosses a network runs against the real SSH test cluster through the real
`distctl` command (or `orchestrator.remote.connect`), as a user would; the injection properties
also run the planner's scripts in a local sandbox with a recorder standing in for python.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cluster import SSHD, Cluster
from e2e import distctl, last_run_id, recorded_runs, run_pids, wait_for, write_inventory
from orchestrator import remote, shell
from orchestrator.errors import InventoryError
from orchestrator.inventory import Host, Ssh, parse_inventory
from orchestrator.plan import RUN_MARKER, Artifact, StepKind, plan_launch

cluster_test = pytest.mark.cluster  # the pure properties below run without a cluster

ACCEPT_HINT = "accept it with --accept-new-host-keys (or ssh.accept_new_host_keys: true)"


# ---------------------------------------------------------------- helpers


def inventory(tmp_path: Path, cluster: Cluster, hosts: list[str], *, ssh: dict | None = None,
              host_extra: dict | None = None, env: dict | None = None) -> Path:
    """An inventory with a fresh workdir per host (so a test can tell nothing was created)."""
    extra = {n: {"workdir": fresh_workdir(cluster, n), **(host_extra or {}).get(n, {})} for n in hosts}
    path = write_inventory(tmp_path / "inv.yaml", cluster, hosts, host_extra=extra, fallback="generated")
    data = yaml.safe_load(path.read_text())
    data["ssh"].update(ssh or {})
    data["ssh"] = {k: v for k, v in data["ssh"].items() if v is not None}
    if env:
        data["job"]["env"] = env
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def fresh_workdir(cluster: Cluster, name: str) -> str:
    return f"{cluster.host(name).workdir}/sec-{uuid.uuid4().hex[:8]}"


def workdir_of(inv: Path, name: str) -> str:
    return next(h for h in yaml.safe_load(inv.read_text())["hosts"] if h["name"] == name)["workdir"]


def public_key(cluster: Cluster, name: str) -> str:
    """`ssh-ed25519 BASE64` of the host's sshd."""
    pub = cluster.tmpdir / name / "ssh_host_ed25519_key.pub"
    return " ".join(pub.read_text().split()[:2])


def keygen_fingerprint(pub: Path) -> str:
    """What `ssh-keygen -lf` says the key's SHA256 fingerprint is."""
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


def known_name(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


def entry(cluster: Cluster, name: str, port: int | None = None) -> str:
    """The known_hosts line OpenSSH would write for the host."""
    h = cluster.host(name)
    return f"{known_name(h.address, port or h.port)} {public_key(cluster, name)}\n"


def new_key(folder: Path, name: str = "other") -> Path:
    """A freshly generated ed25519 key pair (private key path; `.pub` beside it)."""
    path = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    """stderr from the `distctl: error:` line on."""
    lines = done.stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("distctl: error:"))
    return lines[start:]


def assert_clean(done: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in done.stdout + done.stderr, done.stderr


def exists_on(cluster: Cluster, name: str, path: str) -> bool:
    return cluster.host(name).run(["test", "-e", path]).returncode == 0


# ---------------------------------------------------------------- host keys


@cluster_test
def test_unknown_host_keys_are_refused_one_line_per_host_with_fingerprint_and_remedies(cluster, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    inv = inventory(tmp_path, cluster, ["node1", "node2"], ssh={"known_hosts": str(known)})
    done = distctl("check", str(inv), cwd=tmp_path)
    assert done.returncode == 4, done.stderr
    assert_clean(done)
    expected = ["distctl: error: connect failed on 2 host(s):"]
    for name in ("node1", "node2"):
        h = cluster.host(name)
        fp = keygen_fingerprint(cluster.tmpdir / name / "ssh_host_ed25519_key.pub")
        scan = f"ssh-keyscan {h.address}" if h.port == 22 else f"ssh-keyscan -p {h.port} {h.address}"
        expected.append(f"  {name}: unknown host key for {known_name(h.address, h.port)} (ssh-ed25519 {fp}); "
                        f"{ACCEPT_HINT}, or add it with: {scan} >> {known}")
    assert error_lines(done) == expected
    assert known.read_text() == ""  # refusing records nothing

    # the ssh-keyscan remedy, run as printed, really makes the hosts known
    for line in expected[1:]:
        subprocess.run(line.split("or add it with: ", 1)[1], shell=True, check=True, capture_output=True)
    again = distctl("check", str(inv), cwd=tmp_path)
    assert again.returncode == 0, again.stderr


@cluster_test
@pytest.mark.parametrize("how", ["flag", "inventory"])
def test_accept_new_records_exactly_that_hosts_key_then_plain_check_passes(cluster, tmp_path, how):
    known = tmp_path / "known_hosts"
    # other hosts already known; the last line unterminated, as hand-edited files often are
    before = entry(cluster, "node2") + entry(cluster, "node3").rstrip("\n")
    known.write_text(before)
    ssh = {"known_hosts": str(known), "accept_new_host_keys": True if how == "inventory" else None}
    inv = inventory(tmp_path, cluster, ["node1"], ssh=ssh)
    flags = ["--accept-new-host-keys"] if how == "flag" else []
    first = distctl("check", *flags, str(inv), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert known.read_text() == before + "\n" + entry(cluster, "node1")

    if how == "inventory":
        data = yaml.safe_load(inv.read_text())
        del data["ssh"]["accept_new_host_keys"]
        inv.write_text(yaml.safe_dump(data))
    second = distctl("check", str(inv), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert known.read_text() == before + "\n" + entry(cluster, "node1")  # nothing recorded twice


@cluster_test
def test_a_changed_host_key_is_refused_even_with_accept_new(cluster, tmp_path):
    other = new_key(tmp_path)
    node1 = cluster.host("node1")
    known = tmp_path / "known_hosts"
    forged = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    known.write_text(f"{known_name(node1.address, node1.port)} {forged}\n")
    before = known.read_text()
    inv = inventory(tmp_path, cluster, ["node1"], ssh={"known_hosts": str(known)})
    done = distctl("check", "--accept-new-host-keys", str(inv), cwd=tmp_path)
    assert done.returncode == 4, done.stderr
    assert_clean(done)
    real_fp = keygen_fingerprint(cluster.tmpdir / "node1" / "ssh_host_ed25519_key.pub")
    name = known_name(node1.address, node1.port)
    assert error_lines(done) == [
        "distctl: error: connect failed on 1 host(s):",
        f"  node1: host key for {name} CHANGED: got ssh-ed25519 {real_fp}, known_hosts has ssh-ed25519 "
        f"{keygen_fingerprint(other.with_suffix('.pub'))}; refusing to connect. If the host was really "
        f"reinstalled: ssh-keygen -R {shlex.quote(name)} -f {known}",
    ]
    assert known.read_text() == before


@cluster_test
def test_hashed_known_hosts_entries_are_honoured(cluster, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(entry(cluster, "node1") + entry(cluster, "node2"))
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
    text = known.read_text()
    assert text.count("|1|") == 2 and cluster.host("node1").address not in text
    inv = inventory(tmp_path, cluster, ["node1", "node2"], ssh={"known_hosts": str(known)})
    done = distctl("check", str(inv), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert known.read_text() == text


@cluster_test
def test_cert_authority_revoked_and_garbage_lines_do_not_hide_the_other_entries(cluster, tmp_path):
    ca = new_key(tmp_path, "ca").with_suffix(".pub").read_text().split()
    stranger = new_key(tmp_path, "stranger").with_suffix(".pub").read_text().split()
    node1, node2 = entry(cluster, "node1").split(), entry(cluster, "node2").split()
    known = tmp_path / "known_hosts"
    known.write_text("".join([
        "# a comment\n", "\n",
        f"@cert-authority *.example.com {ca[0]} {ca[1]}\n",
        f"@revoked * {stranger[0]} {stranger[1]}\n",
        "this line is garbage\n",
        f"{node1[0]} ssh-ed25519 !!!not-base64!!!\n",
        f"{node1[0]} ssh-unknown-type AAAAB3NzaC1yc2EAAAADAQABAAABAQ\n",
        f"  {node1[0]}\t{node1[1]}   {node1[2]}  trailing comment\n",  # OpenSSH takes any whitespace
        f"{node2[0]},node2-alias {node2[1]} {node2[2]}\n",
    ]))
    inv = inventory(tmp_path, cluster, ["node1", "node2"], ssh={"known_hosts": str(known)})
    done = distctl("check", str(inv), cwd=tmp_path)
    assert done.returncode == 0, done.stderr


@cluster_test
def test_a_revoked_host_key_is_refused_even_when_also_listed_and_with_accept_new(cluster, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(entry(cluster, "node1") + f"@revoked * {public_key(cluster, 'node1')}\n")
    before = known.read_text()
    inv = inventory(tmp_path, cluster, ["node1"], ssh={"known_hosts": str(known)})
    done = distctl("check", "--accept-new-host-keys", str(inv), cwd=tmp_path)
    assert done.returncode == 4, done.stderr
    node1 = cluster.host("node1")
    fp = keygen_fingerprint(cluster.tmpdir / "node1" / "ssh_host_ed25519_key.pub")
    assert error_lines(done)[1] == (f"  node1: host key for {known_name(node1.address, node1.port)} "
                                    f"(ssh-ed25519 {fp}) is REVOKED in known_hosts; refusing to connect")
    assert known.read_text() == before


@cluster_test
def test_ssh_config_user_known_hosts_file_is_honoured_and_ssh_known_hosts_replaces_it(cluster, tmp_path):
    empty, configured = tmp_path / "empty_known_hosts", tmp_path / "configured_known_hosts"
    empty.write_text("")
    configured.write_text(entry(cluster, "node1"))
    config = tmp_path / "ssh_config"
    config.write_text(f"Host *\n    UserKnownHostsFile {configured}\n    GlobalKnownHostsFile /dev/null\n")
    inv = inventory(tmp_path, cluster, ["node1"], ssh={"known_hosts": None, "config": str(config)})
    done = distctl("check", str(inv), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # ssh.known_hosts acts like `ssh -o UserKnownHostsFile=`: it replaces ssh_config's files
    inv = inventory(tmp_path, cluster, ["node1"], ssh={"known_hosts": str(empty), "config": str(config)})
    replaced = distctl("check", str(inv), cwd=tmp_path)
    assert replaced.returncode == 4, replaced.stderr
    assert f">> {empty}" in replaced.stderr


@cluster_test
def test_a_missing_identity_file_is_an_inventory_error_naming_its_line(cluster, tmp_path):
    inv = inventory(tmp_path, cluster, ["node1", "node2"], host_extra={"node2": {"identity_file": "/nonexistent/key"}})
    done = distctl("check", str(inv), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    line = next(i for i, text in enumerate(inv.read_text().splitlines(), 1) if "/nonexistent/key" in text)
    assert error_lines(done) == [f"distctl: error: {inv}:{line}: hosts[1] (node2): identity_file /nonexistent/key "
                                 "does not exist"]


@cluster_test
def test_default_known_hosts_is_the_users_own_and_accept_new_creates_it(cluster, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    inv = inventory(tmp_path, cluster, ["node1"])
    data = yaml.safe_load(inv.read_text())
    del data["ssh"]["known_hosts"]
    inv.write_text(yaml.safe_dump(data))
    refused = distctl("check", str(inv), cwd=tmp_path, env={"HOME": str(home)})
    assert refused.returncode == 4, refused.stderr
    assert f">> {home}/.ssh/known_hosts" in refused.stderr  # expanded: a quoted ~ would not be
    done = distctl("check", "--accept-new-host-keys", str(inv), cwd=tmp_path, env={"HOME": str(home)})
    assert done.returncode == 0, done.stderr
    # recorded where ssh looks (hashed if the system's ssh_config says HashKnownHosts yes)
    node1 = cluster.host("node1")
    found = subprocess.run(["ssh-keygen", "-F", known_name(node1.address, node1.port), "-f",
                            str(home / ".ssh" / "known_hosts")], capture_output=True, text=True)
    assert found.returncode == 0 and public_key(cluster, "node1") in found.stdout, found.stdout
    assert len((home / ".ssh" / "known_hosts").read_text().splitlines()) == 1
    assert stat.S_IMODE((home / ".ssh").stat().st_mode) == 0o700


# ------------------------------------------------- a port other than 22: `[host]:port`


@pytest.fixture(scope="module")
def alt_port(cluster, tmp_path_factory):
    """node4's sshd started a second time on another port (same host key)."""
    host = cluster.host("node4")
    folder = tmp_path_factory.mktemp("alt-sshd")
    port = 2222 if cluster.isolated else _free_port(host.address)
    config = [line for line in (cluster.tmpdir / "node4" / "sshd_config").read_text().splitlines()
              if not line.startswith(("ListenAddress", "PidFile"))]
    (folder / "sshd_config").write_text("\n".join(
        [f"ListenAddress {host.address}:{port}", f"PidFile {folder}/sshd.pid", *config, ""]))
    with open(folder / "sshd.log", "wb") as log:
        proc = subprocess.Popen(host.argv([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")]),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    try:
        wait_for(lambda: _accepts(host.address, port) or proc.poll() is not None, 10, "the second sshd")
        assert proc.poll() is None, (folder / "sshd.log").read_text()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _accepts(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=1).close()
        return True
    except OSError:
        return False


@cluster_test
def test_a_non_22_port_uses_bracketed_known_hosts_entries_like_openssh(cluster, alt_port, tmp_path):
    node4 = cluster.host("node4")
    bracketed = f"[{node4.address}]:{alt_port}"
    known = tmp_path / "known_hosts"
    known.write_text(f"{node4.address} {public_key(cluster, 'node4')}\n")  # the key, but for port 22
    inv = inventory(tmp_path, cluster, ["node4"], ssh={"known_hosts": str(known)},
                    host_extra={"node4": {"port": alt_port}})

    refused = distctl("check", str(inv), cwd=tmp_path)
    assert refused.returncode == 4, refused.stderr
    assert f"  node4: unknown host key for {bracketed} (ssh-ed25519 " in refused.stderr
    assert f"or add it with: ssh-keyscan -p {alt_port} {node4.address} >> {known}" in refused.stderr

    accepted = distctl("check", "--accept-new-host-keys", str(inv), cwd=tmp_path)
    assert accepted.returncode == 0, accepted.stderr
    recorded = f"{bracketed} {public_key(cluster, 'node4')}\n"
    assert known.read_text() == f"{node4.address} {public_key(cluster, 'node4')}\n" + recorded
    again = distctl("check", str(inv), cwd=tmp_path)
    assert again.returncode == 0, again.stderr

    # OpenSSH itself, strict, trusts the file as distctl wrote it, plain and hashed
    strict = subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", str(cluster.key_path), "-o", f"UserKnownHostsFile={known}",
         "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
         "-p", str(alt_port), f"{cluster.user}@{node4.address}", "true"],
        capture_output=True, text=True, timeout=30)
    assert strict.returncode == 0, strict.stderr
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
    assert bracketed not in known.read_text()
    hashed = distctl("check", str(inv), cwd=tmp_path)
    assert hashed.returncode == 0, hashed.stderr

    # and the printed ssh-keyscan remedy writes the same form
    scanned = tmp_path / "scanned"
    subprocess.run(f"ssh-keyscan -p {alt_port} {node4.address} >> {scanned}", shell=True, check=True,
                   capture_output=True)
    assert scanned.read_text() == recorded


# ------------------------------------------------------------ jump hosts


@cluster_test
def test_jump_host_keys_are_checked_too(jump_cluster, tmp_path):
    bastion, node5 = jump_cluster.host("bastion"), jump_cluster.host("node5")
    config = tmp_path / "ssh_config"  # like the cluster's, minus its complete known_hosts
    config.write_text("\n".join([
        "Host bastion", f"    HostName {bastion.address}", f"    Port {bastion.port}",
        "Host node5", f"    HostName {node5.address}", f"    Port {node5.port}", "    ProxyJump bastion",
        "Host *", f"    User {jump_cluster.user}", f"    IdentityFile {jump_cluster.key_path}", ""]))
    known = tmp_path / "known_hosts"
    known.write_text(entry(jump_cluster, "node5"))
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump({
        "hosts": [{"name": "node5", "address": "node5", "python": jump_cluster.python, "slots": 1,
                   "workdir": node5.workdir}],
        "job": {"name": "jump", "fallback": "generated"},
        "ssh": {"known_hosts": str(known), "config": str(config)},
    }))
    fp = keygen_fingerprint(jump_cluster.tmpdir / "bastion" / "ssh_host_ed25519_key.pub")
    bastion_name = known_name(bastion.address, bastion.port)

    unknown = distctl("check", str(inv), cwd=tmp_path)
    assert unknown.returncode == 4, unknown.stderr
    assert error_lines(unknown)[1].startswith(
        f"  node5: unknown jump host key for {bastion_name} (ssh-ed25519 {fp}); {ACCEPT_HINT}")

    forged = " ".join(new_key(tmp_path).with_suffix(".pub").read_text().split()[:2])
    known.write_text(entry(jump_cluster, "node5") + f"{bastion_name} {forged}\n")
    changed = distctl("check", "--accept-new-host-keys", str(inv), cwd=tmp_path)
    assert changed.returncode == 4, changed.stderr
    assert error_lines(changed)[1].startswith(
        f"  node5: jump host key for {bastion_name} CHANGED: got ssh-ed25519 {fp}")

    known.write_text(entry(jump_cluster, "node5"))
    accepted = distctl("check", "--accept-new-host-keys", str(inv), cwd=tmp_path)
    assert accepted.returncode == 0, accepted.stderr
    assert known.read_text() == entry(jump_cluster, "node5") + entry(jump_cluster, "bastion")
    assert "node5: hostname node5" in accepted.stdout or not jump_cluster.isolated


# ---------------------------------------------------------------- connection failures


def _without_torch(tmp_path: Path) -> str:
    """An interpreter that has no torch: the system python3 if so, else a bare venv."""
    system = "/usr/bin/python3"
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
    if os.path.exists(system) and subprocess.run([system, "-c", probe]).returncode == 0:
        return system
    venv = tmp_path / "no-torch-venv"
    subprocess.run([system if os.path.exists(system) else "python3", "-m", "venv", "--without-pip",
                    str(venv)], check=True)
    return str(venv / "bin" / "python")


FAILURES = {
    # case: (exit code, step, expected line for node2 with {addr} {port} {python} {key})
    "refused": (3, "connect", "  node2: connection to {addr}:{port} refused (is sshd running?)"),
    "timeout": (3, "connect", "  node2: connection to {addr}:{port} timed out after 2 s"),
    "unresolvable": (3, "connect", "  node2: cannot resolve host name 'no-such-host.invalid'"),
    "wrong key": (3, "connect", "  node2: authentication failed for {user}@{addr}: Authentication failed."),
    "changed host key": (4, "connect", "  node2: host key for {name} CHANGED: got ssh-ed25519 "),
    "missing python": (5, "preflight", "  node2: python '/nonexistent/python3' not found "
                                       "(set 'python' for this host)"),
    "missing torch": (5, "preflight", "  node2: torch is not installed for {python} (python "),
}


@cluster_test
@pytest.mark.parametrize("case", list(FAILURES))
def test_a_failing_host_is_named_with_its_cause_and_nothing_starts_anywhere(cluster, tmp_path, case):
    node2 = cluster.host("node2")
    code, step, expected = FAILURES[case]
    values = {"addr": node2.address, "port": node2.port, "user": cluster.user,
              "name": known_name(node2.address, node2.port)}
    extra: dict = {}
    ssh: dict = {}
    known = tmp_path / "known_hosts"
    known.write_text(cluster.known_hosts.read_text())
    ssh["known_hosts"] = str(known)
    if case == "timeout":
        if not cluster.isolated:
            pytest.skip("needs the namespaced front net: an address on it that nobody has")
        values["addr"] = node2.address.rsplit(".", 1)[0] + ".250"
        extra, ssh["connect_timeout"] = {"address": values["addr"]}, 2
    elif case == "unresolvable":
        extra = {"address": "no-such-host.invalid"}
    elif case == "wrong key":
        extra = {"identity_file": str(new_key(tmp_path))}
    elif case == "changed host key":
        forged = " ".join(new_key(tmp_path).with_suffix(".pub").read_text().split()[:2])
        known.write_text(entry(cluster, "node1") + f"{values['name']} {forged}\n")
    elif case == "missing python":
        extra = {"python": "/nonexistent/python3"}
    elif case == "missing torch":
        values["python"] = _without_torch(tmp_path)
        extra = {"python": values["python"]}
    inv = inventory(tmp_path, cluster, ["node1", "node2"], ssh=ssh, host_extra={"node2": extra})
    if case == "refused":
        cluster.stop_sshd("node2")
    try:
        done = distctl("up", str(inv), cwd=tmp_path, timeout=120)
    finally:
        cluster.start_sshd("node2")
    assert done.returncode == code, done.stderr
    assert_clean(done)
    lines = error_lines(done)
    assert lines[0] == f"distctl: error: {step} failed on 1 host(s):"
    assert len(lines) == 2 and lines[1].startswith(expected.format(**values)), lines
    if expected.endswith("(python "):  # the rest names the version and how to install torch
        assert "torch is not installed" in lines[1] and "pip install" in lines[1]
    # nothing started on the healthy host, nothing recorded here
    assert not recorded_runs()
    assert not exists_on(cluster, "node1", workdir_of(inv, "node1"))
    assert not exists_on(cluster, "node2", workdir_of(inv, "node2"))


# ---------------------------------------------------------------- shell injection

# Stands in for python: records its argv and the environment variables named in RECORD_ENV;
# `-c` (distctl's host-side programs, e.g. the one that detaches ranks) goes to a real python.
RECORDER = """#!/usr/bin/python3 -S
import json, os, sys
if sys.argv[1:2] == ["-c"]:
    os.execv(sys.executable, [sys.executable] + sys.argv[1:])
out = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), "record.json")
names = os.environ.get("RECORD_ENV", "").split(",")
data = {"argv": sys.argv, "env": {n: os.environ.get(n) for n in names + ["%s"] if n}}
with open(out + ".tmp", "w") as f:
    json.dump(data, f)
os.rename(out + ".tmp", out)
""" % RUN_MARKER  # noqa: UP031 - the script's own braces would need doubling in an f-string

CANARY = f"/tmp/distctl-canary-{os.getpid()}"  # what any injected `touch` below would create
REL_CANARY = "DISTCTL_CANARY"  # the same, relative to whatever directory the shell is in
HOSTILE = ["'", '"', "\\", "$", "$(", ")", "`", ";", "|", "&", ">", "<", " ", "\t", "*", "?", "~", "#",
           "!", "{", "}", "[", "]", "=", "-", "--x", "$HOME", "${IFS}", "$((1+1))", "%s", "'\\''",
           "é", "日本", "🙂", "\u00a0", "\u2028", "\x01", "\x7f",
           f"$(touch {REL_CANARY})", f"`touch {REL_CANARY}`", f"; touch {REL_CANARY}", f"| touch {REL_CANARY} &"]


def _hostile(extra: list[str], exclude: str = "") -> st.SearchStrategy[str]:
    """Text built from shell metacharacters, injection fragments and arbitrary characters."""
    frag = st.sampled_from([f for f in HOSTILE + extra if not set(f) & set(exclude)])
    text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0" + exclude), max_size=6)
    return st.lists(frag | text, max_size=8).map("".join)


# A path component: single line, no "/" (a directory name); "." and ".." are not names.
component = _hostile([], exclude="/\r\n").filter(lambda s: s.strip() and s not in (".", ".."))
env_value = _hostile(["\n", "\r\n", f"\ntouch {CANARY}\n", f"$(touch {CANARY})", f"; touch {CANARY}"])
env_vars = st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True).map("T_".__add__),
                           env_value, min_size=1, max_size=3)
job_name = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
INJECTIONS = [(f"$(touch {REL_CANARY})", {"T_A": f"$(touch {CANARY})"}),
              (f"; touch {REL_CANARY}", {"T_A": f"; touch {CANARY}", "T_B": f"'; touch {CANARY}; '"}),
              (f"`touch {REL_CANARY}`", {"T_A": f"`touch {CANARY}`", "T_B": f"\"; touch {CANARY}; \""}),
              (f"' && touch {REL_CANARY} '", {"T_A": f"\ntouch {CANARY}\n", "T_B": f"x\\'; touch {CANARY} #"}),
              (f"a b\"c\\ $HOME * ~ | touch {REL_CANARY} &", {"T_A": "", "T_B": "\\"})]
FAKE_CODE = (Artifact("code", "0" * 64, "/nonexistent"),)


def _injection_examples(test):
    for path, env in INJECTIONS:
        test = example(path=path, pydir=path, env=env, job="j")(test)
    return test


def launch_plan(base: str, path: str, pydir: str, env: dict[str, str], job: str, **host):
    """Inventory text → parse_inventory → plan_launch, as `distctl up` does; and the recorder."""
    folder = Path(base, "py", pydir)
    folder.mkdir(parents=True, exist_ok=True)
    recorder = folder / "python"
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    all_env = {**env, "RECORD_ENV": ",".join(env)}
    text = yaml.safe_dump({"hosts": [{"name": "h1", "address": "h1", "slots": 1, "python": str(recorder),
                                      "workdir": f"{base}/work/{path}", "env": all_env, **host}],
                           "job": {"name": job}})
    inv = parse_inventory(text)
    assert {v.name: v.value for v in inv.hosts[0].env} == all_env  # the YAML round trip kept them
    run_id = f"{job}-20250101-000000-abcd"
    return plan_launch(inv, run_id, FAKE_CODE), folder / "record.json"


def steps_of(plan, kind: StepKind) -> str:
    return next(s.command for s in plan.steps if s.kind is kind)


def assert_recorded(record: Path, plan, env: dict[str, str]) -> None:
    data = json.loads(wait_for(lambda: record.exists() and record.read_text(), 30, "the recorder's output",
                               every=0.01))
    assert data["argv"] == list(plan.hosts[0].ranks[0].argv)
    assert data["env"] == {**env, RUN_MARKER: plan.run_id}


@settings(max_examples=60, deadline=None)
@given(path=component, pydir=component, env=env_vars, job=job_name)
@_injection_examples
def test_launch_scripts_pass_hostile_values_verbatim_in_a_local_sandbox(path, pydir, env, job):
    base = tempfile.mkdtemp(prefix="distctl-inj-")
    try:
        plan, record = launch_plan(base, path, pydir, env, job)
        hp = plan.hosts[0]
        sandbox = {"HOME": base, "PATH": os.environ["PATH"]}
        for kind, stdin in ((StepKind.PREPARE, shell.env_file(hp.env)), (StepKind.LAUNCH, "")):
            command = steps_of(plan, kind)
            Path(hp.code_dir).mkdir(parents=True, exist_ok=True)  # what the push step would have made
            parsed = subprocess.run(["sh", "-n", "-c", command], capture_output=True, text=True)
            assert parsed.returncode == 0, parsed.stderr
            done = subprocess.run(["sh", "-c", command], input=stdin.encode(), capture_output=True, cwd=base,
                                  env=sandbox, timeout=30)
            assert done.returncode == 0, done.stderr
        assert_recorded(record, plan, env)
        exit_file = Path(hp.rundir, "rank0.exit")  # the detached wrapper is done: nothing writes any more
        assert wait_for(lambda: exit_file.exists() and exit_file.read_text(), 30, "the rank's exit code",
                        every=0.01) == "0\n"
        assert sorted(p.name for p in Path(hp.rundir).iterdir()) == [
            "ckpt", "env", "format", "rank0.exit", "rank0.log", "rank0.pid", "work"]
        assert not os.path.exists(CANARY)
        assert not [p for p in Path(base).rglob(REL_CANARY)]
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def node1_conn(cluster):
    """One SSH connection to node1 through distctl's own remote module, kept for every example."""
    h = cluster.host("node1")
    conn = remote.connect(Host("node1", h.address, user=cluster.user, port=h.port,
                               identity_file=str(cluster.key_path)), Ssh(known_hosts=(str(cluster.known_hosts),)))
    yield conn
    conn.close()


@cluster_test
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=component, pydir=component, env=env_vars, job=job_name)
@_injection_examples
def test_hostile_values_reach_a_real_remote_rank_verbatim_over_ssh(cluster, node1_conn, path, pydir, env, job):
    node1 = cluster.host("node1")
    shared = tempfile.mkdtemp(prefix="distctl-inj-")  # /tmp is shared with the hosts; the workdir is not
    try:
        base = f"{node1.workdir}/inj-{uuid.uuid4().hex[:8]}"
        plan, record = launch_plan(shared, path, pydir, env, job, workdir=f"{base}/{path}")
        hp = plan.hosts[0]
        prepared = node1_conn.run(steps_of(plan, StepKind.PREPARE), stdin=shell.env_file(hp.env).encode(),
                                  timeout=30)
        assert prepared.exit_code == 0, prepared.stderr
        assert node1_conn.run(f"mkdir -p {shell.join([hp.code_dir])}").exit_code == 0  # as the push would
        launched = node1_conn.run(steps_of(plan, StepKind.LAUNCH), timeout=30)
        assert launched.exit_code == 0, launched.stderr
        assert_recorded(record, plan, env)
        assert not os.path.exists(CANARY)
        # inside the host: only our files in the run dir, no canary where a shell could have run
        look = ('i=0; while [ ! -e "$1/rank0.exit" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; '
                'cat "$1/rank0.exit"; ls -A "$1"; '
                'for d in "$HOME" "$2" "$3" "$1"; do [ -e "$d/$4" ] && echo "CANARY in $d"; done; true')
        seen = node1.run(["sh", "-c", look, "-", hp.rundir, base, hp.workdir, REL_CANARY], check=True).stdout
        assert seen.split() == ["0", "ckpt", "env", "format", "rank0.exit", "rank0.log", "rank0.pid", "work"], seen
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize("env, message", [
    ("{A-B: x}", "env name 'A-B' is not a valid variable name"),
    ('{A: "x\\0y"}', "must not contain a NUL byte"),
])
def test_values_the_shell_cannot_carry_are_rejected_at_load_time(env, message):
    text = f"hosts:\n  - name: h1\n    address: h1\n    env: {env}\n"
    with pytest.raises(InventoryError) as err:
        parse_inventory(text, "inv.yaml")
    assert str(err.value).startswith("inv.yaml:4: hosts[0] (h1): ") and message in str(err.value)


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


@cluster_test
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


@cluster_test
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
