"""Ports for tests that listen or connect on this machine."""

from __future__ import annotations

import socket


def ephemeral_port(address: str = "127.0.0.1") -> int:
    """A TCP port the kernel just handed out on ``address``: free now, nothing listens on it.

    Not e2e.free_port, which counts through a fixed range so that no two distctl runs of one
    session share a rendezvous port."""
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]
