"""The versions discovery needs, as `key=value` lines: python=X.Y.Z, torch=V, torchvision=V
(empty when the package is not installed), loopback=NAME, the name of the loopback
interface (`lo` on Linux, `lo0` on macOS and the BSDs; empty when none is found), which
a single host gives gloo without the `ip` command, and time=SECONDS, this host's clock
(epoch seconds, microseconds): the workstation measures the host's clock offset from it.

Versions come from package metadata: importing torch costs seconds per host. The Python
version is printed first, so even an interpreter too old for importlib.metadata (< 3.8)
still reports it; for the same reason this program has no `from __future__` import.
"""

import socket
import sys
import time
from typing import List, Tuple

PACKAGES = ("torch", "torchvision")


def versions() -> List[Tuple[str, str]]:
    found = [("python", "%d.%d.%d" % sys.version_info[:3])]
    try:
        from importlib import metadata
    except ImportError:
        return found + [(name, "") for name in PACKAGES]
    for name in PACKAGES:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            found.append((name, ""))
    return found


def loopback() -> str:
    try:
        loops = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    except (AttributeError, OSError):  # a build without if_nameindex
        return ""
    return min(loops, key=len) if loops else ""  # lo before lowpan0


def main(argv: List[str]) -> int:
    now = "%.6f" % time.time()  # before the package lookups: they take most of the time here
    for key, value in versions() + [("loopback", loopback()), ("time", now)]:
        print("%s=%s" % (key, value))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
