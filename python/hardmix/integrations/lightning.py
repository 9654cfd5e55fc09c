"""hardmix in PyTorch Lightning (``pip install hardmix[lightning]``).

:class:`ReplayCallback` builds the sampler when the Trainer sets up (in every
process, after the process group exists), refuses Trainer settings that would
give wrong batches, and carries the sampler's state in the Trainer's
checkpoints, so ``fit(ckpt_path=...)`` resumes mid-epoch or at an epoch's end
with the batches an uninterrupted run would have had::

    replay = ReplayCallback(lambda: hardmix.ReplaySampler(len(train_set), batch_size=64, capacity=2048))

    class Model(L.LightningModule):
        def train_dataloader(self):
            return DataLoader(hardmix.WithIndex(train_set), batch_sampler=replay.sampler, num_workers=2)

        def training_step(self, batch, batch_idx):
            idx, x, y = batch
            logits = self(x)
            losses = F.cross_entropy(logits, y, reduction="none")
            replay.sampler.update(idx, losses.detach(), logits=logits.detach(), targets=y)
            return losses.mean()

    trainer = L.Trainer(callbacks=[replay], use_distributed_sampler=False)

Lightning calls the sampler's ``set_epoch`` itself (through
``batch_sampler.sampler``); the loop does not. The replay lag is measured at
the first update (Lightning fetches ahead of the step: the measurement covers
it).
"""

from __future__ import annotations

from typing import Any, Callable, Union

import lightning.pytorch as pl

from ..sampler import ReplaySampler

SamplerOrFactory = Union[ReplaySampler, Callable[[], ReplaySampler]]


class ReplayCallback(pl.Callback):
    """Holds a :class:`hardmix.ReplaySampler`, or a function that builds one
    (called once, at the Trainer's ``setup`` for fitting: under DDP the
    process group exists then, so the sampler splits the data by rank).

    At setup it raises ``ValueError`` for a Trainer with several processes and
    ``use_distributed_sampler=True`` (Lightning would rebuild the batch
    sampler around a DistributedSampler), and for a sampler built for another
    number of processes or another rank. Its ``state_dict`` is the sampler's
    (every rank's, under DDP), saved with every checkpoint and restored by
    ``fit(ckpt_path=...)``.
    """

    def __init__(self, sampler: SamplerOrFactory):
        if isinstance(sampler, ReplaySampler):
            self._sampler, self._factory = sampler, None
        elif callable(sampler):
            self._sampler, self._factory = None, sampler
        else:
            raise TypeError(f"ReplayCallback: sampler must be a ReplaySampler or a function that returns one, "
                            f"got {type(sampler).__name__}")

    @property
    def sampler(self) -> ReplaySampler:
        """The sampler (built at the Trainer's setup when given as a function)."""
        if self._sampler is None:
            raise RuntimeError("ReplayCallback.sampler: not built yet; the Trainer builds it at setup(), before "
                               "it asks for the train dataloader")
        return self._sampler

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self._sampler is None:
            built = self._factory()
            if not isinstance(built, ReplaySampler):
                raise TypeError(f"ReplayCallback: the sampler function returned {type(built).__name__}, "
                                f"not a ReplaySampler")
            self._sampler = built
        s, world, rank = self._sampler, trainer.world_size, trainer.global_rank
        if world > 1 and getattr(trainer._accelerator_connector, "use_distributed_sampler", False):
            raise ValueError("ReplayCallback: Trainer(use_distributed_sampler=True) with several processes would "
                             "rebuild the ReplaySampler around a DistributedSampler; it splits the fresh data "
                             "across ranks itself: pass Trainer(use_distributed_sampler=False)")
        if (s.num_replicas, s.rank) != (world, rank):
            raise ValueError(f"ReplayCallback: the sampler was built for {s.num_replicas} process(es) as rank "
                             f"{s.rank}, and this Trainer runs {world} as rank {rank}: give ReplayCallback a "
                             f"function that builds the sampler (it is called at setup, after the process "
                             f"group exists)")

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state; with several processes, every rank's,
        gathered to rank 0 (which alone writes the checkpoint): a collective,
        which Lightning calls on every rank."""
        s = self._sampler
        if s is None:
            return {}
        state = s.state_dict()
        if s.num_replicas == 1:
            return {"sampler": state}
        import torch.distributed as dist

        states = [None] * s.num_replicas if s.rank == 0 else None
        dist.gather_object(state, states, dst=0)
        return {"samplers": states} if s.rank == 0 else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        s = self.sampler
        if "samplers" in state_dict:
            states = state_dict["samplers"]
            if len(states) != s.num_replicas:
                raise ValueError(f"ReplayCallback: the checkpoint holds {len(states)} ranks' sampler states, and "
                                 f"this run has {s.num_replicas} ranks")
            s.load_state_dict(states[s.rank])
        elif "sampler" in state_dict:
            s.load_state_dict(state_dict["sampler"])
