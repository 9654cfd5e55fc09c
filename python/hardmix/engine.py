"""The native engine: the policy's state tensors and one step through the ops.

:class:`Engine` owns every state tensor of the policy and runs a step of it
with ``torch.ops.hardmix.policy_update`` / ``policy_draw``. It behaves exactly
as :class:`hardmix.reference.ReferencePolicy` (the specification) under the
same :class:`~hardmix.config.PolicyConfig`; the tests compare them bit for bit.

The per-step cost does not depend on N and grows as log R (see the contract of
``policy_update`` in csrc/ops/library.cpp). The state lives on the CPU, or on a
CUDA device (``Engine(config, device="cuda")``: see :class:`Engine`).

**Sharded table** (``Engine(config, shard=(rank, world))``): the N-sized
state is split by index across ``world`` engines, one per rank, and the
reservoir (R-sized state) is replicated. Shard ``rank`` holds the table rows
of the indices i = rank (mod world) (row i // world) and looks members up in
a hash over the slots instead of an array [N], so it holds about
64 N / world + O(R) bytes. A step is then two halves with an exchange
between: :meth:`Engine.dynamics` on every shard (each owner updates its rows
and returns them for the batch), the sum of those rows over the shards (one
``all_reduce``), and :meth:`Engine.update` with ``rows=`` on every shard. The
engines then hold the reservoir, counters and draws of one whole-table engine
fed the same batches, and each shard's table rows equal that engine's.
"""

from __future__ import annotations

from typing import Callable

import contextlib
import math
import mmap
import operator
import struct

import torch

from . import ops as _ops  # noqa: F401  (registers the fake kernels)
from .config import SCORES, PolicyConfig
from . import inputs as _inputs
from .inputs import HALF_DTYPES, INDEX_DTYPES, LOSS_DTYPES, SCORE_DTYPES, TARGET_DTYPES
from .layout import (
    BALANCE_COLUMNS,
    CLASS_COUNT,
    CLASS_ROOT,
    CONFIG_FIELDS,
    COL_CORRECT,
    COL_FACTOR,
    COL_LAST_SEEN,
    COL_QUARANTINE,
    CTR_ADMITTED,
    CTR_ERR_CODE,
    CTR_ERR_VALUE,
    CTR_EVICTED,
    CTR_FREE_TOP,
    CTR_GRADUATED,
    CTR_NONFINITE,
    CTR_QUARANTINED,
    CTR_T,
    CTR_TOTALS,
    HEAP_CLASS_FIELDS,
    LINK_FIELDS,
    N_CONFIG,
    N_COUNTERS,
    SLOT_CLASS,
    SLOT_FIELDS,
    SLOT_INDEX,
    TABLE_COLUMNS,
)
from .state_check import TENSORS as STATE_TENSORS  # the state tensors' names, in the ops' argument order
from .state_check import check_state


_INT_FIELDS = ("index", "step", "class", "admitted")  # members(): slot fields returned as int64
_NO_INDICES = torch.empty(0, dtype=torch.int64)
_STATE = operator.attrgetter(*STATE_TENSORS)  # (the ops' state arguments in one call)
_HELD = (*STATE_TENSORS, "slot_class")  # every tensor an engine keeps on its device
_NO_CONTEXT = contextlib.nullcontext()  # (reusable: on_stream() of a CPU engine, every batch)


def _config_vector(c: PolicyConfig, shard: tuple[int, int] | None = None) -> torch.Tensor:
    """The float64 config vector (:data:`hardmix.layout.CONFIG_FIELDS`)."""
    rank, world = shard if shard is not None else (0, 0)
    fields = dict(
        c.as_dict(),
        score=SCORES.index(c.score),
        class_quotas=1.0 if c.class_quotas else 0.0,
        raise_nonfinite=1.0 if c.nonfinite == "raise" else 0.0,
        shard_world=world,
        shard_rank=rank,
        balance_replay=1.0 if c.balance_replay else 0.0,
    )
    v = [float(fields[name]) for name in CONFIG_FIELDS]
    return torch.tensor(v + [0.0] * (N_CONFIG - len(v)), dtype=torch.float64)


_HUGE_PAGE = 2 << 20


def host_filled(shape: tuple[int, ...], dtype: torch.dtype, fill: float) -> torch.Tensor:
    """A CPU tensor of ``shape`` filled with ``fill``. On Linux, one of 2 MiB
    or more lies in memory advised for transparent huge pages (2 MiB aligned):
    the policy reads the N-sized state at a random row per example and step,
    and with 4 KiB pages nearly every such read also misses the TLB.
    Elsewhere (or where the kernel refuses the advice) an ordinary tensor."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes >= _HUGE_PAGE and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf = mmap.mmap(-1, nbytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            raw = torch.frombuffer(buf, dtype=torch.uint8)  # holds buf (unmapped with the storage)
            start = -raw.data_ptr() % _HUGE_PAGE
            buf.madvise(mmap.MADV_HUGEPAGE, start, nbytes - nbytes % _HUGE_PAGE)
        except (OSError, ValueError):
            pass  # no huge pages here: an ordinary tensor
        else:  # (advised before the first write, so the pages are huge from the start)
            return raw[start:start + nbytes].view(dtype).view(shape).fill_(fill)
    return torch.full(shape, fill, dtype=dtype)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """x on ``device``; from the host through pinned memory, so no wait."""
    if x.device == device:
        return x
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def slot_classes(slots: torch.Tensor, quotas: bool) -> torch.Tensor:
    """Each slot's heap class as policy_update's ``slot_class`` cache has it:
    int32 [R], the member's class with class quotas (else 0), -1 for an
    empty slot."""
    member = slots[:, SLOT_INDEX] >= 0
    cls = slots[:, SLOT_CLASS].to(torch.int32) if quotas else torch.zeros_like(member, dtype=torch.int32)
    return torch.where(member, cls, -1)  # (int32: a Python number does not widen it)


class Engine:
    """The policy's state and its per-step operations, on native ops.

    Args:
        config: the policy (see :class:`~hardmix.config.PolicyConfig`).
        score_fn: with ``config.score == "given"``, an optional callable
            ``score_fn(indices, losses, margins) -> priorities`` (tensors [B];
            margins may be None) used when ``update`` gets no priorities.
        shard: ``(rank, world)`` to hold only shard ``rank`` of the table
            (see the module docstring); None (default) holds all of it.
        device: where the state lives (default: the CPU). On a CUDA device
            :meth:`update` only enqueues work (one device thread runs the
            step: csrc/cuda/policy.cu) and never waits; :meth:`draw` waits
            for its result. Input values a step cannot check without waiting
            (index and class ranges, negative priorities, non-finite values
            under ``nonfinite="raise"``) make the device run that step as an
            update with no examples (the step count stays in line), and the
            next :meth:`draw` (or :meth:`check`) raises the error. Not with
            ``shard``. One device thread runs a step, slower than the host
            engine, so ReplaySampler keeps the state on the host unless asked
            (``state_device``).
    """

    def __init__(self, config: PolicyConfig, score_fn: Callable | None = None,
                 shard: tuple[int, int] | None = None, device: torch.device | str | None = None):
        if not isinstance(config, PolicyConfig):
            raise TypeError(f"config must be a PolicyConfig, got {type(config).__name__}")
        if score_fn is not None and config.score != "given":
            raise ValueError(f"score_fn needs score='given', got score={config.score!r}")
        if shard is not None:
            ok = (isinstance(shard, tuple) and len(shard) == 2
                  and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
                  and 1 <= shard[1] < 2**31 and 0 <= shard[0] < shard[1])
            if not ok:
                raise ValueError(f"shard must be a tuple (rank, world) with 0 <= rank < world, got {shard!r}")
        self.config = config
        self.score_fn = score_fn
        self.shard = shard
        N, R = config.num_examples, config.capacity
        K = config.num_classes if config.class_quotas else 1
        P = 1 << max(0, (R - 1).bit_length())
        rows = N if shard is None else (N - shard[0] + shard[1] - 1) // shard[1]
        table = host_filled((rows, len(TABLE_COLUMNS)), torch.float64, 0.0)
        table[:, COL_LAST_SEEN] = -1.0
        table[:, COL_CORRECT] = -1.0
        self.table = table
        # dataset index -> slot: an array [N], or sharded a hash over the slots [2P]
        self.pos = host_filled((N if shard is None else 2 * P,), torch.int32, -1)
        self.slots = torch.zeros(R, len(SLOT_FIELDS), dtype=torch.float64)
        self.slots[:, SLOT_INDEX] = -1.0
        self.links = torch.full((R, len(LINK_FIELDS)), -1, dtype=torch.int32)
        self.heap = torch.zeros(R, 2, dtype=torch.float64)
        self.free = torch.arange(R - 1, -1, -1, dtype=torch.int32)
        self.classes = torch.zeros(K, len(HEAP_CLASS_FIELDS), dtype=torch.int64)
        self.classes[:, CLASS_ROOT] = -1
        self.tree = torch.zeros(2 * P, dtype=torch.float64)
        self.window = torch.zeros(config.rank_window, dtype=torch.float64)
        self.counters = torch.zeros(N_COUNTERS, dtype=torch.int64)
        self.counters[CTR_FREE_TOP] = R
        # replay balance (layout.BALANCE_COLUMNS): per heap class, then the totals row
        self.balance = torch.zeros(K + 1, len(BALANCE_COLUMNS), dtype=torch.float64)
        self.balance[:K, COL_FACTOR] = 1.0
        # Not state: each slot's heap class (-1: empty), derived from slots and kept so by
        # policy_update, which then rebuilds replay weights without reading whole slots.
        self.slot_class = torch.full((R,), -1, dtype=torch.int32)
        self.config_vector = _config_vector(config, shard)  # read on the host: stays on the CPU
        self._seed = _ops.as_int64(config.seed, "seed")
        self.device = torch.device("cpu")
        self._stream = None
        self._t = 0  # = counters[CTR_T]: every update is one step
        # Sharded: (step, indices, quarantine_until) of the quarantines of recent steps (carry_since).
        self._made: list = []
        if device is not None:
            self.to(device)

    def to(self, device: torch.device | str) -> "Engine":
        """Moves the state to ``device`` (in place; returns self)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be the CPU or a CUDA device, got {device}")
        if device.type == "cuda" and self.shard is not None:
            raise ValueError("a sharded table is not supported on CUDA yet")
        old = self._stream
        new = None
        if device.type == "cuda":
            # The engine's own stream: its steps wait for their inputs only
            # (see update), never for training work queued after them. The
            # state is allocated on it (its memory belongs to that stream).
            new = old if old is not None and self.device == device else torch.cuda.Stream(device)
            new.wait_stream(torch.cuda.current_stream(device))
            if old is not None and old is not new:
                new.wait_stream(old)
        # to a GPU: on the new stream (it waited for the old one); to the CPU: in the old one's order
        with torch.cuda.stream(new) if new is not None else self.on_stream():
            moved = {k: getattr(self, k).to(device) for k in _HELD}
        for k in _HELD:
            t = getattr(self, k)
            if new is not None and t.is_cuda and moved[k] is not t:
                t.record_stream(new)  # read by the copy on the new stream
            setattr(self, k, moved[k])
        self.device = device
        self._stream = new
        return self

    def on_stream(self):
        """A context in which reading or writing the state is ordered with the
        engine's work: on CUDA its stream (the state is written there), on
        the CPU nothing."""
        return _NO_CONTEXT if self._stream is None else torch.cuda.stream(self._stream)

    def check(self) -> None:
        """CUDA: raises the error of a step the device skipped for bad input
        (see ``device``), and clears it. Waits for the device."""
        if self.device.type == "cpu":
            return
        with self.on_stream():
            code, at, value = self.counters[CTR_ERR_CODE : CTR_ERR_VALUE + 1].tolist()
        if code:
            with self.on_stream():
                self.counters[CTR_ERR_CODE : CTR_ERR_VALUE + 1] = 0
            what = {1: "indices[{at}] = {v} is out of range [0, N)",
                    2: "classes[{at}] = {v} is out of range [0, num_classes)",
                    3: "priorities[{at}] = {f} is negative",
                    4: "losses, margins or priorities [{at}] is not finite (nonfinite='raise'; the loss "
                       "there is {f})",
                    5: "exclude[{at}] = {v} is out of range [0, N)"}.get(code, "error code {c}")
            f = struct.unpack("<d", struct.pack("<q", value))[0]
            raise ValueError("an update on the device had bad input and ran as an update with no "
                             "examples: " + what.format(at=at, v=value, f=f, c=code))

    # --- the step ------------------------------------------------------------

    def update(
        self,
        indices: torch.Tensor,
        losses: torch.Tensor,
        *,
        logits: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        margins: torch.Tensor | None = None,
        classes: torch.Tensor | None = None,
        priorities: torch.Tensor | None = None,
        replayed: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        ready: "torch.cuda.Event | None" = None,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One step of the policy.

        Args:
            indices: [B] dataset indices (any integer dtype), in [0, N).
            losses: [B] per-example losses (floating point; half precision is
                widened exactly to float32).
            logits, targets: [B, C] and [B]: give margins (hardmix.margin) and,
                unless ``classes`` is given, classes.
            margins: [B] precomputed margins (instead of logits/targets).
            classes: [B] class of each example.
            priorities: [B] with score "given" (or computed by ``score_fn``).
            replayed: [B] bool, the entries drawn from the reservoir: never
                admission candidates, and not counted as fresh by
                ``balance_replay``; None: none.
            rows: sharded table only (required there): the sum over the shards
                of :meth:`dynamics` for this batch, float64 [B, 8] (not
                changed: the op works on a copy).
            ready: CUDA: an event recorded (on the stream that made the
                inputs) when they were complete. The step runs on the
                engine's stream after that event, so it never waits for work
                queued later; without it, after everything queued so far.

        Returns None, or with a sharded table the quarantines this step made:
        (dataset indices int64, quarantine_until float64), for :meth:`carry`.
        Raises ValueError/TypeError naming the argument and value, or the op's
        RuntimeError, before any state changes.
        """
        if self._stream is not None:
            self._update_on_device(ready, indices, losses, logits, targets, margins, classes, priorities, replayed)
            self._t += 1
            return None
        args = self._inputs(indices, losses, logits, targets, margins, classes, priorities, replayed)
        if (rows is None) != (self.shard is None):
            raise ValueError("update: rows must be given exactly when the table is sharded "
                             f"(shard={self.shard!r}), got {'None' if rows is None else 'a tensor'}")
        if rows is None:
            torch.ops.hardmix.policy_update(*self.state_tensors(), self.config_vector, self._seed, *args, None,
                                            self.slot_class)
            self._t += 1
            return None
        ok = isinstance(rows, torch.Tensor) and rows.dim() == 2 and rows.shape[1] == len(TABLE_COLUMNS)
        work = rows.clone(memory_format=torch.contiguous_format) if ok else rows  # the caller's stay as given
        torch.ops.hardmix.policy_update(*self.state_tensors(), self.config_vector, self._seed, *args, work,
                                        self.slot_class)
        self._t += 1
        made = work[:, COL_QUARANTINE] != rows[:, COL_QUARANTINE]  # only the step's working copies change
        out = (args[0][made], work[made, COL_QUARANTINE])
        if out[0].numel():
            self._made.append((self.step - 1, *out))
        return out

    def _update_host(self, indices, losses, margins, classes, priorities, replayed) -> None:
        """:meth:`update` of a whole-table engine on the CPU, for inputs already
        in the op's kinds (host tensors: int64 indices and classes, float32
        or float64 values, bool replayed), as the sampler queues them; the op
        still checks every value."""
        torch.ops.hardmix.policy_update(*self.state_tensors(), self.config_vector, self._seed, indices, losses,
                                        margins, classes, priorities, replayed, None, self.slot_class)
        self._t += 1

    def _update_on_device(self, ready, *inputs) -> None:
        side = self._stream
        if ready is not None:
            side.wait_event(ready)
        elif any(isinstance(t, torch.Tensor) and t.is_cuda for t in inputs):
            side.wait_stream(torch.cuda.current_stream(self.device))
        # (host inputs are copied on the engine's stream itself: nothing to wait for)
        with torch.cuda.stream(side):
            args = self._inputs(*inputs)
            torch.ops.hardmix.policy_update(*self.state_tensors(), self.config_vector, self._seed, *args, None,
                                            self.slot_class)
        for t in inputs:  # made on another stream, read on this one: not to be reused before
            if isinstance(t, torch.Tensor) and t.device == self.device:
                t.record_stream(side)
        return None

    def carry_since(self, rows: torch.Tensor, indices: torch.Tensor, step: int) -> None:
        """Sharded: :meth:`carry` into ``rows`` the quarantines of every step >=
        ``step`` that this engine has applied (it keeps them until
        :meth:`forget_before`). For rows whose owners had applied only the
        steps before ``step`` when they ran :meth:`dynamics`: ranks may apply
        queued updates at different times (the sampler passes the least
        step of all ranks)."""
        for s, who, until in self._made:
            if s >= step:
                Engine.carry(rows, indices, (who, until))

    def forget_before(self, step: int) -> None:
        """Drops the kept quarantines of the steps before ``step``."""
        self._made = [m for m in self._made if m[0] >= step]

    @staticmethod
    def carry(rows: torch.Tensor, indices: torch.Tensor, made: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Brings ``rows`` (from :meth:`dynamics` of a later step, for the batch
        ``indices``) up to date with quarantines ``made`` by a step applied
        after they were computed (what :meth:`update` returned). In place;
        idempotent, so carrying a quarantine twice is harmless."""
        who, until = made
        if who.numel() == 0 or indices.numel() == 0:
            return
        order = torch.argsort(who)
        who, until = who[order], until[order]
        at = torch.searchsorted(who, indices).clamp_(max=who.numel() - 1)
        hit = who[at] == indices
        if hit.any():
            rows[hit, 7] = torch.maximum(rows[hit, 7], until[at[hit]])

    def dynamics(self, t: int, indices: torch.Tensor, losses: torch.Tensor, *,
                 margins: torch.Tensor | None = None, classes: torch.Tensor | None = None,
                 priorities: torch.Tensor | None = None) -> torch.Tensor:
        """Sharded table: the first half of the step that will run as step ``t``
        (indices, losses, margins, classes, priorities as for :meth:`update`:
        what the dynamics read; the strikes against a label read the batch's
        class tally). Updates the dynamics of the entries this shard owns and
        returns float64 [B, 8] with, for each, its row after that (zeros
        elsewhere). Summed over the shards, it is the ``rows`` of
        :meth:`update`. ``t`` may run ahead of :attr:`step` (the replay lag):
        then the rows' ``quarantine_until`` can miss quarantines of the steps
        in between, which the caller must carry over (the sampler does)."""
        if self.shard is None:
            raise ValueError("dynamics() is for a sharded table (Engine(..., shard=(rank, world)))")
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ValueError(f"dynamics: t must be an int >= 0, got {t!r}")
        idx, loss, marg, cls, prio, _ = self._inputs(indices, losses, None, None, margins, classes, priorities,
                                                     op="dynamics")
        rows = torch.zeros(idx.numel(), len(TABLE_COLUMNS), dtype=torch.float64)
        torch.ops.hardmix.policy_dynamics(self.table, self.config_vector, t, idx, loss, marg, cls, prio, rows)
        return rows

    def slots_of(self, indices: torch.Tensor) -> torch.Tensor:
        """The slot of each member in ``indices`` (int64 [B]; -1: not a member)."""
        if self.shard is not None:  # a hash: the op (a sharded table is on the CPU)
            out = torch.empty(indices.numel(), dtype=torch.int64)
            torch.ops.hardmix.policy_find(self.pos, self.slots, self.config_vector, indices.long(), out)
            return out
        if self._stream is None:
            return self.pos[indices].long()
        if indices.is_cuda:  # made on the caller's stream
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with self.on_stream():
            out = self.pos[to_device(indices, self.device)].long()
        torch.cuda.current_stream(self.device).wait_stream(self._stream)  # for the caller's stream
        return out

    # --- reads (on the engine's device, in its stream: callers hold on_stream()) ---

    def slot_field(self, name: str) -> torch.Tensor:
        """Field ``name`` (:data:`hardmix.layout.SLOT_FIELDS`) of every slot, a
        view [R]. Empty slots have index -1 and stale other fields."""
        return self.slots[:, SLOT_FIELDS.index(name)]

    def occupancy(self) -> torch.Tensor:
        """float64 [R]: 1 where a slot holds a member, 0 where it is free (from
        the free stack, without reading the slots' rows)."""
        with self.on_stream():
            occ = torch.ones(self.free.numel(), dtype=torch.float64, device=self.free.device)
            occ[self.free[: int(self.counters[CTR_FREE_TOP])].long()] = 0
        return occ

    def class_counts(self) -> torch.Tensor:
        """Members per heap class, int64 [K] (a copy): per class with class
        quotas, else one count, all the members."""
        with self.on_stream():
            return self.classes[:, CLASS_COUNT].clone()

    def leaf_weights(self, slots: torch.Tensor) -> torch.Tensor:
        """The replay weight of each slot in ``slots`` (0 where it is -1)."""
        return self.tree[self.tree.numel() // 2 + slots.clamp(min=0)] * (slots >= 0)

    def replay_total(self) -> torch.Tensor:
        """The sum of all replay weights (a 0-d tensor)."""
        return self.tree[1]

    def total_counts(self) -> torch.Tensor:
        """The counters of :meth:`totals` (nonfinite, admitted, evicted,
        graduated, quarantined), a copy."""
        return self.counters[CTR_TOTALS].clone()

    def _inputs(self, indices, losses, logits, targets, margins, classes, priorities, replayed=None,
                op: str = "update") -> tuple:
        """The op's batch arguments from update()'s (or dynamics()'s: ``op``), checked (see update)."""
        dev = self.device
        indices = _inputs.vector("indices", indices, None, INDEX_DTYPES, op, dev)
        B = indices.shape[0]
        losses = _inputs.vector("losses", losses, B, LOSS_DTYPES, op, dev)
        if logits is not None or targets is not None:
            if logits is None or targets is None:
                raise ValueError(f"{op}: logits and targets go together: pass both or neither")
            if margins is not None:
                raise ValueError(f"{op}: pass margins or logits/targets, not both")
            targets = _inputs.vector("targets", targets, B, TARGET_DTYPES, op, dev)
            _inputs.logits(logits, B, op)
            if logits.device != targets.device:
                raise ValueError(f"{op}: logits and targets must be on one device, got {logits.device} and "
                                 f"{targets.device}")
            margins = _ops.margin(logits.detach(), targets)
            if classes is None:
                classes = targets
        if margins is not None:
            margins = _inputs.vector("margins", margins, B, SCORE_DTYPES, op, dev)
        if classes is not None:
            classes = _inputs.vector("classes", classes, B, TARGET_DTYPES, op, dev).long()
        if priorities is None and self.score_fn is not None:
            priorities = torch.as_tensor(self.score_fn(indices, losses, margins))
        if priorities is not None:
            priorities = _inputs.vector("priorities", priorities, B, SCORE_DTYPES, op, dev)
        if replayed is not None:
            replayed = _inputs.vector("replayed", replayed, B, (torch.bool,), op, dev)
        if losses.dtype in HALF_DTYPES:
            losses = losses.float()
        args = (indices.long(), losses.detach(), None if margins is None else margins.detach(), classes,
                None if priorities is None else priorities.detach(), replayed)
        if dev.type == "cpu":
            return args
        # The device op takes its own dtypes, on its device; host inputs go over without a wait.
        kinds = (torch.int64, torch.float64, torch.float64, torch.int64, torch.float64, torch.bool)
        return tuple(None if a is None else to_device(a.to(k), dev).contiguous() for a, k in zip(args, kinds))

    def draw(self, m: int, exclude: torch.Tensor | None = None, *, facts: bool = False):
        """Up to m members drawn for replay (int64 dataset indices, in draw order),
        skipping those in ``exclude`` (the next batch's fresh part).

        With ``facts=True``, returns (members, facts): facts float64 [E + m + 1]
        on the host, as ``policy_draw`` writes them: the replay weight of each
        excluded index (0: not a member), of each drawn member (0 past the
        members drawn) and the eligible weight (the total less the distinct
        excluded members')."""
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise ValueError(f"draw: m must be an int >= 0, got {m!r}")
        exclude = _NO_INDICES if exclude is None else _inputs.vector("exclude", exclude, None, INDEX_DTYPES,
                                                                      "draw", self.device)
        if exclude.dtype != torch.int64:
            exclude = exclude.long()
        if self._stream is None:  # on the host (every batch of a host engine: kept short)
            out = torch.empty(m + 1, dtype=torch.int64, device="cpu")  # (whatever the default device)
            got = torch.empty(exclude.numel() + m + 1, dtype=torch.float64, device="cpu") if facts else None
            torch.ops.hardmix.policy_draw(self.tree, self.slots, self.pos, self.counters, self.config_vector,
                                          self._seed, exclude, out, got)
        else:
            if exclude.is_cuda:  # made on the caller's stream
                self._stream.wait_stream(torch.cuda.current_stream(self.device))
                exclude.record_stream(self._stream)
            with self.on_stream():
                out = torch.empty(m + 1, dtype=torch.int64, device=self.device)
                got = torch.empty(exclude.numel() + m + 1, dtype=torch.float64, device=self.device) if facts else None
                torch.ops.hardmix.policy_draw(
                    self.tree, self.slots, self.pos, self.counters, self.config_vector, self._seed,
                    to_device(exclude, self.device), out, got
                )
                # The one wait, for the engine's stream only (its steps waited for
                # inputs of batches the replay lag put well in the past).
                out = out.cpu()
                got = None if got is None else got.cpu()
                self.check()
        members = out[: out[m].item()]
        return (members, got) if facts else members

    # --- inspection --------------------------------------------------------

    def state_tensors(self) -> tuple[torch.Tensor, ...]:
        """The state tensors, in the order of ``STATE_TENSORS`` (the ops' argument order)."""
        return _STATE(self)

    @property
    def step(self) -> int:
        """The number of updates so far (the step counter t; kept on the host
        too, so reading it never waits for a GPU)."""
        return self._t

    @property
    def size(self) -> int:
        """The number of members in the reservoir."""
        with self.on_stream():
            return self.config.capacity - int(self.counters[CTR_FREE_TOP])

    def totals(self) -> dict[str, int]:
        """Counts since the start: nonfinite entries, admitted, evicted,
        graduated and quarantined members."""
        with self.on_stream():
            c = self.counters.tolist()
        return dict(
            nonfinite=int(c[CTR_NONFINITE]),
            admitted=int(c[CTR_ADMITTED]),
            evicted=int(c[CTR_EVICTED]),
            graduated=int(c[CTR_GRADUATED]),
            quarantined=int(c[CTR_QUARANTINED]),
        )

    def members(self) -> dict[str, torch.Tensor]:
        """The current members, ordered by slot: dataset index, key, log
        priority, score step, class, admission step, best loss, ticket (CPU
        tensors)."""
        with self.on_stream():
            slots = self.slots.cpu()
        occupied = slots[:, SLOT_INDEX] >= 0
        s = slots[occupied]
        out = {"slot": occupied.nonzero().squeeze(1)}
        for k, name in enumerate(SLOT_FIELDS):
            col = s[:, k]
            out["cls" if name == "class" else name] = col.long() if name in _INT_FIELDS else col
        return out

    def state_dict(self) -> dict:
        """Every state tensor (cloned) and the config, for checkpoints."""
        with self.on_stream():
            state = {"config": self.config.as_dict(), "shard": self.shard,  # (CPU tensors whatever the device)
                     **{k: getattr(self, k).to("cpu", copy=True) for k in STATE_TENSORS}}
        if self.shard is not None:
            state["made"] = [(s, who.clone(), until.clone()) for s, who, until in self._made]
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` of an engine with the same config and
        shard. The whole state is validated first (:mod:`hardmix.state_check`:
        keys, types, shapes, dtypes and every invariant the native policy
        relies on; O(N + R log R)), so a state that loads cannot crash or hang
        the ops. Raises ValueError naming the field ("engine state: ...") on
        a missing key, a wrong type, a mismatch (config, shard, a tensor's
        shape or dtype) or a corrupt value, before changing anything."""
        made = check_state(state, self.config, self.shard, self.device)
        with self.on_stream():
            for k in STATE_TENSORS:
                getattr(self, k).copy_(state[k])
            self.slot_class.copy_(slot_classes(self.slots, self.config.class_quotas))
        self._made = made
        self._t = int(state["counters"][CTR_T])
