"""hardmix with Hugging Face Accelerate (``pip install hardmix[accelerate]``).

:func:`save_state` and :func:`load_state` wrap the Accelerator's: they add
each process's sampler state (``hardmix_sampler_<rank>.pt``, written
atomically) and, on load, set the prepared loader's epoch counter to the
restored sampler's epoch (the prepared loader calls ``set_epoch`` from its own
counter on every ``iter()``, which would otherwise restart at 0)::

    sampler = hardmix.ReplaySampler(len(train_set), batch_size=64, capacity=2048)
    loader = DataLoader(hardmix.WithIndex(train_set), batch_sampler=sampler)
    model, opt, loader = accelerator.prepare(model, opt, loader)      # one process
    start = 0
    if resume_dir:
        start = hardmix.integrations.accelerate.load_state(accelerator, resume_dir, sampler=sampler, loader=loader)
    for epoch in range(start, epochs):   # the loader calls set_epoch itself
        for idx, x, y in loader:
            ...
            sampler.update(idx, losses.detach(), logits=logits.detach(), targets=y)
            if time_to_save:
                hardmix.integrations.accelerate.save_state(accelerator, out_dir, sampler=sampler)

With several processes, leave the DataLoader out of ``prepare()`` (prepare
wraps its batch sampler in a ``BatchSamplerShard``, which the sampler refuses:
it splits the fresh data across ranks itself) and move batches to
``accelerator.device``. Do not use ``skip_first_batches``: the sampler's own
state resumes mid-epoch.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from ..sampler import ReplaySampler
from . import save_state_file, state_file


def _file(directory, accelerator) -> Path:
    return Path(state_file(directory, accelerator.process_index))


def _check(sampler) -> None:
    if not isinstance(sampler, ReplaySampler):
        raise TypeError(f"sampler must be a hardmix.ReplaySampler, got {type(sampler).__name__}")


def save_state(accelerator, output_dir: str | os.PathLike, *, sampler: ReplaySampler, **kwargs) -> str:
    """``accelerator.save_state(output_dir, **kwargs)``, then this process's
    sampler state beside it. Call it on every process, after ``update()``.
    Returns the directory."""
    _check(sampler)
    if output_dir is None:
        raise ValueError("save_state: output_dir must be given (the sampler's file goes there)")
    path = accelerator.save_state(output_dir, **kwargs) or output_dir
    os.makedirs(path, exist_ok=True)
    save_state_file(sampler, str(_file(path, accelerator)))
    return str(path)


def load_state(accelerator, input_dir: str | os.PathLike, *, sampler: ReplaySampler, loader=None,
               **kwargs) -> int:
    """``accelerator.load_state(input_dir, **kwargs)`` and the sampler's
    state. Returns the epoch to run next: the sampler's epoch, or the one
    after it when it was finished (a prepared loader does not count an
    iteration that yields nothing, so it must not be asked for it); with
    the prepared ``loader``, its epoch counter is set to it. If either load
    fails, the sampler is left as it was."""
    _check(sampler)
    if input_dir is None:
        raise ValueError("load_state: input_dir must be given (the sampler's file is there)")
    if loader is not None and not callable(getattr(loader, "set_epoch", None)):
        raise TypeError(f"load_state: loader must be the prepared loader (it has set_epoch), got "
                        f"{type(loader).__name__}; a loader left out of prepare() needs none")
    source = _file(input_dir, accelerator)
    if not source.is_file():
        raise FileNotFoundError(f"load_state: no sampler state at {source} (saved by "
                                f"hardmix.integrations.accelerate.save_state?)")
    state = torch.load(source, map_location="cpu", weights_only=True)
    before = copy.deepcopy(sampler.state_dict())
    sampler.load_state_dict(state)  # (checked whole first: on error nothing changed)
    try:
        accelerator.load_state(input_dir, **kwargs)
    except BaseException:
        sampler.load_state_dict(before)
        raise
    epoch = sampler.epoch + 1 if sampler._finished() else sampler.epoch
    if loader is not None:
        loader.set_epoch(epoch)
    return epoch
