"""One rank's whole run: join, load data, (resume), train, checkpoint, stop or finish."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from trainer import checkpoint, data as data_mod
from trainer.errors import CheckpointError, DivergedError, ExitCode
from trainer.log import emit
from trainer.loop import Position, epoch_shard, evaluate, train_epoch
from trainer.model import build_model, param_digest, wrap_ddp
from trainer.process_group import choose_device, first_line, join_process_group, ranks_on_this_machine
from trainer.stopping import StopControl
from trainer.sync import agree_on_data

if TYPE_CHECKING:
    from trainer.config import TrainConfig
    from trainer.loop import EpochResult
    from trainer.process_group import Placement


class Run:
    """State shared by the phases of one rank's run; ``phase`` names the current one for errors."""

    def __init__(self, config: TrainConfig, placement: Placement) -> None:
        self.config, self.placement = config, placement
        self.rank, self.world = placement.rank, placement.world_size
        self.phase = "startup"
        self.seed = config.seed

    def main(self) -> ExitCode:
        self.setup()
        position = self.resume()
        self.ddp = wrap_ddp(self.model, self.device, self.config.bucket_cap_mb,
                            self.data.train_x[:self.config.batch_size])
        self.stop = StopControl(self.device, self.config.stop_check_steps, self.config.stop_after_step)
        self.stop.install()
        stopped_at = self.train(position)
        code = self.report_stop(*stopped_at) if stopped_at else self.finish()
        dist.destroy_process_group()
        return code

    def setup(self) -> None:
        cfg, p = self.config, self.placement
        backend, self.device = choose_device(cfg.backend, p.local_rank)
        self.phase = "rendezvous"
        # Said before blocking in the rendezvous: a launcher can then tell a rank that never got
        # here (wedged host, slow import) from one waiting for its peers.
        emit("rendezvous", rank=self.rank, world_size=self.world, backend=backend)
        join_process_group(p, backend, self.device, cfg.timeout)
        emit("joined", rank=self.rank, local_rank=p.local_rank, world_size=self.world,
             backend=backend, device=str(self.device))
        # One intra-op thread per core: 2 ranks x 2 threads on 2 cores ran ~4x slower than 1 each.
        sharing = p.local_world_size or ranks_on_this_machine()
        torch.set_num_threads(cfg.threads or max(1, usable_cores() // sharing))
        self.phase = "loading data"
        started = time.perf_counter()
        raw, self.fingerprint = agree_on_data(cfg, p)
        self.data = data_mod.to_device(raw, self.device)
        emit("data", rank=self.rank, dataset=raw.name, train=len(raw.train_labels),
             test=len(raw.test_labels), fingerprint=self.fingerprint, threads=torch.get_num_threads(),
             seconds=round(time.perf_counter() - started, 3))
        self.model = build_model(cfg.seed, self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr)

    def resume(self) -> Position:
        """Continue from the newest checkpoint (if any): weights, optimizer, RNG, position."""
        if not self.config.resume:
            return Position()
        self.phase = "resuming"
        state = self.shared_checkpoint()
        if state is None:
            emit("resume", rank=self.rank, checkpoint="none", epoch=0, step=0)
            return Position()
        if state["fingerprint"] != self.fingerprint:
            raise CheckpointError(
                f"checkpoint {state['path']} was trained on data {state['dataset']}/{state['fingerprint']}, "
                f"this run has {self.data.name}/{self.fingerprint}; use another --checkpoint-dir")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        checkpoint.restore_rng(state["rng"])
        self.seed = state["seed"]  # the sampler's seed: same shards as before the stop
        fields = dict(rank=self.rank, checkpoint=state["path"], epoch=state["epoch"], step=state["step"])
        if state["step"] and (state["world_size"], state["batch_size"]) != (self.world, self.config.batch_size):
            emit("resume", **dict(fields, step=0),
                 note="world size or batch size changed: the interrupted epoch starts over")
            return Position(state["epoch"])
        emit("resume", **fields)
        partial = state["partial"][self.rank] if state["step"] else (0.0, 0)
        return Position(state["epoch"], state["step"], *partial)

    def shared_checkpoint(self) -> dict[str, Any] | None:
        """Rank 0 reads the newest checkpoint and broadcasts it: one reader, one truth, even where
        another host's copy is older (it was added to the run later, or its disk filled)."""
        box: list[dict[str, Any] | None] = [None]
        if self.rank == 0:
            try:
                # --resume needs --checkpoint-dir (parse_config)
                box = [checkpoint.load_latest(self.config.checkpoint_dir)]  # type: ignore[arg-type]
            except CheckpointError as exc:
                box = [{"error": str(exc)}]  # every rank reports it, not only rank 0
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None and "error" in box[0]:
            raise CheckpointError(f"rank 0: {box[0]['error']}")
        return box[0]

    def train(self, position: Position) -> tuple[int, int, str, str] | None:
        """Epoch loop; returns (epoch, step, reason, path) when stopped, else None."""
        cfg = self.config
        for epoch in range(position.epochs_done + 1, cfg.epochs + 1):
            self.phase = f"epoch {epoch}"
            shard = epoch_shard(len(self.data.train_y), epoch - 1, self.seed, self.rank, self.world,
                                self.device)
            result = train_epoch(self.ddp, self.optimizer, self.data, shard, cfg.batch_size, position, self.stop)
            if result.stopped:
                return self.stop_mid_epoch(epoch, result.position)
            self.accuracy, stop = evaluate(self.model, self.data, self.rank, self.world,
                                           self.stop.local_flag() or float(epoch == cfg.stop_after_epoch))
            self.emit_epoch(epoch, result)
            position = Position(epoch)
            path = self.save(position, partial=[])
            if stop:
                steps = (len(shard) + cfg.batch_size - 1) // cfg.batch_size
                reason = "stop-after-epoch" if epoch == cfg.stop_after_epoch else "another rank"
                return epoch, steps, self.stop.requested or reason, path
        return None

    def emit_epoch(self, epoch: int, result: EpochResult) -> None:
        fields = dict(epoch=epoch, rank=self.rank, loss=result.position.loss_sum / result.position.samples,
                      samples_per_s=result.samples_run / max(result.seconds, 1e-9))
        if self.rank == 0:  # the contract: rank 0's line carries the (global) test accuracy
            fields["test_accuracy"] = self.accuracy
        emit(None, **fields)
        # distctl's progress line (any program may print it): steps over the whole run
        per_rank = -(-len(self.data.train_y) // self.world)  # DistributedSampler pads to equal shards
        steps = -(-per_rank // self.config.batch_size)
        emit("distctl:", step=(epoch - 1) * steps + result.position.step, total=self.config.epochs * steps,
             epoch=epoch, loss=fields["loss"], samples_per_s=fields["samples_per_s"])

    def stop_mid_epoch(self, epoch: int, position: Position) -> tuple[int, int, str, str]:
        self.phase = f"stopping in epoch {epoch}"
        partial: list[Any] = [None] * self.world  # all_gather_object fills it
        dist.all_gather_object(partial, (position.loss_sum, position.samples))
        path = self.save(Position(epoch - 1, position.step), partial)
        return epoch, position.step, self.stop.requested or "another rank", path

    def save(self, position: Position, partial: list[tuple[float, int]]) -> str:
        """The first rank of every host writes the checkpoint there (replicas are identical, so no
        single host's loss loses it); returns its path (every rank knows it) or 'none'."""
        directory = self.config.checkpoint_dir
        if not directory:
            return "none"
        if self.placement.local_rank == 0:
            self.phase = "writing a checkpoint"
            state = {"epoch": position.epochs_done, "step": position.step, "model": self.model.state_dict(),
                     "optimizer": self.optimizer.state_dict(), "rng": checkpoint.capture_rng(),
                     "seed": self.seed, "world_size": self.world, "batch_size": self.config.batch_size,
                     "dataset": self.data.name, "fingerprint": self.fingerprint, "partial": partial}
            try:
                checkpoint.save_checkpoint(directory, state, self.config.keep_checkpoints)
            except OSError as exc:
                raise CheckpointError(f"cannot write a checkpoint in {directory}: {exc}") from exc
        return os.path.join(directory, checkpoint.checkpoint_name(position.epochs_done, position.step))

    def report_stop(self, epoch: int, step: int, reason: str, path: str) -> ExitCode:
        """Every rank says `stopped` once every host's checkpoint exists (the barrier). A peer
        that leaves during that barrier (killed after `distctl stop`'s grace, or dead for its own
        reasons) does not turn the agreed stop into a lost peer for a rank that was itself asked
        to stop, or that sees its host's checkpoint written: it stopped, and a resume starts from
        the newest checkpoint (written atomically: the previous one stays whole)."""
        self.phase = "stopping"
        fields = dict(rank=self.rank, epoch=epoch, step=step, checkpoint=path, reason=reason)
        try:
            dist.barrier()  # the checkpoint exists before any rank says so
        except RuntimeError as exc:  # torch's DistError and gloo's errors are RuntimeErrors
            written = path == "none" or os.path.exists(path)
            if not (written or self.stop.signalled):
                raise
            fields["note"] = (f"a peer left while stopping ({first_line(exc)}); "
                              + ("checkpoint written" if written else "this host's checkpoint is not there"))
        emit("stopped", **fields)
        return ExitCode.STOPPED

    def finish(self) -> ExitCode:
        self.phase = "final check"
        if not hasattr(self, "accuracy"):  # nothing left to train (resumed a finished run)
            self.accuracy, _ = evaluate(self.model, self.data, self.rank, self.world, 0.0)
        digest = param_digest(self.model)
        emit("done", rank=self.rank, param_sha256=digest, test_accuracy=self.accuracy)
        digests: list[Any] = [None] * self.world  # all_gather_object fills it
        dist.all_gather_object(digests, digest)
        if len(set(digests)) > 1:
            detail = ", ".join(f"rank {r} {d[:12]}" for r, d in enumerate(digests))
            raise DivergedError(f"replicas diverged: {detail}")
        return ExitCode.OK


def usable_cores() -> int:
    """The cores this process may run on (its affinity); macOS has no sched_getaffinity."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
