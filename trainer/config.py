"""Command-line flags -> a frozen :class:`TrainConfig` (torch-free).

Defaults equal the seed scripts' (batch 64 per rank, lr 0.01, 100 epochs, data in ./data).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    init_method: str | None
    rank: int | None
    world_size: int | None
    local_rank: int | None
    local_world_size: int | None
    epochs: int
    batch_size: int
    lr: float
    seed: int
    data: str
    download: bool
    dataset: str
    fallback: str
    generated_train: int
    generated_test: int
    checkpoint_dir: str | None
    resume: bool
    keep_checkpoints: int
    backend: str
    timeout: float
    threads: int
    bucket_cap_mb: float
    stop_check_steps: int
    stop_after_epoch: int | None
    stop_after_step: int | None
    debug: bool


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def check(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return check


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows real defaults, not "(default: None)"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer",
        description="Train the seed's MNIST MLP as ONE data-parallel rank (gloo on CPU, nccl on CUDA).",
        formatter_class=_Help,
        epilog="Example (two shells, as the seed did): python -m trainer --init-method "
        "tcp://10.0.0.1:23456 --rank 0 --world-size 2   |   ... --rank 1 --world-size 2")
    g = p.add_argument_group("placement (flags; else torchrun's RANK/WORLD_SIZE/LOCAL_RANK/"
                             "MASTER_ADDR/MASTER_PORT; else a single local rank)")
    g.add_argument("--init-method", help="tcp://IP:PORT of rank 0 (rank 0 may use tcp://0.0.0.0:PORT)")
    g.add_argument("--rank", type=_non_negative)
    g.add_argument("--world-size", type=_positive(int))
    g.add_argument("--local-rank", type=_non_negative,
                   help="rank on this host (CUDA device); default: LOCAL_RANK, else the rank when "
                   "--init-method is a loopback address, else 0")
    g.add_argument("--local-world-size", type=_positive(int),
                   help="ranks on this host, for the default --threads; default: LOCAL_WORLD_SIZE, "
                   "else counted after joining")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=_non_negative, default=100, help="total, resumed ones included")
    t.add_argument("--batch-size", type=_positive(int), default=64, help="per rank")
    t.add_argument("--lr", type=_positive(float), default=0.01, help="SGD learning rate")
    t.add_argument("--seed", type=int, default=0, help="weights, shuffling and generated data")
    t.add_argument("--threads", type=_non_negative, default=0,
                   help="torch CPU threads per rank; 0 = usable cores / ranks sharing this machine")
    t.add_argument("--bucket-cap-mb", type=_positive(float), default=0.25,
                   help="DDP gradient bucket size; 0.25 gives the first layer's 0.8 MB gradient its own bucket")
    d = p.add_argument_group("data")
    d.add_argument("--data", default="./data", help="folder holding MNIST/raw (torchvision layout)")
    d.add_argument("--download", action="store_true", help="download MNIST if missing")
    d.add_argument("--dataset", choices=("mnist", "generated"), default="mnist")
    d.add_argument("--fallback", choices=("none", "generated"), default="none",
                   help="what to train on when MNIST cannot be loaded or downloaded")
    d.add_argument("--generated-train", type=_positive(int), default=12000)
    d.add_argument("--generated-test", type=_positive(int), default=2000)
    c = p.add_argument_group("checkpoints and stopping")
    c.add_argument("--checkpoint-dir",
                   help="the first rank of each host writes ckpt-EEEEEE-SSSSSS.pt and latest.pt here")
    c.add_argument("--resume", action="store_true",
                   help="continue from latest.pt in --checkpoint-dir (none there: start afresh)")
    c.add_argument("--keep-checkpoints", type=_positive(int), default=3, help="newest ckpt-*.pt kept")
    c.add_argument("--stop-check-steps", type=_positive(int), default=8,
                   help="steps between the collective checks for a stop request")
    c.add_argument("--stop-after-epoch", type=_positive(int),
                   help="stop as on SIGTERM after this epoch (tests, planned pauses)")
    c.add_argument("--stop-after-step", type=_positive(int),
                   help="request a stop as on SIGTERM after this many steps of this process")
    n = p.add_argument_group("process group")
    n.add_argument("--backend", choices=("auto", "nccl", "gloo"), default="auto")
    n.add_argument("--timeout", type=_positive(float), default=300.0,
                   help="seconds for rendezvous and for every collective")
    n.add_argument("--debug", action="store_true", help="tracebacks on errors")
    return p


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse flags; usage errors exit with code 2 through argparse."""
    parser = build_parser()
    args = parser.parse_args(argv)
    seed_style = [args.init_method, args.rank, args.world_size]
    if any(v is not None for v in seed_style) and any(v is None for v in seed_style):
        parser.error("--init-method, --rank and --world-size go together")
    if args.rank is not None and args.rank >= args.world_size:
        parser.error(f"--rank {args.rank} must be below --world-size {args.world_size}")
    if args.resume and not args.checkpoint_dir:
        parser.error("--resume needs --checkpoint-dir")
    return TrainConfig(**vars(args))
