"""Making a batch: its fresh part from the epoch plan, its replay part drawn
from the engine's reservoir, fill-ins when the reservoir holds too few
eligible members, and its :class:`~hardmix.batch_record.BatchRecord` with the
draw's facts that the batch's importance weights need. The reservoir is
read, never changed: the batch depends on the plan, the reservoir, the seed,
its number and the rank alone. The sampler decides when a batch may be made
(the updates its draw needs applied first).
"""

from __future__ import annotations

import torch

from . import ops as _ops
from .batch_record import BatchRecord
from .config import STREAM_FILL
from .engine import Engine
from .plan import EpochPlan


def make_batch(plan: EpochPlan, j: int, g: int, engine: Engine, seed: int, rank: int, num_replicas: int,
               logits: torch.Tensor | None = None, logit_owner: torch.Tensor | None = None) -> BatchRecord:
    """Batch ``j`` of ``plan``, global number ``g``, with its replay drawn
    from ``engine`` as it is now. With several ranks the draw is shared (of
    all ranks' replay, skipping all ranks' fresh parts) and this rank takes
    its slice. ``logits``/``logit_owner``: the store of the members' logits
    at admission ([R, C], [R]), for the record's ``stored`` logits."""
    W, r = num_replicas, rank
    f, m = plan.fresh[j], plan.replay[j]
    off = plan.offset[j]
    fresh = plan.order[off : off + f]
    fresh_all = plan.grid[off : off + f].reshape(-1) if W > 1 else fresh
    if m > 0:
        drawn, facts = engine.draw(m * W, exclude=fresh_all, facts=True)
    else:
        drawn, facts = fresh[:0], None
    replay = drawn if W == 1 else drawn[r * m : (r + 1) * m]  # this rank's slice of the shared draw
    short = m - replay.numel()  # (fill-ins only when the reservoir held too few eligible members)
    fill = _fill(seed, rank, g, short, fresh, drawn, plan.pools[plan.where[j][0]]) if short > 0 else None
    indices = torch.cat([fresh, replay, fill] if fill is not None and fill.numel() else [fresh, replay])
    rec = BatchRecord(g=g, indices=indices, fresh=f, replay=m - short, fill=0 if fill is None else fill.numel(), m=m,
                      **_draw_facts(plan, engine, W, r, indices, fresh_all, drawn, facts, m))
    if logits is not None:  # the replayed members' logits at admission, as of this draw
        slots = engine.slots_of(replay)
        rec.stored = logits[slots]  # (indexing copies)
        rec.stored_ok = logit_owner[slots] == replay
    return rec


def _fill(seed: int, rank: int, g: int, k: int, fresh: torch.Tensor, drawn: torch.Tensor,
          pool: torch.Tensor) -> torch.Tensor:
    """k distinct examples of ``pool`` (this rank's part of the pass) outside
    the batch and the whole replay draw, uniformly at random (when the
    reservoir holds fewer than m eligible members): O(B) per 64 candidates,
    and O(n) only when fewer than k of the n could be left."""
    if k <= 0:
        return fresh[:0]
    n = pool.numel()
    taken = set(fresh.tolist()) | set(drawn.tolist())
    if n - len(taken) < k:  # maybe fewer than k left: count them
        k = min(k, len(set(pool.tolist()) - taken))
    out: list[int] = []
    r = 0
    while len(out) < k:
        u = _ops.uniform(64, seed, g, STREAM_FILL, offset=(rank << 40) + r)
        r += 64
        for i in pool[(u * n).long().clamp_(max=n - 1)].tolist():
            if i not in taken:
                taken.add(i)
                out.append(i)
                if len(out) == k:
                    break
    return torch.tensor(out, dtype=torch.int64)


def _draw_facts(plan: EpochPlan, engine: Engine, W: int, r: int, indices: torch.Tensor, fresh_all: torch.Tensor,
                drawn: torch.Tensor, facts: torch.Tensor | None, m: int) -> dict:
    """What the batch's importance weights need from the reservoir it was
    drawn from, out of the draw's ``facts`` (Engine.draw; None: no replay,
    so no weight matters), plus O(R) with a restricted fresh set; the
    weights themselves are computed when asked for
    (:meth:`BatchRecord.importance_weights`). With several ranks the view is
    global: all ranks' batches form one batch (DDP averages over them)."""
    B, E, n = indices.numel(), fresh_all.numel(), drawn.numel()
    if facts is None:
        w, drawn_w, eligible = torch.zeros(B, dtype=torch.float64), torch.zeros(0, dtype=torch.float64), 0.0
    else:
        # (facts of all W * m drawn, 0 past n; this rank's replay part is m of them)
        drawn_w, eligible = facts[E : E + n], facts[E + W * m].item()
        # (B: fill-ins, weight 0, may fall short of the replay's gap)
        w = facts[: min(E + m, B)] if W == 1 else torch.cat([facts[r:E:W], facts[E + r * m : E + (r + 1) * m]])[:B]
    out = {"w": w, "eligible": eligible, "drawn_w": drawn_w,
           "f_all": int(E), "size_all": int(B) * W, "n": plan.n, "outside": 0, "in_fresh": None}
    if plan.mask is not None:
        mask = plan.mask
        out["in_fresh"] = mask[indices]
        with engine.on_stream():
            index = engine.slot_field("index").cpu()
        out["outside"] = int((~mask[index[index >= 0].long()]).sum())
    return out
