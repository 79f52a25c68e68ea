"""The training loop: per-epoch shards, steps, evaluation, and where a stop lands.

Sharding is torch's own ``DistributedSampler`` (seeded, ``set_epoch`` every epoch, padded to
equal shards), turned into an index tensor once per epoch; a step indexes the pre-decoded
tensors with its slice.  Every rank runs the same number of steps per epoch, so the collective
stop checks line up.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data.distributed import DistributedSampler

if TYPE_CHECKING:
    from trainer.data import DeviceData
    from trainer.stopping import StopControl

EVAL_CHUNK = 4096


@dataclasses.dataclass
class Position:
    """Where training stands: epochs done, steps into the next epoch, and that epoch's partial loss."""

    epochs_done: int = 0
    step: int = 0
    loss_sum: float = 0.0
    samples: int = 0


@dataclasses.dataclass(frozen=True)
class EpochResult:
    stopped: bool  # all ranks agreed to stop inside the epoch, after `position.step` steps
    position: Position
    seconds: float
    samples_run: int


def epoch_shard(n: int, epoch_index: int, seed: int, rank: int, world_size: int,
                device: torch.device) -> torch.Tensor:
    """This rank's sample indices for one epoch, exactly as DistributedSampler yields them."""
    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch_index)
    return torch.tensor(list(sampler), dtype=torch.long, device=device)


def train_epoch(ddp: nn.Module, optimizer: torch.optim.Optimizer, data: DeviceData, shard: torch.Tensor,
                batch_size: int, position: Position, stop: StopControl) -> EpochResult:
    """Run the epoch's remaining steps from ``position.step``; stop early if all ranks agree."""
    criterion = nn.NLLLoss()
    loss_sum = torch.zeros((), dtype=torch.float64, device=shard.device)
    n_steps = (len(shard) + batch_size - 1) // batch_size
    step, samples_run = position.step, 0
    ddp.train()
    start = time.perf_counter()
    while step < n_steps:
        index = shard[step * batch_size:(step + 1) * batch_size]
        optimizer.zero_grad(set_to_none=False)
        loss = criterion(ddp(data.train_x.index_select(0, index)), data.train_y.index_select(0, index))
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * len(index)
        samples_run += len(index)
        step += 1
        if stop.after_step(step, step == n_steps):
            break
    epoch_loss = loss_sum.item()  # on CUDA this waits for the queued steps: time them all
    seconds = time.perf_counter() - start
    new = Position(position.epochs_done, step, position.loss_sum + epoch_loss, position.samples + samples_run)
    return EpochResult(step < n_steps, new, seconds, samples_run)


def evaluate(model: nn.Module, data: DeviceData, rank: int, world_size: int,
             stop_flag: float) -> tuple[float, bool]:
    """Accuracy on the whole test split (each rank a strided share) and the agreed stop flag."""
    x, y = data.test_x[rank::world_size], data.test_y[rank::world_size]
    correct = torch.zeros((), dtype=torch.float64, device=x.device)
    model.eval()
    with torch.no_grad():
        for begin in range(0, len(x), EVAL_CHUNK):
            pred = model(x[begin:begin + EVAL_CHUNK]).argmax(dim=1)
            correct += (pred == y[begin:begin + EVAL_CHUNK]).sum()
    model.train()
    totals = torch.stack([correct, torch.tensor(float(len(x)), dtype=torch.float64, device=x.device),
                          torch.tensor(stop_flag, dtype=torch.float64, device=x.device)])
    dist.all_reduce(totals)
    correct, count, stop = totals.tolist()
    return correct / count, stop > 0
