"""Where this rank sits (:class:`Placement`) and joining the process group.

Placement comes from seed-style flags (``--init-method tcp://IP:PORT --rank R --world-size W``),
else from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT`` -> ``env://``), else a single rank on its own.

Why ``--timeout`` bounds every wait (no endless hangs when a peer dies):

* **gloo** (CPU): ``init_process_group`` waits at most ``--timeout`` for all ranks at rank 0's
  TCP store.  Each collective raises after ``--timeout``, and at once ("Connection closed by
  peer" / "Connection reset by peer") when a peer's socket closes because its process died.
  ``GLOO_SOCKET_IFNAME`` (one interface that reaches rank 0) is read by torch itself; we never
  set or override it.
* **nccl** (CUDA): collectives run asynchronously on the GPU, so a dead peer leaves the kernel
  spinning.  torch's watchdog (``TORCH_NCCL_ASYNC_ERROR_HANDLING``, default 3) would kill the
  process with SIGABRT after ``--timeout``; we additionally set ``TORCH_NCCL_BLOCKING_WAIT=1``
  (unless already set) so that ``wait()`` raises in the training thread after ``--timeout`` and
  the rank exits 1 with one ``error`` line instead.  Blocking wait takes precedence over async
  error handling in ProcessGroupNCCL (pytorch#47926).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import re
import socket
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from trainer.errors import PeerError, UsageError

if TYPE_CHECKING:
    from collections.abc import Mapping

    import torch

    from trainer.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Placement:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int | None  # None: counted after joining (ranks sharing this machine)
    init_method: str | None  # None: single rank with an in-process store


def _is_loopback(init_method: str) -> bool:
    host = urlparse(init_method).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env_int(environ: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    text = environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"environment variable {name}={text!r} is not an integer") from None


def resolve_placement(config: TrainConfig, environ: Mapping[str, str]) -> Placement:
    """Placement from flags, else torchrun's environment, else a lone rank (pure)."""
    if config.init_method is not None:
        all_local = _is_loopback(config.init_method)
        local_rank = config.local_rank
        if local_rank is None:
            local_rank = _env_int(environ, "LOCAL_RANK", config.rank if all_local else 0)
        local_world = config.local_world_size or _env_int(environ, "LOCAL_WORLD_SIZE")
        # parse_config: --init-method comes with --rank and --world-size; LOCAL_RANK's default is then an int
        return Placement(config.rank, config.world_size, local_rank, local_world,  # type: ignore[arg-type]
                         config.init_method)
    if "RANK" in environ or "WORLD_SIZE" in environ:
        rank, world = _env_int(environ, "RANK"), _env_int(environ, "WORLD_SIZE")
        if rank is None or world is None or not 0 <= rank < world:
            raise UsageError(f"torchrun environment RANK={rank} WORLD_SIZE={world} is inconsistent")
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not environ.get(name):
                raise UsageError(f"RANK is set but {name} is not; set it or pass --init-method")
        local_rank = config.local_rank if config.local_rank is not None else _env_int(environ, "LOCAL_RANK", 0)
        local_world = config.local_world_size or _env_int(environ, "LOCAL_WORLD_SIZE")
        return Placement(rank, world, local_rank, local_world, "env://")  # type: ignore[arg-type]  # an int: default 0
    return Placement(0, 1, 0, 1, None)


def choose_device(backend: str, local_rank: int) -> tuple[str, torch.device]:
    """(backend, device): nccl on cuda:<local rank> when CUDA is there (or asked), else gloo on cpu."""
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available() and dist.is_nccl_available()
    if backend == "nccl" and not cuda:
        raise UsageError("--backend nccl needs CUDA and an NCCL build of torch; use --backend gloo")
    if backend == "nccl" or (backend == "auto" and cuda):
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return "nccl", device
    return "gloo", torch.device("cpu")


def join_process_group(placement: Placement, backend: str, device: torch.device, timeout_s: float) -> None:
    """init_process_group bounded by ``timeout_s``; rendezvous failures become PeerError."""
    import torch.distributed as dist

    if backend == "nccl":
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
    timeout = datetime.timedelta(seconds=timeout_s)
    kwargs = dict(backend=backend, rank=placement.rank, world_size=placement.world_size,
                  timeout=timeout)
    if backend == "nccl":
        kwargs["device_id"] = device
    if placement.init_method is None:
        kwargs["store"] = dist.HashStore()
    else:
        kwargs["init_method"] = placement.init_method
    try:
        dist.init_process_group(**kwargs)
    except (RuntimeError, ValueError, OSError) as exc:  # DistError is a RuntimeError
        where = placement.init_method or "the local store"
        raise PeerError(f"could not join the process group at {where} within {timeout_s:g} s "
                        f"as rank {placement.rank}/{placement.world_size}: {first_line(exc)}") from exc


def ranks_on_this_machine() -> int:
    """How many ranks share this kernel (same boot id): they share its cores (collective)."""
    import torch.distributed as dist

    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            key = f.read().strip()
    except OSError:
        key = socket.gethostname()
    keys: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(keys, key)
    return keys.count(key)


def first_line(exc: BaseException) -> str:
    """The first informative line of an exception message, trimmed (torch's are long)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", text)  # gloo's source location
    text = text.split(" This is typically caused by")[0]
    return text if len(text) <= 300 else text[:297] + "..."
