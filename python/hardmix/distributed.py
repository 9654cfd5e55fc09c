"""torch.distributed glue for ReplaySampler.

Under a process group every rank holds the same reservoir: ``update()``
gathers each rank's validated batch (index, loss, margin, class, priority,
replayed) with one ``all_gather`` of a [B_max + 1, 6] float64 tensor per rank,
whose first row says whether the rank's input was valid and how long its batch
is (and, until the replay lag is known, the lag it measured):
a rank with bad input fails clearly instead of leaving the others waiting in a
collective, and every rank raises. Every rank then applies the concatenation
of the ranks' batches, in rank order, as one step. Each rank receives
48 * W * (B_max + 1) bytes per step, independent of N and R; B_max is the
batch size (twice it with ``replay_mode="append"``).

With ``shard_table=True`` a second collective, :func:`sum_rows`, brings every
rank the rows of the batch's examples from the ranks that own them, and every
rank's engine step: an ``all_reduce`` of [W * B + ceil(W / 8), 8] float64
(ring all-reduce: about 2 * 64 * W * B bytes received per rank), again
independent of N and R.
"""

from __future__ import annotations

import torch

_COLUMNS = 6  # index, loss, margin, class, priority, replayed (float64: exact for all of them)


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


def sum_rows(rows: torch.Tensor, group) -> torch.Tensor:
    """The sum over the ranks of ``rows`` (the sharded table's exchange: each
    entry's row comes from its one owner, the others add zeros, so the sum is
    exact); one ``all_reduce``, through the GPU under NCCL."""
    import torch.distributed as dist

    device = torch.device("cpu")
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    out = rows.to(device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out.cpu() if device.type != "cpu" else out


def gather_entries(entry: dict | None, error: BaseException | None, world: int, rank: int, group,
                   rows: int, lag: int = -1) -> dict:
    """All ranks' entries concatenated in rank order (the same on every rank).

    ``entry`` is this rank's validated update, or None with ``error`` when
    its input was bad: then every rank raises (this one its own error) and no
    state has changed anywhere. ``rows`` bounds every rank's batch size (the
    sampler knows it without asking), so one ``all_gather`` of [rows + 1, 6]
    float64 per rank carries both the header (row 0) and the batch. ``lag``:
    the replay lag this rank measured (-1: none); the result's ``"lag"`` is
    the largest, or None.
    """
    import torch.distributed as dist

    # NCCL moves CUDA tensors only: the exchange then goes through the GPU.
    device = torch.device("cpu")
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    ok = entry is not None
    B = entry["indices"].numel() if ok else 0
    has = [ok and entry.get(k) is not None for k in ("margins", "classes", "priorities", "replayed")]
    mine = torch.zeros(rows + 1, _COLUMNS, dtype=torch.float64)
    mine[0] = torch.tensor([float(ok), B, has[0] * 1 + has[1] * 2 + has[2] * 4 + has[3] * 8, rank, float(lag), 0.0],
                           dtype=torch.float64)
    if ok:
        mine[1 : B + 1, 0] = entry["indices"].double()
        mine[1 : B + 1, 1] = entry["losses"].double()
        for col, key in ((2, "margins"), (3, "classes"), (4, "priorities"), (5, "replayed")):
            if entry.get(key) is not None:
                mine[1 : B + 1, col] = entry[key].double()
    mine = mine.to(device)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=group)
    parts = [p.cpu() for p in parts]
    bad = [int(p[0, 3]) for p in parts if p[0, 0] == 0]
    if bad:
        if error is not None:
            raise error
        raise RuntimeError(f"ReplaySampler.update: rank(s) {bad} passed bad input (see their errors); "
                           f"nothing was changed on any rank")
    if len({int(p[0, 2]) for p in parts}) > 1:
        raise RuntimeError("ReplaySampler.update: ranks disagree on which of logits/targets/priorities they pass")
    data = torch.cat([p[1 : int(p[0, 1]) + 1] for p in parts])
    lags = [int(p[0, 4]) for p in parts if p[0, 4] >= 0]
    # float64 throughout: exact for float32 inputs, and the same on every rank
    # whatever dtype each rank passed (the engine widens to float64 anyway).
    return {
        "indices": data[:, 0].long(),
        "losses": data[:, 1].clone(),
        "margins": data[:, 2].clone() if has[0] else None,
        "classes": data[:, 3].long() if has[1] else None,
        "priorities": data[:, 4].clone() if has[2] else None,
        **({"replayed": data[:, 5] != 0} if has[3] else {}),
        "lag": max(lags) if lags else None,
    }
