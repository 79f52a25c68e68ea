"""Ranks agree on the data: all train on MNIST, or all on the generated fallback, never a mix.

Each rank tries its host's MNIST, then the outcomes are all-gathered: if any rank failed, either
every rank errors out (``--fallback none``) or every rank switches to the generated digits, which
are byte-identical on all hosts.  Last, the ranks compare fingerprints of what they loaded, so two
hosts with different copies of "MNIST" are caught before training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.distributed as dist

from trainer.data import read_generated, read_mnist
from trainer.errors import DataError
from trainer.log import emit

if TYPE_CHECKING:
    from trainer.config import TrainConfig
    from trainer.data import RawData
    from trainer.process_group import Placement


def _gather(value: object) -> list[Any]:
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def _first_failure(rank: int, outcomes: list[str | None]) -> str:
    mine = outcomes[rank]
    if mine is not None:
        return mine
    failed = next(r for r, reason in enumerate(outcomes) if reason is not None)
    return f"rank {failed}: {outcomes[failed]}"


def agree_on_data(config: TrainConfig, placement: Placement) -> tuple[RawData, str]:
    """(RawData, fingerprint) that every rank shares; raises DataError otherwise."""
    generated = (config.data, config.seed, config.generated_train, config.generated_test)
    raw: RawData  # set below on every path that does not raise DataError
    if config.dataset == "generated":
        raw = read_generated(*generated)
    else:
        failure: str | None
        # raw stays None only when read_mnist failed: then the fallback replaces it or DataError is raised
        raw, failure = None, None  # type: ignore[assignment]
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
