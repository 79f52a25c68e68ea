"""The seed's model (784-256-10 MLP, LogSoftmax), its DDP wrapper and a parameter digest."""

import hashlib

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def build_model(seed, device):
    """Same layers as the seed; weights seeded so every rank starts equal even before DDP's broadcast."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10), nn.LogSoftmax(dim=1))
    return model.to(device)


def wrap_ddp(model, device, bucket_cap_mb):
    """DDP tuned for this tiny model on few cores.

    ``bucket_cap_mb_list`` (not ``bucket_cap_mb``) so the first iteration already uses the small
    buckets: with ``bucket_cap_mb`` DDP starts with one bucket and re-buckets after step 1,
    which changes the all-reduce's summation order between an uninterrupted run and a resumed
    one (more than 2 ranks) and breaks exact resume.  A small cap puts the first layer's 0.8 MB
    gradient in its own bucket so the rest is reduced while its backward still runs.
    ``gradient_as_bucket_view`` saves one gradient copy per step.
    """
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, bucket_cap_mb_list=[bucket_cap_mb],
                                   gradient_as_bucket_view=True)


def param_digest(model):
    """sha256 over all parameters in definition order: bytes of the contiguous CPU tensors."""
    digest = hashlib.sha256()
    for param in model.parameters():
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
