"""torch.distributed glue for ReplaySampler (DESIGN §4).

Under a process group every rank holds the same reservoir: ``update()``
gathers each rank's validated batch (index, loss, margin, class, priority)
with one ``all_gather`` of a [W, B_max, 5] float64 tensor, plus one of a
[W, 6] header that carries each rank's batch size and whether its input was
valid, so that a rank with bad input fails clearly instead of leaving the
others waiting in a collective. Every rank then applies the concatenation of
the ranks' batches, in rank order, as one step. Bytes per step: 8 * W * (6 +
5 * B_max) sent to and received from each rank's view, independent of N and R.
"""

from __future__ import annotations

import torch

_COLUMNS = 5  # index, loss, margin, class, priority (float64: exact for all of them)


def resolve(num_replicas, rank, group) -> tuple[int, int]:
    """(world size, rank) from the arguments, else from an initialised
    process group, else (1, 0)."""
    import torch.distributed as dist

    if num_replicas is None:
        if dist.is_available() and dist.is_initialized():
            num_replicas = dist.get_world_size(group)
            if rank is None:
                rank = dist.get_rank(group)
        else:
            num_replicas = 1
    if rank is None:
        rank = 0
    for name, v in (("num_replicas", num_replicas), ("rank", rank)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"ReplaySampler: {name} must be an int, got {v!r}")
    if num_replicas < 1:
        raise ValueError(f"ReplaySampler: num_replicas must be >= 1, got {num_replicas}")
    if not 0 <= rank < num_replicas:
        raise ValueError(f"ReplaySampler: rank must be in [0, num_replicas={num_replicas}), got {rank}")
    return num_replicas, rank


def gather_entries(entry: dict | None, error: BaseException | None, world: int, rank: int, group) -> dict:
    """All ranks' entries concatenated in rank order (the same on every rank).

    ``entry`` is this rank's validated update, or None with ``error`` when
    its input was bad: then every rank raises (this one its own error), after
    the header exchange, and no state has changed anywhere.
    """
    import torch.distributed as dist

    ok = entry is not None
    B = entry["indices"].numel() if ok else 0
    has = [ok and entry[k] is not None for k in ("margins", "classes", "priorities")]
    header = torch.tensor([int(ok), B, *map(int, has), rank], dtype=torch.int64)
    headers = [torch.empty_like(header) for _ in range(world)]
    dist.all_gather(headers, header, group=group)
    bad = [int(h[5]) for h in headers if int(h[0]) == 0]
    if bad:
        if error is not None:
            raise error
        raise RuntimeError(f"ReplaySampler.update: rank(s) {bad} passed bad input (see their errors); "
                           f"nothing was changed on any rank")
    kinds = {tuple(int(x) for x in h[2:5]) for h in headers}
    if len(kinds) > 1:
        raise RuntimeError("ReplaySampler.update: ranks disagree on which of logits/targets/priorities they pass")
    sizes = [int(h[1]) for h in headers]
    rows = max(sizes)
    mine = torch.zeros(rows, _COLUMNS, dtype=torch.float64)
    mine[:B, 0] = entry["indices"].double()
    mine[:B, 1] = entry["losses"].double()
    for col, key in ((2, "margins"), (3, "classes"), (4, "priorities")):
        if entry[key] is not None:
            mine[:B, col] = entry[key].double()
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=group)
    data = torch.cat([p[:n] for p, n in zip(parts, sizes)])
    # float64 throughout: exact for float32 inputs, and the same on every rank
    # whatever dtype each rank passed (the engine widens to float64 anyway).
    return {
        "indices": data[:, 0].long(),
        "losses": data[:, 1].clone(),
        "margins": data[:, 2].clone() if has[0] else None,
        "classes": data[:, 3].long() if has[1] else None,
        "priorities": data[:, 4].clone() if has[2] else None,
    }
