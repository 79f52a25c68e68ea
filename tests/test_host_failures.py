"""A host that cannot be used is named with its cause, and nothing starts anywhere: a missing
key file, a refused or timed-out connection, an unknown name, a wrong key, a changed host key,
no python or no torch. The real `distctl` against the real SSH test cluster, as a user meets it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from e2e import distctl, recorded_runs
from support.known_hosts import entry, known_name, new_key
from support.reports import assert_clean, error_lines
from support.workdirs import exists_on, inventory, workdir_of

pytestmark = pytest.mark.cluster


def test_a_missing_identity_file_is_an_inventory_error_naming_its_line(cluster, tmp_path):
    inv = inventory(tmp_path, cluster, ["node1", "node2"], host_extra={"node2": {"identity_file": "/nonexistent/key"}})
    done = distctl("check", str(inv), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    line = next(i for i, text in enumerate(inv.read_text().splitlines(), 1) if "/nonexistent/key" in text)
    assert error_lines(done) == [f"distctl: error: {inv}:{line}: hosts[1] (node2): identity_file /nonexistent/key "
                                 "does not exist"]


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
