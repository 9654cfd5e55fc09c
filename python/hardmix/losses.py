"""Losses that use what only the sampler knows about a batch.

- :func:`ace_cross_entropy`: ER-ACE (Caccia et al. 2022, "New insights on
  reducing abrupt representation change in online continual learning"):
  the fresh rows' cross-entropy is taken over the classes present among the
  fresh rows only, the replayed rows' over every class. New classes then stop
  pushing down the logits of classes that only replay brings, the main source
  of the bias towards recent classes in class-incremental training. Which
  rows are replayed: :meth:`hardmix.ReplaySampler.replayed`.
- :func:`logit_replay`: DER++'s logit matching (Buzzega et al. 2020, "Dark
  experience for general continual learning"): replayed rows are pulled
  towards the logits they had when they entered the reservoir, which keeps
  the old function, not only the old labels. The stored logits:
  :meth:`hardmix.ReplaySampler.stored_logits` (``store_logits=True``).

``ace_cross_entropy`` returns per-row values (any reduction or weighting
applies), ``logit_replay`` the mean over the rows that have stored logits::

    replayed = sampler.replayed(idx)
    stored, has = sampler.stored_logits(idx)
    loss = hardmix.losses.ace_cross_entropy(logits, y, replayed).mean()
    loss = loss + 0.5 * hardmix.losses.logit_replay(logits, stored, has)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ace_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, replayed: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy, float [B]: fresh rows (``replayed`` False) over
    the classes of the fresh rows' targets, replayed rows over all classes.

    Args:
        logits: [B, C] (any float dtype).
        targets: [B] int64 class indices in [0, C).
        replayed: [B] bool, True for the rows drawn from the reservoir.
    Differentiable in ``logits``; O(B C).
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1] or replayed.shape != targets.shape:
        raise ValueError(f"ace_cross_entropy: want logits [B, C], targets [B], replayed [B], got "
                         f"{list(logits.shape)}, {list(targets.shape)}, {list(replayed.shape)}")
    if replayed.dtype != torch.bool:
        raise TypeError(f"ace_cross_entropy: replayed must be bool, got {replayed.dtype}")
    fresh = ~replayed
    # (a count per class, not a boolean-mask index: no wait for the GPU)
    present = torch.zeros(logits.shape[1], device=logits.device).index_add_(0, targets, fresh.float()) > 0
    # fresh rows: classes absent from the fresh rows get -inf (never all: each row's target is present)
    masked = logits.masked_fill(fresh[:, None] & ~present[None, :], float("-inf"))
    return F.cross_entropy(masked, targets, reduction="none")


def logit_replay(logits: torch.Tensor, stored: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the rows' logits and their stored
    logits over the rows in ``has`` (a scalar; 0 when none has).

    Args:
        logits: [B, C] the batch's logits now.
        stored: [B, C] logits kept at admission (rows outside ``has``: any;
            [B, 0] when no row has them).
        has: [B] bool, the rows with stored logits.
    Differentiable in ``logits``; O(B C).
    """
    if has.dtype != torch.bool:
        raise TypeError(f"logit_replay: has must be bool, got {has.dtype}")
    if logits.dim() != 2 or has.shape != logits.shape[:1] or stored.shape[:1] != has.shape:
        raise ValueError(f"logit_replay: want logits [B, C], stored [B, C], has [B], got {list(logits.shape)}, "
                         f"{list(stored.shape)}, {list(has.shape)}")
    if not bool(has.any()):  # (stored may be [B, 0] then: nothing was kept yet)
        return logits.sum() * 0.0
    if stored.shape != logits.shape:
        raise ValueError(f"logit_replay: stored must have the logits' shape {list(logits.shape)}, got "
                         f"{list(stored.shape)}")
    diff = logits[has] - stored[has].to(logits.dtype)
    return diff.pow(2).mean()
