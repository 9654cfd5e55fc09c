"""hardmix in the Hugging Face Trainer (``pip install hardmix[transformers]``).

:class:`ReplayTrainer` is a ``transformers.Trainer`` that trains on a
:class:`hardmix.ReplaySampler`'s batches::

    trainer = ReplayTrainer(model=model, args=args, train_dataset=train_set,
                            replay={"capacity": 4096, "replay_fraction": 0.5})
    trainer.train()                                   # or train(resume_from_checkpoint=True)

It builds the sampler (batch size ``per_device_train_batch_size``, seed
``args.seed``, each process its part of the data) and the training loader,
computes per-example losses in ``compute_loss`` and reports them with
``update()`` (every micro-batch of a gradient-accumulation step is a batch),
saves each process's sampler state in every checkpoint and restores it with
``resume_from_checkpoint``, so a resumed run trains on the batches of an
uninterrupted one. It turns off the Trainer's data skip
(``ignore_data_skip=True``: the sampler resumes mid-epoch from its own state)
and makes every epoch a whole number of accumulation steps (``epoch_length``
rounded up to a multiple of ``gradient_accumulation_steps``).

The default per-example loss is the cross-entropy of ``logits`` [B, C]
against ``labels`` [B] (classification; logits and labels also go to
``update()``). For any other model pass ``per_example_loss(outputs, inputs)
-> losses [B]``.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import torch
import torch.nn.functional as F
import transformers
from torch.utils.data import DataLoader, Dataset

from ..sampler import ReplaySampler
from . import save_state_file, state_file

INDEX_KEY = "hardmix_index"


class _Indexed(Dataset):
    """Each item of a dataset of dicts, with its index under ``INDEX_KEY``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        if not isinstance(item, dict):
            raise TypeError(f"ReplayTrainer: dataset items must be dicts (as the Trainer's collators expect), "
                            f"got {type(item).__name__}")
        return {**item, INDEX_KEY: i}


class _IndexedCollator:
    """The Trainer's collator on the items without their index, then the index back as int64 [B]."""

    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, features: list[dict]) -> dict:
        idx = torch.tensor([f[INDEX_KEY] for f in features], dtype=torch.int64)
        batch = self.collate([{k: v for k, v in f.items() if k != INDEX_KEY} for f in features])
        batch[INDEX_KEY] = idx
        return batch


def classification_losses(outputs, inputs: dict) -> torch.Tensor:
    """Per-example cross-entropy of ``outputs["logits"]`` [B, C] against ``inputs["labels"]`` [B]."""
    logits, labels = outputs["logits"], inputs.get("labels")
    if labels is None or logits.dim() != 2 or labels.dim() != 1:
        raise ValueError(f"ReplayTrainer: the default per-example loss needs logits [B, C] and labels [B], got "
                         f"logits {list(logits.shape)} and labels "
                         f"{None if labels is None else list(labels.shape)}: pass per_example_loss")
    return F.cross_entropy(logits.float(), labels, reduction="none")


class ReplayTrainer(transformers.Trainer):
    """A ``Trainer`` whose training batches come from a ReplaySampler.

    Args:
        replay: the ReplaySampler's keyword arguments (``capacity`` at
            least); ``num_examples``, ``batch_size``, ``seed``,
            ``num_replicas`` and ``rank`` come from the Trainer.
        per_example_loss: ``(outputs, inputs) -> losses [B]`` (default:
            :func:`classification_losses`).

    Every other argument is ``transformers.Trainer``'s.
    """

    def __init__(self, *args, replay: dict[str, Any], per_example_loss: Callable | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(replay, dict) or "capacity" not in replay:
            raise ValueError(f"ReplayTrainer: replay must be a dict of ReplaySampler arguments with 'capacity', "
                             f"got {replay!r}")
        for k in ("num_examples", "batch_size", "seed", "num_replicas", "rank"):
            if k in replay:
                raise ValueError(f"ReplayTrainer: replay[{k!r}] comes from the Trainer's arguments")
        self.args.ignore_data_skip = True  # (the sampler resumes mid-epoch itself)
        self.model_accepts_loss_kwargs = False  # (the loss is the mean over the batch: the Trainer scales it)
        self._replay_args = dict(replay)
        self._per_example_loss = per_example_loss or classification_losses
        self.replay_sampler: ReplaySampler | None = None

    def _build_sampler(self, n: int) -> ReplaySampler:
        args = self.args
        common = dict(num_examples=n, batch_size=self._train_batch_size, seed=args.seed,
                      num_replicas=args.world_size, rank=args.process_index)
        sampler = ReplaySampler(**common, **self._replay_args)
        ga = args.gradient_accumulation_steps
        if ga > 1 and "epoch_length" not in self._replay_args and len(sampler) % ga:
            length = math.ceil(len(sampler) / ga) * ga
            sampler = ReplaySampler(**common, **{**self._replay_args, "epoch_length": length})
        return sampler

    def get_train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise ValueError("ReplayTrainer: training requires a train_dataset")
        dataset, collate = self.train_dataset, self.data_collator
        try:
            import datasets
        except ImportError:
            datasets = None
        if datasets is not None and isinstance(dataset, datasets.Dataset):
            dataset = self._remove_unused_columns(dataset, description="training")
        else:
            collate = self._get_collator_with_removed_columns(collate, description="training")
        if self.replay_sampler is None:
            self.replay_sampler = self._build_sampler(len(dataset))
        args = self.args
        workers = args.dataloader_num_workers
        # Not prepared by the Accelerator: it would wrap the batch sampler in a BatchSamplerShard (the
        # sampler splits the data by rank itself); the Trainer moves each batch to the device.
        return DataLoader(_Indexed(dataset), batch_sampler=self.replay_sampler, collate_fn=_IndexedCollator(collate),
                          num_workers=workers, pin_memory=args.dataloader_pin_memory,
                          persistent_workers=args.dataloader_persistent_workers and workers > 0,
                          prefetch_factor=args.dataloader_prefetch_factor if workers > 0 else None)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        idx = inputs.pop(INDEX_KEY, None)
        outputs = model(**inputs)
        losses = self._per_example_loss(outputs, inputs)
        if idx is not None and model.training:
            logits, labels = outputs["logits"], inputs.get("labels")
            classify = logits.dim() == 2 and labels is not None and labels.dim() == 1
            self.replay_sampler.update(idx, losses.detach(), logits=logits.detach() if classify else None,
                                       targets=labels if classify else None)
        loss = losses.mean()
        return (loss, outputs) if return_outputs else loss

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        if self.replay_sampler is not None:
            save_state_file(self.replay_sampler, state_file(output_dir, self.args.process_index))

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint,
                             trial):
        if resume_from_checkpoint is not None:  # (checked before the Trainer's state changes)
            source = state_file(resume_from_checkpoint, self.args.process_index)
            if not os.path.isfile(source):
                raise FileNotFoundError(f"ReplayTrainer: no sampler state at {source}: the checkpoint was not "
                                        f"saved by a ReplayTrainer")
            self.replay_sampler.load_state_dict(torch.load(source, map_location="cpu", weights_only=True))
        return super()._init_training_state(max_steps, num_update_steps_per_epoch, num_train_epochs,
                                            resume_from_checkpoint, trial)
