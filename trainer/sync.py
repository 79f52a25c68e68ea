"""Ranks agree on the data: all train on MNIST, or all on the generated fallback, never a mix.

Each rank tries its host's MNIST, then the outcomes are all-gathered: if any rank failed, either
every rank errors out (``--fallback none``) or every rank switches to the generated digits, which
are byte-identical on all hosts.  Last, the ranks compare fingerprints of what they loaded, so two
hosts with different copies of "MNIST" are caught before training.
"""

import torch.distributed as dist

from trainer.data import read_generated, read_mnist
from trainer.errors import DataError
from trainer.log import emit


def _gather(value):
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def _first_failure(rank, outcomes):
    mine = outcomes[rank]
    if mine is not None:
        return mine
    failed = next(r for r, reason in enumerate(outcomes) if reason is not None)
    return f"rank {failed}: {outcomes[failed]}"


def agree_on_data(config, placement):
    """(RawData, fingerprint) that every rank shares; raises DataError otherwise."""
    generated = (config.data, config.seed, config.generated_train, config.generated_test)
    if config.dataset == "generated":
        raw = read_generated(*generated)
    else:
        raw, failure = None, None
        try:
            raw = read_mnist(config.data, config.download, config.timeout)
        except DataError as exc:
            failure = str(exc)
        outcomes = _gather(failure)
        if any(reason is not None for reason in outcomes):
            reason = _first_failure(placement.rank, outcomes)
            if config.fallback == "none":
                raise DataError(reason)
            if placement.local_rank == 0:
                emit("fallback", dataset="generated", reason=reason)
            raw = read_generated(*generated)
    fingerprint = raw.fingerprint()
    seen = _gather((raw.name, fingerprint))
    if len(set(seen)) > 1:
        detail = ", ".join(f"rank {r} {name}/{fp}" for r, (name, fp) in enumerate(seen))
        raise DataError(f"ranks loaded different data ({detail}); give every host the same copy")
    return raw, fingerprint
