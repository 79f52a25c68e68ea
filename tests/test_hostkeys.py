"""Host keys, as OpenSSH checks them: unknown, accepted, changed, hashed, revoked, on another
port than 22, and on jump hosts. Each runs the real `distctl` against the real SSH test cluster,
as a user would, and compares what it says and records with what OpenSSH itself does.
"""

from __future__ import annotations

import shlex
import socket
import stat
import subprocess

import pytest
import yaml
from cluster import SSHD
from e2e import distctl, wait_for
from support.known_hosts import entry, keygen_fingerprint, known_name, new_key, public_key
from support.net import ephemeral_port
from support.reports import assert_clean, error_lines
from support.workdirs import inventory

pytestmark = pytest.mark.cluster

ACCEPT_HINT = "accept it with --accept-new-host-keys (or ssh.accept_new_host_keys: true)"


# ---------------------------------------------------------------- host keys


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
    port = 2222 if cluster.isolated else ephemeral_port(host.address)
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


def _accepts(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=1).close()
        return True
    except OSError:
        return False


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
