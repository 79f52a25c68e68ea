"""Host keys and known_hosts lines as OpenSSH writes and reports them, for a test cluster's hosts."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cluster import Cluster


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
