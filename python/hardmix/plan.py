"""The epoch plan: what each batch of an epoch holds, decided when the epoch starts.

For every batch of an epoch: how many fresh examples and which (a stretch of
a seeded pass over the fresh data, each rank its own column of it), and how
many replayed ones (the replay schedule at the batch's global number). Pure:
a function of the sampler's settings (:class:`PlanSpec`), the fresh set, the
epoch's first global batch and where the fresh stream stands, so a restore
computes it again and compares. The replay draws themselves are not in it
(they depend on the reservoir, see :mod:`hardmix.sampler`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import ops as _ops
from .config import STREAM_EPOCH
from .schedules import Schedule, replay_count


@dataclass(frozen=True)
class PlanSpec:
    """The sampler's settings a plan depends on (see ReplaySampler's arguments)."""

    num_examples: int
    batch_size: int
    num_replicas: int
    rank: int
    drop_last: bool
    shuffle: bool
    replay_mode: str
    epoch_length: int | str
    seed: int
    schedule: Schedule


@dataclass(frozen=True)
class EpochPlan:
    """An epoch's batches. ``fresh[j]``, ``replay[j]``: batch j's fresh and
    replay counts; ``where[j]`` = (pass, position) of its fresh part and
    ``offset[j]`` its first row in ``grid`` / ``order``; ``grid`` [rows, W]
    the epoch's fresh examples of all ranks, ``order`` this rank's column;
    ``pools`` each pass's examples of this rank (for fill-ins); ``n`` the
    fresh examples of a pass over all ranks; ``mask`` [N] the fresh set
    (None: every index); ``cursor`` / ``end`` where the epoch starts and
    leaves the fresh stream."""

    fresh: list
    replay: list
    where: list
    offset: list
    grid: torch.Tensor
    order: torch.Tensor
    pools: dict
    n: int
    mask: torch.Tensor | None
    cursor: tuple
    end: tuple


def per_rank(spec: PlanSpec, fresh: torch.Tensor | None) -> int:
    """Fresh examples per rank in a pass (DistributedSampler's split)."""
    n = spec.num_examples if fresh is None else fresh.numel()
    W = spec.num_replicas
    per = n // W if (W > 1 and spec.drop_last) else -(-n // W)
    if per == 0:
        raise ValueError(f"ReplaySampler: {n} fresh examples cannot be split into {W} parts with drop_last")
    return per


def epoch_batches(spec: PlanSpec, per: int) -> int | None:
    """Batches per epoch for ``per`` fresh examples per rank (None: one pass)."""
    if spec.epoch_length == "pass":
        return None
    if spec.epoch_length != "auto":
        return spec.epoch_length
    B = spec.batch_size
    f = B if spec.replay_mode == "append" else B - replay_count(spec.schedule.peak, B)
    return per // f if spec.drop_last else -(-per // f)


def pass_grid(spec: PlanSpec, p: int, fresh: torch.Tensor | None, per: int) -> torch.Tensor:
    """Pass ``p`` over the fresh data as a [per, W] grid: column r is rank
    r's part (positions r, r + W, ... of the permutation, as
    DistributedSampler; padded with repeats or cut to per * W)."""
    N, W = spec.num_examples, spec.num_replicas
    if spec.shuffle:  # (the order of the pass's uniforms, stable: ops.stable_order)
        u = _ops.uniform(N, spec.seed, p, STREAM_EPOCH)
        order = _ops.stable_order(u) if fresh is None else fresh[_ops.stable_order(u[fresh])]
    else:
        order = torch.arange(N, dtype=torch.int64) if fresh is None else fresh
    if W > 1:
        reps = -(-per * W // order.numel())
        order = order.repeat(reps)[: per * W]
    return order.view(per, W)


def counts(spec: PlanSpec, per: int, t: int, cursor: tuple[int, int], K: int | None):
    """Fresh and replay counts, and fresh positions (pass, position), of
    K batches (None: up to the end of the pass) from global batch t, the
    fresh stream at ``cursor``; and the cursor after them."""
    B = spec.batch_size
    p, pos = cursor
    fresh, replays, where = [], [], []
    while (pos < per) if K is None else (len(fresh) < K):
        if pos >= per:
            p, pos = p + 1, 0
        rho = spec.schedule(t)
        m = replay_count(rho, B)
        f = B if spec.replay_mode == "append" else B - m
        left = per - pos
        if left < f:
            if spec.drop_last and (K is None or pos > 0):  # (a pass shorter than f: one short batch)
                if K is None:
                    break
                p, pos = p + 1, 0
                continue
            if spec.replay_mode == "append":
                m = replay_count(rho, left)
            else:  # keep the replay share at most rho in a short batch
                m = min(m, int(math.floor(rho * left / (1.0 - rho) + 0.5)))
            f = left
        fresh.append(f)
        replays.append(m)
        where.append((p, pos))
        pos += f
        t += 1
    return fresh, replays, where, (p, pos)


def make_plan(spec: PlanSpec, fresh: torch.Tensor | None, start: int, cursor: tuple[int, int]) -> EpochPlan:
    """The plan of an epoch whose first batch is global batch ``start`` and
    whose fresh data begins at ``cursor`` = (pass, position)."""
    per = per_rank(spec, fresh)
    f, m, where, end = counts(spec, per, start, cursor, epoch_batches(spec, per))
    grids = {p: pass_grid(spec, p, fresh, per) for p in sorted({p for p, _ in where})}
    runs: list[list[int]] = []  # [pass, first row, end row] of consecutive batches
    for (p, pos), k in zip(where, f):
        if runs and runs[-1][0] == p and runs[-1][2] == pos:
            runs[-1][2] = pos + k
        else:
            runs.append([p, pos, pos + k])
    rows = [grids[p][a:b] for p, a, b in runs]
    mask = None
    if fresh is not None:
        mask = torch.zeros(spec.num_examples, dtype=torch.bool)
        mask[fresh] = True
    W = spec.num_replicas
    grid = torch.cat(rows) if rows else torch.empty(0, W, dtype=torch.int64)
    offset = [0]
    for k in f:
        offset.append(offset[-1] + k)
    return EpochPlan(fresh=f, replay=m, where=where, offset=offset, grid=grid,
                     order=grid[:, spec.rank].contiguous(), pools={p: g[:, spec.rank].contiguous()
                                                                  for p, g in grids.items()},
                     n=per * W, mask=mask, cursor=tuple(cursor), end=end)
