"""The seed's training loop (shared/seed/multi-node-training.md), changed only to run on CPU.

Changes from the seed, all needed to run it here and to measure it, none to its loop:
gloo instead of nccl and no ``.cuda()``; rank, world size and init method from flags instead
of edited constants; the epoch count and data folder from flags; a timer around each epoch.
After training (outside the timing) it evaluates on the test split and digests the parameters
the way the trainer does.  Everything else is the seed's: per-sample ToTensor + Normalize
through a DataLoader (batch 64, no workers), a DistributedSampler without ``set_epoch``, no
DistributedDataParallel (so the ranks never exchange gradients), no seeding, torch's default
thread count.

Example (two shells)::

    python bench/seed_loop.py --init-method tcp://127.0.0.1:23456 --rank 0 --world-size 2 --data DIR
    python bench/seed_loop.py --init-method tcp://127.0.0.1:23456 --rank 1 --world-size 2 --data DIR

Prints the seed's ``Epoch: E, Train Loss: X`` lines, plus ``epoch=E rank=R loss=X
samples_per_s=Y`` and at the end ``result rank=R samples_per_s=<mean> test_accuracy=A
param_sha256=HEX``.
"""

import argparse
import hashlib
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.optim as optim
import torchvision.datasets as datasets
import torchvision.transforms as transforms
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler


def param_digest(model):
    digest = hashlib.sha256()
    for param in model.parameters():
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init-method", required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world-size", type=int, required=True)
    p.add_argument("--data", default="./data")
    p.add_argument("--epochs", type=int, default=100)
    args = p.parse_args()
    world_size, rank = args.world_size, args.rank

    # --- the seed, gloo/CPU ---
    dist.init_process_group(backend='gloo', init_method=args.init_method, world_size=world_size, rank=rank)
    model = nn.Sequential(nn.Linear(784, 256),
                          nn.ReLU(),
                          nn.Linear(256, 10),
                          nn.LogSoftmax(dim=1))
    criterion = nn.NLLLoss()
    optimizer = optim.SGD(model.parameters(), lr=0.01)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_dataset = datasets.MNIST(args.data, train=True, download=True, transform=transform)
    train_sampler = DistributedSampler(train_dataset, num_replicas=world_size, rank=rank)
    train_loader = DataLoader(train_dataset, batch_size=64, sampler=train_sampler)
    rates = []
    for epoch in range(args.epochs):
        started = time.perf_counter()  # (measurement)
        train_loss = 0.0
        for data, target in train_loader:
            optimizer.zero_grad()
            output = model(data.view(data.shape[0], -1))
            loss = criterion(output, target)
            loss.backward()
            optimizer.step()
            train_loss += loss.item() * data.size(0)
        seconds = time.perf_counter() - started  # (measurement)
        train_loss /= len(train_loader.sampler)
        print(f"Epoch: {epoch+1}, Train Loss: {train_loss}")
        rates.append(len(train_loader.sampler) / seconds)
        print(f"epoch={epoch + 1} rank={rank} loss={train_loss:.6g} samples_per_s={rates[-1]:.1f}", flush=True)

    # --- measurement only: held-out accuracy and a digest of this rank's parameters ---
    test_dataset = datasets.MNIST(args.data, train=False, transform=transform)
    correct = 0
    with torch.no_grad():
        for data, target in DataLoader(test_dataset, batch_size=1000):
            correct += (model(data.view(data.shape[0], -1)).argmax(dim=1) == target).sum().item()
    print(f"result rank={rank} samples_per_s={sum(rates) / len(rates):.1f} "
          f"test_accuracy={correct / len(test_dataset):.4f} param_sha256={param_digest(model)}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
