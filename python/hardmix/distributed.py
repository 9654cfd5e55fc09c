"""torch.distributed glue for ReplaySampler.

Under a process group every rank holds the same reservoir: ``update()``
gathers each rank's validated batch (index, loss, margin, class, priority,
replayed) with one ``all_gather`` of a [B_max + 1, 6] float64 tensor per rank,
whose first row says whether the rank's input was valid and how long its batch
is (and, until the replay lag is known, the lag it measured). Every rank then
applies the concatenation of the ranks' batches, in rank order, as one step.
Each rank receives 48 * W * (B_max + 1) bytes per step, independent of N and
R; B_max is the batch size (twice it with ``replay_mode="append"``).

Once the lag and the class count are known, ``update()`` starts the exchange
and returns (:class:`GatheredEntry`); the sampler waits for it when the
update is applied (the update of batch t when batch t + replay_lag + 1 is
drawn). A rank with bad input then takes part all the same, so nobody waits
in a collective: the update runs as one with no examples on every rank, and
every rank raises a ValueError with the batch that applies it. Before that
(the first update) and with ``shard_table=True`` the exchange is waited for
in ``update()`` (:func:`gather_entries`), and bad input on any rank raises
on every rank there, with nothing changed.

With ``shard_table=True`` a second collective, :func:`sum_rows`, brings every
rank the rows of the batch's examples from the ranks that own them, and every
rank's engine step: an ``all_reduce`` of [W * B + ceil(W / 8), 8] float64
(ring all-reduce: about 2 * 64 * W * B bytes received per rank), again
independent of N and R.
"""

from __future__ import annotations

import collections
import threading

import torch

_COLUMNS = 6  # index, loss, margin, class, priority, replayed (float64: exact for all of them)
_OPTIONAL = ("margins", "classes", "priorities", "replayed")  # columns 2-5, flagged in the header


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

    device = _device(group)
    out = rows.to(device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out.cpu() if device.type != "cpu" else out


def _device(group) -> torch.device:
    """Where the group's collectives take their tensors: NCCL moves CUDA
    tensors only."""
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _pack(entry: dict | None, rank: int, rows: int, lag: int, device: torch.device | None = None) -> torch.Tensor:
    """This rank's block of the exchange: [rows + 1, 6] float64, row 0 the
    header (valid, length, which optional columns, rank, lag, and for an
    entry whose values are unchecked the logits' width: -1 without logits,
    -2 for a checked entry). On the host, or on a GPU ``device``: then the
    host's part goes there from pinned memory and the columns already on
    the GPU are copied there, so that nothing waits for the GPU."""
    ok = entry is not None
    B = entry["indices"].numel() if ok else 0
    has = [ok and entry.get(k) is not None for k in _OPTIONAL]
    C = -2 if not (ok and entry.get("deferred")) else -1 if entry.get("C") is None else entry["C"]
    gpu = device is not None and device.type == "cuda"
    mine = torch.zeros(rows + 1, _COLUMNS, dtype=torch.float64, pin_memory=gpu)
    mine[0] = torch.tensor([float(ok), B, has[0] * 1 + has[1] * 2 + has[2] * 4 + has[3] * 8, rank, float(lag), C],
                           dtype=torch.float64)
    on_device = []
    if ok:  # (each column converted as it is copied in)
        for col, key in enumerate(("indices", "losses", *_OPTIONAL)):
            v = entry.get(key)
            if v is not None and (v.is_cpu or not gpu):
                mine[1 : B + 1, col] = v  # (a GPU column under a host backend: the copy waits)
            elif v is not None:
                on_device.append((col, v))
    if not gpu:
        return mine
    mine = mine.to(device, non_blocking=True)
    for col, v in on_device:
        mine[1 : B + 1, col] = v
    return mine


def _headers(parts: list[torch.Tensor]) -> list[list[float]]:
    return torch.stack([p[0] for p in parts]).tolist()


def _bad_ranks(heads: list[list[float]]) -> list[int]:
    return [int(h[3]) for h in heads if h[0] == 0]


def _disagree(heads: list[list[float]]) -> bool:
    """Whether the ranks passed different optional columns."""
    return len({int(h[2]) for h in heads}) > 1


def _concat(parts: list[torch.Tensor], heads: list[list[float]]) -> dict:
    """The entry of all ranks' valid blocks, in rank order."""
    has = [bool(int(heads[0][2]) >> k & 1) for k in range(len(_OPTIONAL))]
    cols = torch.cat([p[1 : int(h[1]) + 1] for p, h in zip(parts, heads)]).t()
    lags = [int(h[4]) for h in heads if h[4] >= 0]
    # float64 throughout: exact for float32 inputs, and the same on every rank
    # whatever dtype each rank passed (the engine widens to float64 anyway).
    return {
        "indices": cols[0].long(),
        "losses": cols[1].clone(),
        "margins": cols[2].clone() if has[0] else None,
        "classes": cols[3].long() if has[1] else None,
        "priorities": cols[4].clone() if has[2] else None,
        **({"replayed": cols[5] != 0} if has[3] else {}),
        "lag": max(lags) if lags else None,
    }


def _value_errors(config, got: dict, heads: list[list[float]]) -> list[tuple[int, str]]:
    """(rank, what is wrong) for each rank whose values came unchecked
    (hardmix.inputs.value_error on its part of the concatenation)."""
    from . import inputs

    found, a = [], 0
    for h in heads:
        b = a + int(h[1])
        if h[5] > -2:
            part = [None if got[k] is None else got[k][a:b] for k in ("losses", "margins", "classes", "priorities")]
            if what := inputs.value_error(config, None if h[5] == -1 else int(h[5]), *part):
                found.append((int(h[3]), what))
        a = b
    return found


def gather_entries(entry: dict | None, error: BaseException | None, world: int, rank: int, group,
                   rows: int, lag: int = -1) -> dict:
    """All ranks' entries concatenated in rank order (the same on every rank),
    waiting for the exchange.

    ``entry`` is this rank's validated update, or None with ``error`` when
    its input was bad: then every rank raises (this one its own error) and no
    state has changed anywhere. ``rows`` bounds every rank's batch size (the
    sampler knows it without asking), so one ``all_gather`` of [rows + 1, 6]
    float64 per rank carries both the header (row 0) and the batch. ``lag``:
    the replay lag this rank measured (-1: none); the result's ``"lag"`` is
    the largest, or None.
    """
    import torch.distributed as dist

    device = _device(group)
    mine = _pack(entry, rank, rows, lag).to(device)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=group)
    parts = [p.cpu() for p in parts]
    heads = _headers(parts)
    if bad := _bad_ranks(heads):
        if error is not None:
            raise error
        raise RuntimeError(f"ReplaySampler.update: rank(s) {bad} passed bad input (see their errors); "
                           f"nothing was changed on any rank")
    if _disagree(heads):
        raise RuntimeError("ReplaySampler.update: ranks disagree on which of logits/targets/priorities they pass")
    return _concat(parts, heads)


class GatheredEntry(dict):
    """An update's entry whose ``all_gather`` is started and not waited for.
    Once :meth:`finish` has waited for it, the entry holds all ranks' batches
    concatenated in rank order, as :func:`gather_entries` returns them
    (without ``"lag"``). Reading it (``[]``, ``get``, ``in``, iterating,
    ...) finishes it first; pickling or deep-copying too, and yields a plain
    mapping (an ``OrderedDict``, which ``torch.load`` with
    ``weights_only=True`` reads): a checkpoint's live log never holds an
    exchange in flight. Finishing waits for the exchange (on a GPU, for its
    copy to the host) and starts no collective, so any rank may finish its
    entries at any time, from any thread.

    A rank's inputs on a GPU stay there (their values unchecked): its block
    is made on the GPU under NCCL, and every rank checks every such rank's
    values once the exchange is done. Bad input on any rank does not raise
    here: the entry becomes an update with no examples
    (hardmix.intake.empty_entry) and an ``"error"`` message, on every rank alike
    (this rank's own error where its input was the bad one).
    """

    def __init__(self, entry: dict | None, error: BaseException | None, world: int, rank: int, group,
                 rows: int, t: int, config) -> None:
        import torch.distributed as dist

        super().__init__()
        self._t, self._rank, self._config = t, rank, config
        # (its message only: not its traceback and the caller's tensors with it)
        self._own = None if error is None else (str(error) or type(error).__name__).removeprefix("update: ")
        self._lock = threading.Lock()  # (a checkpoint may be pickled on another thread)
        device = _device(group)
        mine = _pack(entry, rank, rows, -1, device)
        self._parts = [torch.empty_like(mine) for _ in range(world)]
        self._sent = mine  # (alive until the exchange is done)
        self._work = dist.all_gather(self._parts, mine, group=group, async_op=True)
        self._copied = None
        if device.type == "cuda":  # the current stream waits for the exchange (the host does not), then copies
            self._work.wait()
            host = torch.empty((world, *mine.shape), dtype=mine.dtype, pin_memory=True)
            host.copy_(torch.stack(self._parts), non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record()
            self._parts = list(host)

    def finish(self) -> None:
        """Waits for the exchange and takes its result (once)."""
        if self._work is None:
            return
        with self._lock:
            if self._work is not None:
                self._take()

    def _take(self) -> None:
        if self._copied is not None:
            self._copied.synchronize()
        else:
            self._work.wait()
        self.update(self._result(self._parts))
        self._parts, self._sent, self._work, self._copied = None, None, None, None

    def _result(self, parts: list[torch.Tensor]) -> dict:
        """The entry's content from the ranks' blocks."""
        heads = _headers(parts)
        bad = _bad_ranks(heads)
        own = self._own
        if not bad and not _disagree(heads):
            got = _concat(parts, heads)
            del got["lag"]
            found = _value_errors(self._config, got, heads)  # (every rank checks every rank's alike)
            if not found:
                return got
            bad = [r for r, _ in found]
            own = next((what for r, what in found if r == self._rank), None)
        if own is not None:
            what = f"had bad input: {own}"
        elif bad:
            what = f"had bad input on rank(s) {bad} (see their errors)"
        else:
            what = "had ranks passing different ones of logits/targets/priorities"
        from .intake import empty_entry

        return {**empty_entry(self._config, False),
                "error": f"the update of batch {self._t} {what}; it ran as an update with no examples on every rank"}

    def __reduce_ex__(self, protocol):
        self.finish()
        return (collections.OrderedDict, (), None, None, iter(dict.items(self)))


def _finished_first(read):
    def call(self, *args, **kwargs):
        self.finish()
        return read(self, *args, **kwargs)

    call.__name__, call.__doc__ = read.__name__, read.__doc__
    return call


# Whatever reads a GatheredEntry (a checkpoint walked instead of pickled, say) sees it finished.
for _name in ("__getitem__", "__iter__", "__reversed__", "__len__", "__contains__", "__eq__", "__ne__", "__or__",
              "__ror__", "__repr__", "get", "keys", "values", "items", "copy", "pop", "popitem", "setdefault"):
    setattr(GatheredEntry, _name, _finished_first(getattr(dict, _name)))
