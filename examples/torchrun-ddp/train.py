"""A small data-parallel training script written for torchrun; nothing in it knows distctl.

    torchrun --nproc-per-node 2 train.py        # two ranks on this machine
    distctl up inventory.yaml                   # the same script, launched by distctl
    python train.py                             # one process, no process group

It reads the environment torchrun's contract gives every rank (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) through `init_process_group()`'s env:// default, shards the data with
DistributedSampler and keeps the replicas in step with DistributedDataParallel.

The data set is made here from a seed (10 classes of noisy 28x28 patterns), so nothing is
downloaded. To train on a file instead, write one with `python train.py --write-data DIR` and
point --data (or distctl's job.data, which ranks see as $DISTCTL_DATA) at DIR.

Output: rank 0 prints one `epoch=N ...` line per epoch and saves `model.pt` in the working
directory; every rank ends with `done rank=R param_sha256=HEX`, equal on all ranks when the
replicas stayed in step.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

DATA_FILE = "dataset.pt"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="per rank")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--samples", type=int, default=8192, help="size of the generated data set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=os.environ.get("DISTCTL_DATA"),
                        help=f"folder holding {DATA_FILE} (default: $DISTCTL_DATA; unset: generated here)")
    parser.add_argument("--out", default="model.pt", help="where rank 0 saves the model")
    parser.add_argument("--write-data", metavar="DIR", help=f"write the generated set to DIR/{DATA_FILE} and exit")
    return parser.parse_args()


def generate(samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy copies of 10 fixed patterns: learnable in an epoch, identical on every rank."""
    g = torch.Generator().manual_seed(seed)
    patterns = (torch.rand(10, 28, 28, generator=g) > 0.7).float()
    labels = torch.randint(0, 10, (samples,), generator=g)
    images = patterns[labels] + 2.5 * torch.randn(samples, 28, 28, generator=g)
    return images.unsqueeze(1), labels


def load(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    if not args.data:
        return generate(args.samples, args.seed)
    path = Path(args.data) / DATA_FILE
    if not path.is_file():
        raise SystemExit(f"{path}: no such file; write one with: python train.py --write-data {args.data}")
    saved = torch.load(path, weights_only=True)
    return saved["images"], saved["labels"]


def digest(model: nn.Module) -> str:
    """sha256 over every parameter's bytes, in definition order."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(bytes(p.detach().cpu().clone(memory_format=torch.contiguous_format).untyped_storage()))
    return h.hexdigest()


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> float:
    model.eval()
    with torch.no_grad():
        predicted = model(images.to(device)).argmax(dim=1).cpu()
    model.train()
    return (predicted == labels).float().mean().item()


def main() -> None:
    args = parse_args()
    if args.write_data:
        Path(args.write_data).mkdir(parents=True, exist_ok=True)
        images, labels = generate(args.samples, args.seed)
        torch.save({"images": images, "labels": labels}, Path(args.write_data) / DATA_FILE)
        print(f"wrote {len(labels)} samples to {Path(args.write_data) / DATA_FILE}")
        return

    distributed = "RANK" in os.environ  # set by torchrun and by distctl
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")  # env://
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)

    images, labels = load(args)
    if rank == 0:
        source = Path(args.data) / DATA_FILE if args.data else "generated"
        print(f"data={source} samples={len(labels)} world_size={world}", flush=True)
    split = len(labels) * 4 // 5
    train_set = TensorDataset(images[:split], labels[:split])
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed,
                                 drop_last=True)  # the same number of steps on every rank
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler)

    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
    ddp = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None) \
        if distributed else model
    optimizer = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)

    for epoch in range(1, args.epochs + 1):
        sampler.set_epoch(epoch)  # a different shuffle each epoch, the same on every rank
        start, total, steps = time.perf_counter(), torch.zeros(1, device=device), 0
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(ddp(x.to(device)), y.to(device))
            loss.backward()  # DDP averages the gradients across ranks here
            optimizer.step()
            total += loss.detach()
            steps += 1
        if distributed:
            dist.all_reduce(total)  # mean loss over every rank's steps
        mean_loss = total.item() / (steps * world)
        if rank == 0:
            accuracy = evaluate(model, images[split:], labels[split:], device)
            rate = steps * args.batch_size * world / (time.perf_counter() - start)
            print(f"epoch={epoch} loss={mean_loss:.4f} test_accuracy={accuracy:.4f} samples_per_s={rate:.0f}",
                  flush=True)

    if rank == 0:
        torch.save({"model": model.state_dict(), "epochs": args.epochs}, args.out)
    print(f"done rank={rank} param_sha256={digest(model)}", flush=True)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
