"""ReplaySampler: a DataLoader batch sampler that mixes replay into every batch.

A :class:`ReplaySampler` is a ``torch.utils.data.BatchSampler``: pass it to a
DataLoader as ``batch_sampler=``. Every batch it yields is *fresh* data, the
next of a stream of seeded passes over the data, plus *replay*: members of the
reservoir that :class:`hardmix.Engine` keeps from the losses the training loop
reports with :meth:`ReplaySampler.update`::

    sampler = hardmix.ReplaySampler(len(train_set), batch_size=256, capacity=8192,
                                    replay_fraction=0.25, warmup_steps=500, seed=0)
    loader = DataLoader(hardmix.WithIndex(train_set), batch_sampler=sampler, num_workers=4)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for idx, x, y in loader:
            logits = model(x)
            losses = F.cross_entropy(logits, y, reduction="none")
            (losses * sampler.weights(idx)).mean().backward()   # weights optional
            opt.step(); opt.zero_grad()
            sampler.update(idx, losses.detach(), logits=logits.detach(), targets=y)

**Batches are numbered** g = 0, 1, 2, ... over the whole run (the global step;
schedules read it). Batch g has ``m = replay_count(rho(g), B)`` replayed and
``B - m`` fresh examples (or B fresh and m replayed on top, with
``replay_mode="append"``). Unless ``epoch_length="pass"``, every epoch has
the same number of batches, known from the arguments and the fresh data
alone, so ``len()`` is right before the first batch and across a restore. An
epoch's plan (how many fresh examples each batch takes, from which pass) is
fixed when it starts.

**The replay lag.** A DataLoader with workers asks for batches before the
losses of the batches in flight exist. So the replay of batch g is drawn from
the reservoir exactly as it was after the updates of batches 0 .. g - L - 1,
L = ``replay_lag``; updates that arrive earlier are queued and applied in
order. The batches are then a pure function of the seed, L and the reported
losses, never of timing. L must be at least the number of batches fetched
before the loop reports the losses of the oldest:
``num_workers * prefetch_factor``, plus whatever the loop itself fetches
ahead (Accelerate's prepared loader: 1; the transformers Trainer: its
gradient-accumulation steps). With ``replay_lag=None`` (default) L is
measured once, as the batches yielded before the first ``update()`` minus one
(0 for a plain loop without workers, 2 * num_workers with a DataLoader's
defaults): the smallest lag the loader allows. Pass an int to fix L (the same
batches for any worker count). Requesting batch g before the update of batch
g - L - 1 has arrived raises RuntimeError. Batches must come back in order
(the DataLoader's default ``in_order=True``).

**Updates.** Call :meth:`ReplaySampler.update` once per batch, in the order
the batches were yielded, with that batch's indices (in the order yielded).
A call that raises leaves the sampler exactly as it was.

**Breaking out of an epoch.** Batches yielded but never updated (a loop that
breaks while workers have batches in flight) are yielded again, unchanged, by
the next ``iter()`` of the same epoch. When a new epoch starts instead, they
are dropped: their global numbers stay used and each counts as an update with
no examples (the one case where the worker count changes what follows).

**Checkpoints.** :meth:`ReplaySampler.state_dict` and
:meth:`ReplaySampler.load_state_dict` resume a run, mid-epoch too, with the
batches of an uninterrupted one, also under ``torchdata``'s
``StatefulDataLoader``.
"""

from __future__ import annotations

import collections
import functools
import sys
import threading
import warnings
import weakref
from typing import Callable

import torch
from torch.utils.data import BatchSampler, Sampler

from . import distributed as _dist
from . import draws as _draws
from . import intake as _intake
from . import plan as _plan
from .checkpoint import check_signature, check_state
from .batch_record import BatchRecord
from .checkpoint_log import CheckpointLog
from .config import PolicyConfig
from .engine import Engine, to_device
from .handover import StepClock
from . import inputs as _inputs
from .inputs import CLASS_LIMIT, INDEX_DTYPES
from .schedules import LinearRamp, Schedule, as_schedule
from .update_queue import UpdateQueue
from .worker import Worker

STATE_VERSION = 3

# The sampler's policy defaults (with class balance: see ReplaySampler's
# ``**policy``): a random reservoir per class (alpha = lam = 0), uniform replay
# within a class (gamma 0), and examples that are wrong twice while their
# class is being learned, and never right then, kept out for good (max_wrong
# 2, an endless quarantine). ``python -m hardmix eval`` compares them with the
# baselines (and, with ``--methods``, with one mechanism changed at a time).
SAMPLER_DEFAULTS = {"alpha": 0.0, "lam": 0.0, "gamma": 0.0, "max_wrong": 2, "quarantine_steps": 2**31 - 1}

_MASKS: dict = {}  # (B, fresh, replay) -> the shared replayed mask of update entries (never written)



def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _eager(method):
    """``method`` run eagerly under ``torch.compile``, as with
    ``torch.compiler.disable`` (host-side work: one graph break per call),
    and called directly otherwise (that wrapper switches Dynamo's frame
    handling off and on around every call, every step). Where this torch
    lacks the two Dynamo hooks used, the plain ``torch.compiler.disable``
    wrapper."""
    disabled = torch.compiler.disable(method)
    try:
        from torch._C._dynamo.eval_frame import get_eval_frame_callback
        from torch._dynamo.eval_frame import skip_code
    except ImportError:  # pragma: no cover - another torch
        return disabled

    @functools.wraps(method)
    def call(*args, **kwargs):
        # (in a compiled region, also in the eager code after a graph break: the disabled method)
        if torch.compiler.is_compiling() or get_eval_frame_callback() is not None:
            return disabled(*args, **kwargs)
        return method(*args, **kwargs)

    skip_code(call.__code__)  # (Dynamo never compiles this frame: calling it breaks the graph)
    return call


class _Warmup(Schedule):
    """0 before ``warmup_steps``, then ``inner(t)``."""

    def __init__(self, inner: Schedule, warmup_steps: int):
        self.inner = inner
        self.warmup_steps = warmup_steps

    @property
    def peak(self) -> float | None:
        return self.inner.peak

    def __call__(self, t: int) -> float:
        return 0.0 if t < self.warmup_steps else self.inner(t)


class FreshOrder(Sampler[int]):
    """The fresh data of the epoch in progress, in order (``ReplaySampler.sampler``).

    Iterating it does not advance the ReplaySampler; ``set_epoch`` is
    forwarded. It exists for libraries (Lightning, Accelerate) that read a
    batch sampler's ``.sampler``.
    """

    def __init__(self, owner: "ReplaySampler"):
        self._owner = owner

    def __iter__(self):
        return iter(self._owner._plan.order.tolist())

    def __len__(self) -> int:
        return int(self._owner._plan.order.numel())

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)


class ReplaySampler(BatchSampler):
    """A batch sampler that mixes a reservoir of important examples into every batch.

    Args:
        num_examples: N, the dataset size; indices are in [0, N).
        batch_size: B, examples per batch (fresh + replay; see ``replay_mode``).
        capacity: R, the reservoir's size, 1 <= R <= N.
        replay_fraction: rho, the share of a batch drawn from the reservoir: a
            number in [0, 1) (then replay ramps from 0 to it after
            ``warmup_steps``, over ``ramp_steps``), or a schedule
            (:mod:`hardmix.schedules`) or callable ``t -> rho``.
        warmup_steps: no replay during the first ``warmup_steps`` batches.
        seed: seed of every random draw (fresh order, admission, replay).
        ramp_steps: with a number ``replay_fraction``, the length of the
            linear ramp after warm-up (0: jump to rho).
        drop_last: drop the tail of a pass over the fresh data when it is
            shorter than a batch's fresh part (and with several ranks, cut
            the fresh data to equal parts instead of padding it).
        shuffle: each pass over the fresh data in its own seeded permutation
            (else in order).
        replay_mode: ``"mix"`` (batches of B = fresh + replay) or ``"append"``
            (B fresh plus ``replay_count(rho, B)`` replayed on top).
        epoch_length: batches per epoch: ``"auto"`` (default), one pass
            over the fresh data at the schedule's peak, ceil(n / f) in every
            epoch for f = B - replay_count(peak, B) fresh examples per batch
            (B with ``"append"``; floor with ``drop_last``) and n the fresh
            examples of a rank; an int: that many; ``"pass"``: one pass per
            epoch, its batch count following the schedule. Except with
            ``"pass"``, fresh data flows as a stream of seeded passes across
            epoch boundaries: where batches hold more fresh examples than f
            (warm-up, a ramp) a pass ends within an epoch and the next
            begins there; a batch never spans two passes (the last of a
            pass may be short).
        replay_lag: L, the replay of batch g comes from the reservoir after
            the updates of batches < g - L; None (default): measured at the
            first ``update()`` (see the module docstring).
        store_logits: keep the logits each member had when it was admitted
            (an [R, C] float32 table, C the logits' width at the first
            update), for logit replay: :meth:`stored_logits`. ``update()``
            then needs logits; one process only.
        score_fn: with ``score="given"``, a callable
            ``(indices, losses, margins) -> priorities`` used when ``update``
            gets no priorities.
        num_replicas, rank, process_group: distributed training, as with
            ``DistributedSampler`` (default: from the initialised process
            group, else one process). Each rank gets a disjoint part of the
            fresh data (padded with repeats to equal parts, or cut with
            ``drop_last``), every rank yields the same number of batches, and
            ``update()`` gathers all ranks' batches so every rank holds the
            same reservoir (it starts the exchange and does not wait for it:
            see :meth:`update`); each rank replays its own slice of one
            shared draw.
        shard_table: with several ranks, split the per-example table (64
            bytes per example) across them by index instead of holding all
            of it on every rank: about 64 N / num_replicas bytes per rank
            plus the replicated reservoir (O(R)). ``update()`` then makes a
            second collective (an ``all_reduce`` of [W * B + ceil(W / 8), 8]
            float64: the owners' rows of the batch's examples); batches,
            reservoir and draws are exactly those of an unsharded run. Each
            rank's ``state_dict`` holds its own shard.
        state_device: where the policy's state lives: ``"cpu"`` (default),
            also when ``update()`` gets GPU tensors (it copies them to pinned
            host memory without waiting for the GPU, and applies the update
            when the replay lag needs it); or ``"cuda"`` / ``"cuda:N"``: the
            GPU of the first update with CUDA tensors, where one GPU thread
            runs each step, slower than the host (see the performance page
            of the docs): a shorter training step waits for it. For valid
            input the results are the same bit for bit (with ``"cuda"``, a
            target outside the logits' columns is a NaN margin, skipped,
            where the host raises).
        background: after ``update()``, apply the update and draw the batch
            that comes ``replay_lag`` batches later on a background thread,
            while the training loop goes on (the next sampler call waits for
            it). The batches, weights and reservoir are the same bit for bit
            either way. Only in one process, with the state on the CPU, host
            inputs, no ``store_logits`` and the lag known (after the first
            update). The sampler times its training steps both ways now and
            then and keeps the faster; the work runs in ``update()`` and the
            next batch elsewhere, while the steps were found shorter without
            hand-overs (and in the probes' blocks without them), and while
            handing the work over only makes the next call wait for it (see
            docs/lag.md).
        **policy: the policy's knobs, as :class:`hardmix.PolicyConfig` takes
            them (``score``, ``alpha``, ``lam``, ``gamma``, ``graduation``,
            ``max_wrong``, ``class_quotas``, ``num_classes``,
            ``balance_replay``, ``nonfinite``, ...). Where PolicyConfig's
            defaults are neutral (off), the sampler's are
            ``SAMPLER_DEFAULTS``; ``class_quotas`` and ``balance_replay`` are
            on whenever the class count is known: ``num_classes``, or else
            the logits' width at the first ``update()`` (an update without
            logits then leaves them off); ``reweight_every`` defaults to
            max(1, R // (4 B)) (O(B) amortised per step).

    Raises ValueError or TypeError naming a bad argument.
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        capacity: int,
        replay_fraction=0.5,
        warmup_steps: int = 0,
        seed: int = 0,
        *,
        ramp_steps: int = 0,
        drop_last: bool = False,
        shuffle: bool = True,
        replay_mode: str = "mix",
        epoch_length: int | str = "auto",
        replay_lag: int | None = None,
        store_logits: bool = False,
        score_fn: Callable | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        process_group=None,
        shard_table: bool = False,
        state_device: str | torch.device = "cpu",
        background: bool = True,
        **policy,
    ):
        # No super().__init__: BatchSampler's only wraps a sampler we do not have.
        def need(ok: bool, name: str, want: str, value) -> None:
            if not ok:
                raise ValueError(f"ReplaySampler: {name} must be {want}, got {value!r}")

        need(_is_int(num_examples) and num_examples >= 1, "num_examples", "an int >= 1", num_examples)
        need(_is_int(batch_size) and batch_size >= 1, "batch_size", "an int >= 1", batch_size)
        need(_is_int(capacity) and 1 <= capacity <= num_examples, "capacity",
             f"an int in [1, num_examples={num_examples}]", capacity)
        need(_is_int(warmup_steps) and warmup_steps >= 0, "warmup_steps", "an int >= 0", warmup_steps)
        need(_is_int(ramp_steps) and ramp_steps >= 0, "ramp_steps", "an int >= 0", ramp_steps)
        need(isinstance(drop_last, bool), "drop_last", "a bool", drop_last)
        need(isinstance(shuffle, bool), "shuffle", "a bool", shuffle)
        need(replay_mode in ("mix", "append"), "replay_mode", "'mix' or 'append'", replay_mode)
        need(epoch_length in ("auto", "pass") or (_is_int(epoch_length) and epoch_length >= 1), "epoch_length",
             "'auto', 'pass' or an int >= 1", epoch_length)
        need(replay_lag is None or (_is_int(replay_lag) and replay_lag >= 0), "replay_lag", "None or an int >= 0",
             replay_lag)
        need(isinstance(store_logits, bool), "store_logits", "a bool", store_logits)
        need(isinstance(shard_table, bool), "shard_table", "a bool", shard_table)
        need(isinstance(background, bool), "background", "a bool", background)
        try:
            state_dev = torch.device(state_device)
        except (RuntimeError, TypeError):
            state_dev = None
        need(state_dev is not None and state_dev.type in ("cpu", "cuda"), "state_device",
             "'cpu', 'cuda' or 'cuda:N'", state_device)
        for k in ("num_examples", "capacity", "seed"):
            if k in policy:
                raise TypeError(f"ReplaySampler: {k} is an argument of its own, not a policy knob")
        if isinstance(replay_fraction, (int, float)) and not isinstance(replay_fraction, bool):
            schedule: Schedule = LinearRamp(replay_fraction, warmup_steps, ramp_steps)
        else:
            if ramp_steps:
                raise ValueError(f"ReplaySampler: ramp_steps applies to a number replay_fraction, got a "
                                 f"schedule and ramp_steps={ramp_steps!r}")
            schedule = as_schedule(replay_fraction)
            if warmup_steps:
                schedule = _Warmup(schedule, warmup_steps)
        if epoch_length == "auto" and schedule.peak is None:
            raise ValueError("ReplaySampler: epoch_length='auto' sizes every epoch by the replay schedule's peak, "
                             "and this replay_fraction declares none: pass "
                             "hardmix.schedules.FromCallable(fn, peak=...), epoch_length=<batches per epoch>, "
                             "or epoch_length='pass' (one pass per epoch, its length following the schedule)")
        self._given_knobs = frozenset(policy)
        policy = {**SAMPLER_DEFAULTS, "reweight_every": max(1, capacity // (4 * batch_size)), **policy}
        # Class balance: on with num_classes; else decided by the first update (the logits' width).
        self._auto_classes = "class_quotas" not in policy and not policy.get("num_classes")
        if "class_quotas" not in policy:
            policy["class_quotas"] = bool(policy.get("num_classes"))
        if "balance_replay" not in policy:
            policy["balance_replay"] = policy["class_quotas"]
        self._policy_args = dict(policy)  # as given (and defaulted): what checkpoints compare
        self._capacity, self.num_examples, self.seed = capacity, num_examples, seed
        self.config = self._config_for(None)
        self._classes: int | None = None  # the logits' width at the first update (0: none); None before
        self.num_replicas, self.rank = _dist.resolve(num_replicas, rank, process_group)
        self._replicas_arg = num_replicas
        if store_logits and self.num_replicas > 1:
            raise ValueError("ReplaySampler: store_logits needs one process (the ranks exchange no logits)")
        if store_logits and state_dev.type == "cuda":
            raise ValueError("ReplaySampler: store_logits keeps its logits on the host: use state_device='cpu'")
        self.shard_table = shard_table
        shard = (self.rank, self.num_replicas) if shard_table else None
        if state_dev.type == "cuda" and (shard_table or self.num_replicas > 1):
            raise ValueError(f"ReplaySampler: state_device={state_device!r} needs one process without "
                             f"shard_table (the distributed exchange goes through the host)")
        self._engine = Engine(self.config, score_fn=score_fn, shard=shard)
        # The engine's work after update(), on a background thread (see _advance).
        self.background = background
        self._worker = Worker()
        self._clock = StepClock()  # times the training steps with and without hand-overs
        self._finalizer: weakref.finalize | None = None  # closes the worker's thread with the sampler
        self._prepared: tuple | None = None  # (position, record): the next batch, drawn by the worker
        self._weighing = False  # weights() was called: the worker computes them with the batch it draws
        self.state_device = state_dev
        self.schedule = schedule
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.shuffle = shuffle
        self.replay_mode = replay_mode
        self.epoch_length = epoch_length
        self._lag_arg = replay_lag
        self.replay_lag = replay_lag  # None until measured
        self.store_logits = store_logits
        self._logits: torch.Tensor | None = None  # [R, C] float32: each slot's member's logits at admission
        self._logit_owner: torch.Tensor | None = None  # [R] int64: whose logits they are (-1: none)
        self._group = process_group
        self.sampler = FreshOrder(self)

        # Iteration.
        self._epoch = 0
        self._fresh: torch.Tensor | None = None  # None: every index
        self._next_fresh: torch.Tensor | None = None
        self._yielded = 0  # batches yielded (global); the next batch's number g
        self._received = 0  # updates received
        self._outstanding: collections.deque = collections.deque()  # yielded, not updated
        self._again: collections.deque = collections.deque()  # to be yielded again
        self._pending = UpdateQueue()  # received, not applied
        self._errors: list[dict] = []  # applied updates whose bad input is not reported yet (see _apply)
        self._found = self._found_base = 0  # such errors found so far; as of the state restored
        self._pin = False  # update() got GPU tensors: weights() returns pinned host memory
        self._generation = 0
        self._thread: int | None = None  # the thread that last called iter(): the training loop's
        self._refusal: str | None = None  # what the loader that called iter() gets instead of batches
        self._iter_received = 0  # updates received when the current iteration began
        self._last_updated: torch.Tensor | None = None
        self._prev_totals = torch.zeros(5, dtype=torch.int64)  # the engine's totals before the last update
        # Checkpoint log (see state_dict).
        self._checkpoints = CheckpointLog(rebase=max(1, -(-num_examples // batch_size)))
        self._requested: int | None = None  # the last set_epoch(), applied again after load_state_dict
        self._plan: _plan.EpochPlan | None = None  # the epoch in progress (see hardmix.plan)
        self._start_epoch(0)

    def __getstate__(self) -> dict:
        self._worker.wait()  # (pickle, deepcopy: the state as the next call would see it)
        return {**self.__dict__, "_finalizer": None}

    @property
    def engine(self) -> Engine:
        """The policy's engine (:class:`hardmix.Engine`), its background work done."""
        self._worker.wait()
        return self._engine

    # --- epochs ------------------------------------------------------------

    def _start_epoch(self, epoch: int) -> None:
        """Begin ``epoch`` at its first batch. Batches not yet updated are
        dropped: their numbers stay used (the engine may be past them) and each
        counts as an update with no examples. Nothing changes if planning fails
        (a schedule that raises)."""
        fresh = self._next_fresh if self._next_fresh is not None else self._fresh
        start = self._yielded + len(self._again)
        # A new pass (permutation number ``epoch``) with new fresh data or one pass per epoch;
        # else the stream goes on where the last epoch's plan left it.
        new = self.epoch_length == "pass" or self._next_fresh is not None or self._plan is None
        plan = self._make_plan(fresh, start, (epoch, 0) if new else self._plan.end)
        self._yielded = start
        self._outstanding.clear()
        self._again.clear()
        while self._received < self._yielded:
            self._receive(_intake.empty_entry(self.config, self.shard_table))
        self._epoch, self._fresh, self._next_fresh = epoch, fresh, None
        self._epoch_start, self._batch, self._hold = start, 0, False
        self._set_plan(plan)

    def _plan_spec(self) -> _plan.PlanSpec:
        return _plan.PlanSpec(self.num_examples, self.batch_size, self.num_replicas, self.rank, self.drop_last,
                              self.shuffle, self.replay_mode, self.epoch_length, self.seed, self.schedule)

    def _make_plan(self, fresh: torch.Tensor | None, start: int, cursor: tuple[int, int]) -> _plan.EpochPlan:
        return _plan.make_plan(self._plan_spec(), fresh, start, cursor)

    def _set_plan(self, plan: _plan.EpochPlan) -> None:
        self._prepared = None
        self._plan = plan

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch``.

        The epoch in progress keeps going when ``epoch`` is its number and
        ``set_fresh`` was not called since, so a loop that calls
        ``set_epoch(epoch)`` at the top of each epoch resumes mid-epoch after
        ``load_state_dict``; if that epoch is finished, the next iteration
        yields nothing. Iterating a finished epoch without ``set_epoch``
        starts the next one (for loops that never call it). Raises
        ValueError unless ``epoch`` is an int >= 0.
        """
        self._worker.wait()
        if not _is_int(epoch) or epoch < 0:
            raise ValueError(f"ReplaySampler.set_epoch: epoch must be an int >= 0, got {epoch!r}")
        if epoch != self._epoch or self._next_fresh is not None:
            self._start_epoch(epoch)
        else:
            self._hold = self._finished()  # asked for a finished epoch: it yields nothing more
        self._requested = epoch

    def set_fresh(self, indices) -> None:
        """Restrict fresh data to these dataset indices (a stream of tasks),
        from the next ``set_epoch()`` call or epoch start on; the epoch in
        progress and the reservoir keep what they hold.

        ``indices``: a non-empty 1-D integer tensor (or sequence) of distinct
        indices in [0, N), else ValueError.
        """
        self._worker.wait()
        idx = torch.as_tensor(indices) if not isinstance(indices, torch.Tensor) else indices
        if idx.dtype not in INDEX_DTYPES or idx.dim() != 1:
            raise ValueError(f"set_fresh: indices must be a 1-D integer tensor, got {idx.dtype} of shape "
                             f"{list(idx.shape)}")
        idx = idx.detach().to("cpu", torch.int64)
        if idx.numel() == 0:
            raise ValueError("set_fresh: indices must not be empty")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.num_examples:
            bad = lo if lo < 0 else hi
            raise ValueError(f"set_fresh: indices contains {bad}, out of range [0, {self.num_examples})")
        if torch.unique(idx).numel() != idx.numel():
            raise ValueError("set_fresh: indices contains duplicates")
        self._next_fresh = idx.clone()

    def _finished(self) -> bool:
        """Every batch of the epoch in progress was yielded (and none will come again)."""
        return self._batch - len(self._outstanding) >= len(self._plan.fresh) and not self._again

    def __len__(self) -> int:
        """Batches in the epoch in progress (or in the next one, if it is finished)."""
        if self._hold:
            return 0
        if self._finished():
            spec = self._plan_spec()
            per = _plan.per_rank(spec, self._next_fresh if self._next_fresh is not None else self._fresh)
            K = _plan.epoch_batches(spec, per)
            return K if K is not None else len(_plan.counts(spec, per, self._yielded, (0, 0), None)[0])
        return len(self._plan.fresh)

    @property
    def epoch(self) -> int:
        """The epoch in progress (or just finished)."""
        return self._epoch

    @property
    def step(self) -> int:
        """The global number of the next batch to be yielded."""
        return self._yielded

    # --- batches -----------------------------------------------------------

    def __iter__(self):
        # (a DataLoader with workers forks them next: no thread of ours is left running then)
        self._worker.wait()
        self._worker.close(join=True)
        refusal = self._check_context(sys._getframe(1))
        # Batches yielded but never updated (a loop that broke with batches in
        # flight) come again, unchanged, before any new one.
        if self._outstanding:
            back = len(self._outstanding)
            self._again.extendleft(reversed(self._outstanding))
            self._outstanding.clear()
            self._yielded -= back
            self._batch -= back
        if self._batch >= len(self._plan.fresh) and not self._again:  # (no rewind happened then)
            if self._hold:  # until the next set_epoch (a DataLoader calls iter() twice)
                return iter(())
            self._start_epoch(self._epoch + 1)  # if this raises, nothing has changed
        self._generation += 1
        self._iter_received = self._received
        self._thread, self._refusal = threading.get_ident(), refusal
        return self._batches(self._generation)

    def _check_context(self, frame) -> str | None:
        """Refuses what would silently give wrong batches: a wrapper that
        shards or skips this sampler's batches (found by the caller's class
        name, so no framework is imported), or a process group of several
        ranks when the sampler was built for one. Returns the refusal of a
        DataLoader with ``in_order=False`` and workers, which its first batch
        raises (the loader is half-built when it calls iter())."""
        refusal = None
        for _ in range(5):
            if frame is None:
                break
            kind = type(frame.f_locals.get("self")).__name__
            loader = frame.f_locals.get("loader")
            if (isinstance(loader, torch.utils.data.DataLoader) and getattr(loader, "in_order", True) is False
                    and loader.num_workers > 0):
                refusal = ("ReplaySampler: the DataLoader has in_order=False, so its workers may return "
                                 "batches in another order than the sampler yielded them, and update() (or "
                                 "batch_to_update()) would pair losses with the wrong examples. Use "
                                 "in_order=True (the default)")
            if kind == "BatchSamplerShard":
                raise RuntimeError(
                    "ReplaySampler: wrapped in a BatchSamplerShard (accelerate's prepare() with several "
                    "processes), which gives each process a share of this sampler's batches, so updates "
                    "would not match them. The sampler splits the fresh data across ranks itself: leave its "
                    "DataLoader out of prepare() and move batches to the device yourself")
            if kind == "SkipBatchSampler":
                raise RuntimeError(
                    "ReplaySampler: iterated by a SkipBatchSampler (a mid-epoch resume that drops the "
                    "epoch's first batches without training on them). The sampler resumes mid-epoch from its "
                    "own state_dict: restore that and skip no batches (transformers' Trainer: "
                    "ignore_data_skip=True; accelerate: no skip_first_batches)")
            frame = frame.f_back
        if self._replicas_arg is None and self.num_replicas == 1:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size(self._group) > 1:
                raise RuntimeError(
                    f"ReplaySampler: built for one process (no process group existed then), but the process "
                    f"group now has {dist.get_world_size(self._group)} ranks, which would all yield the same "
                    f"batches. Build the sampler after init_process_group (Lightning: "
                    f"hardmix.integrations.lightning.ReplayCallback with a function that builds it), or pass "
                    f"num_replicas and rank")
        return refusal

    def _check_thread(self, method: str) -> None:
        """One thread drives a sampler: the one that iterates it. Its state
        (the update queue, the engine) has no locks, so a call of ``method``
        from another thread is refused rather than left to race."""
        if self._thread is not None and threading.get_ident() != self._thread:
            raise RuntimeError(
                f"ReplaySampler: {method}() from another thread than the one iterating the sampler (thread "
                f"{threading.get_ident()}, not {self._thread}). A sampler is not thread-safe: iterate it and "
                f"call update(), weights(), replayed(), stored_logits() and batch_to_update() from one thread, "
                f"the training loop's")

    def _batches(self, generation: int):
        while self._again or self._batch < len(self._plan.fresh):
            if generation != self._generation:
                raise RuntimeError(
                    "ReplaySampler: this iterator was superseded by a newer iter() of the same sampler (or by "
                    "load_state_dict): a sampler has one active iterator, since its batches and updates form "
                    "one sequence. Iterate one DataLoader over it at a time")
            if self._refusal:
                raise RuntimeError(self._refusal)
            yield self._next_batch()

    def _next_batch(self) -> list[int]:
        self._worker.wait()
        if self._again:
            rec = self._again.popleft()
        else:
            prepared, self._prepared = self._prepared, None
            if prepared is not None and prepared[0] == self._position():
                rec = prepared[1]
            else:
                rec = self._make_batch()
        self._outstanding.append(rec)
        self._yielded += 1
        self._batch += 1
        listed, rec.listed = rec.listed, None  # (given away once: a batch yielded again is listed again)
        self._kick()  # (with a lag, the next batch's work can run while this one trains)
        return listed if listed is not None else rec.indices.tolist()

    def _make_batch(self) -> BatchRecord:
        g, L = self._yielded, self.replay_lag
        need = 0 if L is None else max(0, g - L)  # (L unknown: no update has arrived yet)
        if self._received < need:
            skip = (" No update() has arrived since this iteration began: if something consumes batches "
                    "without training on them (a trainer skipping batches to resume mid-epoch), restore the "
                    "sampler's state_dict instead and skip nothing." if self._received == self._iter_received
                    else "")
            raise RuntimeError(
                f"ReplaySampler: batch {g} draws its replay from the reservoir after the update of batch "
                f"{need - 1}, but update() has been called for {self._received} batches only. Call "
                f"update() once per batch; with DataLoader workers, replay_lag (now {L}) must be at least "
                f"num_workers * prefetch_factor, plus any batches the training loop fetches ahead.{skip}"
            )
        self._apply(need)
        self._engine.check()  # (GPU: an error the device found in an applied update; no extra wait)
        if self._errors:  # (the host found them applying updates whose inputs were on a GPU)
            errors, self._errors = self._errors, []
            more = f" (and {len(errors) - 1} more such updates)" if len(errors) > 1 else ""
            raise ValueError(f"update: {errors[0]['error']}{more}")
        if self._engine.step != need:  # pragma: no cover - an invariant, not user input
            raise RuntimeError(f"ReplaySampler: internal error: engine at update {self._engine.step}, need {need}")
        return _draws.make_batch(self._plan, self._batch, g, self._engine, self.seed, self.rank, self.num_replicas,
                                 self._logits, self._logit_owner)

    # --- feedback ----------------------------------------------------------

    def _apply(self, upto: int, wait: bool = True) -> None:
        """Apply queued updates until the engine has seen ``upto`` of them,
        waiting for GPU inputs still being copied (intake.to_host) and for the
        ranks' exchanges (distributed.GatheredEntry), or with ``wait=False``
        stopping at the first such update.

        Deferred updates (GPU inputs, values unchecked) are checked here when
        the state is on the host: a bad one runs as an update with no
        examples and the next batch raises its error (_make_batch), as does
        one whose exchange found bad input on a rank. The
        checkpoint logs share each entry, which is left with its host
        tensors, marked checked, or as the empty update it ran as, its error
        numbered in the order found: a restore never checks it again, and
        raises its error only if the state_dict() call had not seen it."""
        eng = self._engine
        while self._pending and eng.step < upto:
            queued = self._pending.front()
            if not queued.finish(wait):
                break
            e = queued.entry
            checks = bool(e.get("deferred")) and eng.device.type == "cpu"
            error = _inputs.value_error(self.config, e.get("C"), e["losses"], e["margins"], e["classes"],
                                        e["priorities"]) if checks else None
            # (an update with no examples is made for the current config: one queued before the
            # first update may predate the class count)
            args = _intake.empty_entry(self.config, self.shard_table) if error or e["indices"].numel() == 0 else e
            made = self._step(queued, args)
            self._pending.pop()
            if error:
                e.clear()
                e.update(args, error=f"the update of batch {eng.step - 1} had bad input, found when it was "
                                     f"applied (its tensors were on a GPU): {error}; it ran as an update with "
                                     f"no examples")
            elif checks:
                e["deferred"] = False
            if error or ("error" in e and e.get("found", self._found_base) >= self._found_base):
                # (found now, by this check or the ranks' exchange, or restored: found after the
                # state_dict() call, which did not see it)
                e["found"] = self._found
                self._found += 1
                self._errors.append(e)
            if made is not None and made[0].numel():
                # Sharded: the rows of later updates were taken before this
                # step's quarantines (Engine.dynamics).
                for later in self._pending:
                    Engine.carry(later["rows"], later["indices"], made)

    def _step(self, queued, args: dict):
        """One engine step with the update ``args`` (the queued entry, or the
        empty update it runs as), and the logits it admitted kept; returns
        Engine.update's quarantines (sharded), else None."""
        eng, e = self._engine, queued.entry
        with eng.on_stream():  # (a copy, not a read: no wait on a GPU)
            self._prev_totals = eng.total_counts()
        # (a host entry is in the op's kinds: intake and the checkpoint checks make it so)
        if eng.device.type == "cpu" and eng.shard is None and not e.get("deferred"):
            eng._update_host(args["indices"], args["losses"], args["margins"], args["classes"],
                             args["priorities"], args.get("replayed"))
            made = None
        else:
            made = eng.update(args["indices"], args["losses"], margins=args["margins"], classes=args["classes"],
                              priorities=args["priorities"], replayed=args.get("replayed"), rows=e.get("rows"),
                              ready=queued.ready)
        if self._logits is not None and args.get("logits") is not None:
            self._store_admitted(args["indices"], args["logits"], eng.step - 1)
        return made

    def _store_admitted(self, indices: torch.Tensor, logits: torch.Tensor, step: int) -> None:
        """Keeps the logits of the members admitted by step ``step``."""
        slots = self._engine.slots_of(indices)
        new = slots >= 0
        new &= self._engine.slot_field("admitted")[slots.clamp(min=0)] == step  # admitted by this step
        where = slots[new]
        self._logits[where] = logits[new].to(self._logits.dtype)
        self._logit_owner[where] = indices[new]

    def _expected(self, name: str, indices: torch.Tensor) -> BatchRecord:
        """The record of the batch these indices must belong to, or a clear error
        (the checks after the fast path only explain the mismatch)."""
        self._check_thread(name)
        host = indices if indices.is_cpu else indices.cpu()
        if self._outstanding and torch.equal(host, self._outstanding[0].indices):
            return self._outstanding[0]  # the usual case; the diagnostics below explain the others
        if indices.numel() == 0:
            raise ValueError(f"{name}: indices is empty; pass the indices of the batch (batches are never empty)")
        bad = ((host < 0) | (host >= self.num_examples)).nonzero()
        if bad.numel():
            k = int(bad[0])
            raise ValueError(f"{name}: indices[{k}] = {int(host[k])} is out of range [0, {self.num_examples})")
        if torch.unique(host).numel() != host.numel():
            v, c = torch.unique(host, return_counts=True)
            raise ValueError(f"{name}: indices contains {int(v[c > 1][0])} more than once (a batch never does)")
        if self._last_updated is not None and torch.equal(host, self._last_updated):
            if name != "update":
                raise ValueError(f"{name}: this batch (batch {self._received - 1}) was already updated: {name}() "
                                 f"describes the batch about to be updated, so call it before update()")
            raise ValueError(f"{name}: update() was already called for this batch (batch "
                             f"{self._received - 1}); call it once per batch")
        if not self._outstanding:
            raise ValueError(f"{name}: no batch is waiting for an update (every yielded batch was updated)")
        rec = self._outstanding[0]  # (the fast path above: it does not match)
        want, got = rec.indices, host.tolist()
        diff = next((k for k in range(min(len(got), want.numel())) if got[k] != int(want[k])), None)
        where = (f"first difference at position {diff}: got {got[diff]}, expected {int(want[diff])}"
                 if diff is not None else f"got {len(got)} indices, expected {want.numel()}")
        raise ValueError(
            f"{name}: indices are not those of batch {rec.g}, the oldest batch not yet updated "
            f"({where}). Pass each batch's indices in the order yielded, once per batch, in order"
        )

    @_eager
    def batch_to_update(self) -> torch.Tensor:
        """The indices ``update()`` expects next: the oldest batch yielded and
        not yet updated (int64, CPU). For datasets that cannot be wrapped in
        :class:`~hardmix.WithIndex`: with a DataLoader that returns batches in
        order (the default, ``in_order=True``) it is the batch the loop holds.
        Raises if no batch is waiting."""
        self._worker.wait()
        self._check_thread("batch_to_update")
        if not self._outstanding:
            raise ValueError("batch_to_update: no batch is waiting for an update")
        return self._outstanding[0].indices.clone()

    @_eager
    def weights(self, indices: torch.Tensor) -> torch.Tensor:
        """Importance weights for the batch about to be updated (float32 [B], on
        the device of ``indices``); does not change the sampler.

        ``(losses * weights).mean()`` is the Horvitz-Thompson estimate of the
        mean loss over the data: w_i = B / ((n + k) * pi_i), where pi_i is
        the probability that example i was in this batch given the reservoir
        it was drawn from: pi_i = q_i + (1 - q_i) * rho_i, with q_i = f / n
        the chance that it is in the fresh part (f fresh examples per batch
        out of n; 0 for a member outside the fresh data, k of them) and rho_i
        the chance that the replay draw, which skips the fresh part, picks
        member i: rho_i = 1 - exp(-w_i * tau), with w_i the member's replay
        weight and tau the expected time of the (m+1)-th arrival of the
        draw's exponential clocks given its order (sum of 1 / remaining
        weight). This is a Poisson approximation of the inclusion
        probability of successive sampling, so the estimate is close to
        unbiased, not exactly. Examples that fill a replay the reservoir was
        too small for get 0. q_i = f / n assumes shuffled fresh data
        (``shuffle=True``). Raises ValueError if ``indices`` is not the
        batch about to be updated.
        """
        self._worker.wait()
        idx = _intake.index_tensor("weights", indices)
        rec = self._expected("weights", idx)
        self._weighing = True
        pin = self._pin and idx.is_cpu
        if rec.weights is None or (pin and not rec.weights.is_pinned()):  # (the worker's, before a GPU update)
            # (training on a GPU: host weights in pinned memory, so that
            # .to(device, non_blocking=True) does not wait for the GPU)
            rec.weights = rec.importance_weights(self.num_replicas, pin=pin)
        return rec.weights if idx.is_cpu else to_device(rec.weights, idx.device)

    @_eager
    def replayed(self, indices: torch.Tensor) -> torch.Tensor:
        """Which rows of the batch about to be updated were drawn from the
        reservoir: bool [B] on the device of ``indices`` (the fresh part and
        any fresh fill-ins are False). For losses that treat replayed rows
        apart (:func:`hardmix.losses.ace_cross_entropy`). Does not change
        the sampler."""
        self._worker.wait()
        idx = _intake.index_tensor("replayed", indices)
        rec = self._expected("replayed", idx)
        return to_device(self._replayed_mask(rec), indices.device)

    @_eager
    def stored_logits(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits each replayed row had when it was admitted to the
        reservoir (``store_logits=True``), for the batch about to be updated:
        (float32 [B, C], bool [B] which rows have them: replayed rows whose
        logits were kept), on the device of ``indices``; zeros elsewhere
        (before the first update, C is unknown: [B, 0], and no row has them).
        For logit replay (:func:`hardmix.losses.logit_replay`). Does not
        change the sampler."""
        self._worker.wait()
        if not self.store_logits:
            raise ValueError("stored_logits: the sampler keeps no logits (pass store_logits=True)")
        idx = _intake.index_tensor("stored_logits", indices)
        rec = self._expected("stored_logits", idx)
        B, f = rec.indices.numel(), rec.fresh
        width = self._logits.shape[1] if self._logits is not None else 0  # (C unknown before the first update)
        out = torch.zeros(B, width, dtype=torch.float32)
        has = torch.zeros(B, dtype=torch.bool)
        if rec.stored is not None:
            r = rec.stored.shape[0]
            out[f : f + r] = rec.stored
            has[f : f + r] = rec.stored_ok
        return to_device(out, indices.device), to_device(has, indices.device)

    @_eager
    def update(self, indices: torch.Tensor, losses: torch.Tensor, logits: torch.Tensor | None = None,
               targets: torch.Tensor | None = None, *, priorities: torch.Tensor | None = None) -> None:
        """Report the losses of the oldest batch not yet updated: call it once
        per batch, in the order the batches were yielded (with several ranks,
        on every rank: it is a collective).

        Args:
            indices: [B] the batch's dataset indices, exactly as yielded.
            losses: [B] per-example losses (any float dtype).
            logits: [B, C] optional, float32, float16 or bfloat16 (a float64
                model's: ``logits.float()``); with ``targets`` gives margins
                and classes.
            targets: [B] int targets; without logits they give classes only.
            priorities: [B] with ``score="given"`` (unless ``score_fn`` is set).

        Tensors may be on the CPU or a GPU, all on one device; ``indices``
        may (and should) stay on the CPU as the loader gives them, since
        indices on a GPU are compared with the batch on the host, which
        waits. With GPU tensors update() starts work and returns without
        waiting for the GPU: their copy to the host (``state_device="cpu"``)
        or the step on the GPU (``state_device="cuda"``). The value checks
        that would wait (NaN/inf under ``nonfinite="raise"``, target and
        class ranges, negative priorities) are then made when the update is
        applied: a bad update runs as one with no examples and its
        ValueError comes with the batch that applies it (the update of batch
        t: with batch t + replay_lag + 1).

        Targets must lie in [0, C) for C logit columns, in [0, num_classes)
        when it is set, and in [0, :data:`CLASS_LIMIT`) otherwise.

        With several ranks, update() starts the exchange of the ranks'
        batches and returns; the update is applied, on every rank alike,
        when a batch needs it. Bad input on any rank (GPU values included)
        then runs as an update with no examples on every rank, and every
        rank raises a ValueError with the batch that applies it, as above.
        The first update, and every update with ``shard_table=True``, wait
        for the exchange instead, and raise on every rank at once.

        Raises ValueError / TypeError naming the argument and value, before
        any state changes (but see several ranks above); RuntimeError from
        another thread than the one iterating the sampler. Safe under
        ``torch.no_grad``; ``torch.compile`` does not trace it (it runs
        eagerly).
        """
        self._worker.wait()
        self._check_thread("update")  # (before any collective: the state has no locks)
        # Several ranks: the exchange is started and not waited for once the lag and the class count
        # are known (every rank's, from the first update), unless the shards' exchange needs the batch.
        started = self.num_replicas > 1 and not (self.replay_lag is None or self._classes is None
                                                 or self.shard_table)
        defer = started or (self.num_replicas == 1 and not self.shard_table)  # (GPU inputs: values checked later)
        interrupt = None
        if self.num_replicas == 1:
            entry = self._validate(indices, losses, logits, targets, priorities, defer)
        else:  # validate here, then every rank learns whether all are fine, then gather
            try:
                mine, error = self._validate(indices, losses, logits, targets, priorities, defer), None
            except BaseException as e:  # noqa: BLE001 - whatever it is, the other ranks must hear of it
                mine, error = None, e
            rows = self.batch_size * (2 if self.replay_mode == "append" else 1)  # no batch is longer
            if mine is not None:
                mine["replayed"] = self._replayed_mask(self._outstanding[0], shared=True)
            if not started:
                lag = len(self._outstanding) - 1 if self.replay_lag is None else -1
                entry = _dist.gather_entries(mine, error, self.num_replicas, self.rank, self._group, rows, lag)
            else:  # waited for when applied; bad input then reported on every rank
                entry = _dist.GatheredEntry(mine, error, self.num_replicas, self.rank, self._group, rows,
                                            self._received, self.config)
                if error is not None and not self._outstanding:
                    raise error  # (no batch to update: nothing to count this call as)
                if error is not None and not isinstance(error, Exception):
                    interrupt = error  # (KeyboardInterrupt and the like: counted as the others count it, then raised)
        lag = len(self._outstanding) - 1 if self.replay_lag is None else None  # measured now, if not yet
        if self.num_replicas > 1 and not started:
            got = entry.pop("lag")
            lag = got if self.replay_lag is None else None  # the ranks' largest: all draw alike
        # (after every check, and before any state changes: a failed call changes nothing)
        if lag is not None:
            self.replay_lag = lag
        if self._classes is None:  # the first update: what a checkpoint logged before it needs, in its entry
            C = logits.shape[1] if isinstance(logits, torch.Tensor) else 0
            entry["first"] = {"classes": C, "lag": self.replay_lag}
            if lag is not None and self._lag_arg is None and self._batch >= len(self._plan.fresh):
                warnings.warn(f"ReplaySampler: replay_lag measured as {lag} in an epoch of {len(self._plan.fresh)} "
                              f"batches, all yielded before the first update(): a loader that prefetches more "
                              f"will need more; pass replay_lag explicitly", stacklevel=2)
            self._resolve_classes(C)
        if self.num_replicas == 1:  # (several: the exchange carries it)
            entry["replayed"] = self._replayed_mask(self._outstanding[0], shared=True)
        if self.shard_table:  # the owners' half of the step, now (the only time a collective may run)
            # (if this collective fails, e.g. times out, the owners' dynamics of this update are
            # already in their rows: the run cannot go on, restart from a checkpoint)
            entry["rows"] = self._owned_rows(entry, self._received)
        self._adopt_device(losses)
        ready = copy = None
        deferred = not started and entry.get("deferred")  # (a started exchange is not read before it is done)
        if deferred and self._engine.device.type == "cuda":
            ready = torch.cuda.Event()  # the step waits for this, not for later work
            ready.record(torch.cuda.current_stream(self._engine.device))
        elif deferred:
            copy = _intake.to_host(entry)
        self._pin = self._pin or (isinstance(losses, torch.Tensor) and losses.is_cuda)
        if self.background:
            self._clock.tick()
        rec = self._outstanding.popleft()
        self._last_updated = rec.indices
        self._receive(entry, ready, copy)
        if not self._kick() and self.num_replicas == 1:  # (several: applied by the next batch on every rank alike)
            self._apply(self._yielded - self.replay_lag, wait=False)
        if interrupt is not None:
            raise interrupt

    # --- background work (see ``background``) ------------------------------

    def _kick(self) -> bool:
        """Hands the engine's next work to the worker: the updates the next
        batch's draw needs, then that draw (_advance). False if it cannot
        run there (see ``background``: one process, state on the CPU, no
        store_logits, the lag known, host inputs only), if there is nothing
        to do, or while hand-overs do not pay (_handover_pays)."""
        eng = self._engine
        if not (self.background and self.num_replicas == 1 and not self.shard_table and not self.store_logits
                and eng.device.type == "cpu" and self.replay_lag is not None):
            return False
        if not (self._to_prepare() or (self._pending and eng.step < self._due())):
            return False
        if not self._handover_pays() or self._pending.deferred():
            return False
        if self._worker.submit(self._advance) and (self._finalizer is None or not self._finalizer.alive):
            self._finalizer = weakref.finalize(self, self._worker.close)  # (the thread ends with the sampler)
        return True

    def _handover_pays(self) -> bool:
        """Whether the work may go to the worker now. A timing choice: results
        never depend on it. Not while the training steps are shorter without
        hand-overs (handover.StepClock times them both ways, now and then;
        while it does, it alone decides), nor when the last hand-over only
        made the training thread wait: its wait for the job was over half the
        job's CPU time (a loop that calls the sampler again at once leaves
        nothing to overlap; tried again every 64 updates)."""
        if self._clock.probing():
            return self._clock.hand_over()
        if not self._clock.choice:
            return False
        w = self._worker
        return self._received % 64 == 0 or w.waited_seconds <= 0.5 * w.job_seconds

    def _to_prepare(self) -> bool:
        """Whether the next new batch can be made now and is not made yet
        (not while bad input found in applied updates waits to be raised by
        the next batch: _make_batch raises it on the training thread)."""
        if (self._again or self._errors or self._batch >= len(self._plan.fresh)
                or self._received < self._due()):
            return False
        return self._prepared is None or self._prepared[0] != self._position()

    def _position(self) -> tuple:
        """What the next new batch depends on within one plan and engine (a
        new plan or engine drops the prepared batch): where the epoch is and
        the updates applied."""
        return (self._batch, self._yielded, self._engine.step)

    def _advance(self) -> None:
        """The worker's job: apply the updates the next draw needs, then make
        the next new batch if it can be made now: what the next call would
        do on the training thread, in the same order (and the batch's
        importance weights, once weights() has been called: they depend on
        the batch's record alone; and the list next() yields)."""
        self._apply(self._due())
        if not self._to_prepare():
            return
        try:
            rec = self._make_batch()
            if self._weighing and not self._pin:  # (what weights() would compute on the training thread)
                rec.weights = rec.importance_weights(self.num_replicas)
            rec.listed = rec.indices.tolist()  # (what the training thread yields)
        except Exception:  # noqa: BLE001 - the training thread makes it again and raises there
            return
        self._prepared = (self._position(), rec)

    @staticmethod
    def _replayed_mask(rec: BatchRecord, shared: bool = False) -> torch.Tensor:
        """The rows of a batch drawn from the reservoir (bool [B]); with
        ``shared``, one read-only tensor per shape (update entries)."""
        key = (rec.indices.numel(), rec.fresh, rec.replay)
        mask = _MASKS.get(key) if shared else None
        if mask is None:
            mask = torch.zeros(key[0], dtype=torch.bool)
            mask[key[1] : key[1] + key[2]] = True
            if shared:
                if len(_MASKS) > 1024:
                    _MASKS.clear()
                _MASKS[key] = mask
        return mask

    def _config_for(self, C: int | None) -> PolicyConfig:
        """The policy once the first update has shown C classes (the logits'
        width; 0: no logits; None: before the first update): class balance on
        with C >= 1, unless the arguments decided it."""
        policy = dict(self._policy_args)
        if self._auto_classes:
            if C is not None and C >= 1:
                policy.update(class_quotas=True, num_classes=C)
                if "balance_replay" not in self._given_knobs:
                    policy["balance_replay"] = True
            else:  # (no classes known: nothing to balance)
                policy["balance_replay"] = False
        return PolicyConfig(num_examples=self.num_examples, capacity=self._capacity, seed=self.seed, **policy)

    def _rebuilt(self, engine: Engine, config: PolicyConfig) -> Engine:
        """A new engine of ``config`` that has applied as many updates with no
        examples as ``engine`` has applied (which must be all it applied)."""
        new = Engine(config, score_fn=engine.score_fn, shard=engine.shard)
        for _ in range(engine.step):
            e = _intake.empty_entry(config, self.shard_table)
            new.update(e["indices"], e["losses"], margins=e["margins"], classes=e["classes"],
                       priorities=e["priorities"], rows=e.get("rows"))
        return new

    def _resolve_classes(self, C: int) -> None:
        """Decides the class count at the first update. The engine may have
        applied updates with no examples (batches dropped by a new epoch);
        a rebuilt engine applies as many."""
        config = self._config_for(C)
        if config != self.config:
            self.config = config
            self._engine = self._rebuilt(self._engine, config)
            self._prepared = None  # (made by the engine replaced)
            self._checkpoints.drop()
        self._classes = C
        if self.store_logits:
            R = self.config.capacity
            self._logits = torch.zeros(R, max(C, 1), dtype=torch.float32)
            self._logit_owner = torch.full((R,), -1, dtype=torch.int64)

    def _due(self) -> int:
        """The updates the next batch's draw needs applied."""
        return 0 if self.replay_lag is None else self._yielded - self.replay_lag

    def _adopt_device(self, losses) -> None:
        """With ``state_device="cuda"``: the state goes to the GPU the losses
        are on, at the first update that brings CUDA tensors, and stays
        there (one process only: checked by the constructor)."""
        if not isinstance(losses, torch.Tensor) or not losses.is_cuda:
            return
        if self._engine.device.type == "cpu" and self.state_device.type == "cuda":
            self._engine.to(losses.device)  # (another GPU than state_device's: refused by _validate)

    def _owned_rows(self, entry: dict, t: int) -> torch.Tensor:
        """Sharded table: this rank's dynamics for update ``t`` (all ranks'
        examples), and the batch's rows from their owners (all_reduce). Ranks
        may have applied different numbers of queued updates (different
        prefetch depths): the owners' rows hold the quarantines of the steps
        each owner had applied, so the exchange also carries every rank's
        engine step, and this rank carries in the quarantines it made since
        the least of them (Engine.carry_since)."""
        eng, W = self._engine, self.num_replicas
        rows = eng.dynamics(t, entry["indices"], entry["losses"], margins=entry["margins"], classes=entry["classes"],
                            priorities=entry["priorities"])
        if W == 1:
            eng.forget_before(eng.step)  # (no other rank can need older quarantines)
            return rows
        B = rows.shape[0]
        steps = torch.zeros(-(-W // 8), 8, dtype=torch.float64)  # each rank's step at [rank]
        steps.view(-1)[self.rank] = eng.step
        out = _dist.sum_rows(torch.cat([rows, steps]), self._group)
        rows, least = out[:B], int(out[B:].view(-1)[:W].min())
        eng.carry_since(rows, entry["indices"], least)
        eng.forget_before(least)
        return rows

    def _validate(self, indices, losses, logits, targets, priorities, defer: bool) -> dict:
        """The entry of an update (hardmix.intake), checked against this
        sampler; ``defer``: GPU inputs may have their values checked later."""
        return _intake.update_entry(indices, losses, logits, targets, priorities, expected=self._expected,
                                    engine=self._engine, config=self.config, state_device=self.state_device,
                                    store_logits=self.store_logits, width=self._classes, defer=defer)

    def _receive(self, entry: dict, ready=None, copy: tuple | None = None) -> None:
        """Queue an update (and log it for the checkpoints that need it)."""
        self._received += 1
        self._pending.push(entry, ready, copy)
        self._checkpoints.append(entry)

    # --- inspection --------------------------------------------------------

    def reservoir(self) -> dict[str, torch.Tensor]:
        """The members the next replay draw uses: ``index`` (dataset indices),
        ``priority`` (p as last scored), ``step`` (when scored), ``cls``,
        ``admitted`` (admission step); CPU tensors, ordered by slot."""
        self._worker.wait()
        self._apply(self._due())  # (inputs copied from a GPU: the copies are done)
        m = self._engine.members()
        return dict(index=m["index"], priority=m["logp"].exp(), step=m["step"], cls=m["cls"],
                    admitted=m["admitted"])

    def stats(self, full: bool = True) -> dict:
        """Numbers worth logging every step.

        ``size``; ``admitted``, ``evicted``, ``graduated``, ``quarantined`` in
        the last applied update, and their ``total_*``; ``replay_fraction``
        (rho for the next batch); ``nonfinite`` (entries skipped so far);
        ``step`` (next batch); ``updates_applied`` and ``updates_pending``
        (the replay lag at work): O(1). With ``full`` (default) also
        ``class_histogram`` (members per class, int64 tensor; O(R) without
        class quotas, O(C) with them) and ``mean_age`` (steps since
        admission): O(R). It first applies the
        queued updates the next batch would apply (with GPU inputs it may
        wait for their copies to the host).
        """
        self._worker.wait()
        self._apply(self._due())  # (inputs copied from a GPU: the copies are done)
        eng = self._engine
        with eng.on_stream():
            c = eng.total_counts().tolist()
            prev = self._prev_totals.tolist()
        size = eng.size
        out = {"size": size, "step": self._yielded, "updates_applied": eng.step,
               "updates_pending": len(self._pending), "nonfinite": c[0],
               "replay_fraction": float(self.schedule(self._yielded))}
        for k, name in enumerate(("admitted", "evicted", "graduated", "quarantined"), start=1):
            out[name] = c[k] - prev[k] if eng.step > 0 else 0
            out["total_" + name] = c[k]
        if full:
            step = eng.step
            occ = eng.occupancy()  # (free slots keep stale columns: they weigh 0)
            with eng.on_stream():
                if self.config.class_quotas:  # a heap per class, which counts its members
                    hist = eng.class_counts()
                else:  # (a pass over R)
                    hist = torch.bincount(eng.slot_field("class").long().clamp_(min=0), weights=occ,
                                          minlength=max(self.config.num_classes, 1)).long()
                out["class_histogram"] = hist.cpu()
                out["mean_age"] = step - float(torch.dot(eng.slot_field("admitted"), occ)) / size if size else 0.0
        return out

    # --- checkpoints -------------------------------------------------------

    def _signature(self) -> dict:
        sig = {"policy": dict(sorted(self._policy_args.items())), "num_examples": self.num_examples,
               "capacity": self.config.capacity, "seed": self.seed, "batch_size": self.batch_size,
               "drop_last": self.drop_last, "shuffle": self.shuffle, "replay_mode": self.replay_mode,
               "epoch_length": self.epoch_length,
               "replay_lag": self._lag_arg, "store_logits": self.store_logits,
               "num_replicas": self.num_replicas, "rank": self.rank}
        if self.shard_table:  # (absent otherwise, so a state saved without the key is an unsharded one)
            sig["shard_table"] = True
        return sig

    def _differences(self, mine: dict, theirs: dict) -> list[str]:
        """How a saved signature differs from this sampler's: the arguments
        first, then the policy knobs, those left to their defaults marked
        (a default may follow from arguments, as reweight_every does)."""
        def differ(a: dict, b: dict, label) -> list[str]:
            keys = list(b) + [k for k in a if k not in b]
            return [f"{label(k)}: saved {a.get(k)!r}, now {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]

        args = differ({k: v for k, v in theirs.items() if k != "policy"},
                      {k: v for k, v in mine.items() if k != "policy"}, str)
        knobs = differ(theirs.get("policy") or {}, mine["policy"],
                       lambda k: k if k in self._given_knobs else f"{k} (default)")
        return args + knobs

    def state_dict(self) -> dict:
        """A versioned checkpoint (torch.save-able, loads with ``weights_only=True``).

        It holds the engine state at some recent step and the list of updates
        since. That list is *live*: it keeps receiving the updates of the
        batches yielded before the call until the state is serialised
        (``torch.save``) or deep-copied (``copy.deepcopy``). So a
        ``torchdata`` ``StatefulDataLoader`` checkpoint is exact: the loader
        takes its snapshot when it dispatches a batch, before training on it,
        and the updates the loop makes before saving still reach it. Save
        after ``update()``.

        Cost: O(B * replay_lag) per call (``StatefulDataLoader`` calls it for
        every batch), plus a copy of the engine state (O(N)) at most once
        every ``ceil(N / B)`` updates (a call after fewer updates since the
        last copy reuses it); nothing is kept while it is never called.
        """
        self._worker.wait()
        # Batches to be yielded again count as yielded and not updated: a
        # rewind never moves the saved position back.
        again = len(self._again)
        frontier = self._yielded + again
        base, start, dynamics, log = self._checkpoints.snapshot(frontier, self._engine_copy, self._engine.step,
                                                                self._received, self._pending)
        return {
            "version": STATE_VERSION,
            "signature": self._signature(),
            "position": {"epoch": self._epoch, "epoch_start": self._epoch_start, "batch": self._batch + again,
                         "yielded": frontier, "cursor": list(self._plan.cursor)},
            "plan": (self._plan.fresh, self._plan.replay),
            "fresh": self._fresh,
            "next_fresh": self._next_fresh,
            "batches": [r.state() for r in (*self._outstanding, *self._again)],
            "engine": base,
            "updates_start": start,
            "dynamics_until": dynamics,
            "updates": log,
            "prev_totals": self._prev_totals_host(),
            # bad input found in applied updates and not reported yet, and the count found (see _apply)
            "errors": [e["error"] for e in self._errors],
            "found": self._found,
            "replay_lag": self.replay_lag,  # (None: not measured yet)
            "classes": self._classes,  # the logits' width at the first update (None: none yet)
        }

    def _engine_copy(self) -> dict:
        """The engine's state (and the kept logits), copied: a checkpoint's base."""
        base = self._engine.state_dict()
        if self._logits is not None:
            base.update(logits=self._logits.clone(), logit_owner=self._logit_owner.clone())
        return base

    @staticmethod
    def _restored(u: dict, device: torch.device) -> dict:
        """A copy of a checkpoint's update for a sampler whose state is on
        ``device``: with the state on the host, its tensors come to the host
        now (a restore may wait), and one that came with GPU tensors from a
        checkpoint without the mark is checked when applied."""
        u = dict(u)
        if "rows" in u:
            u["rows"] = u["rows"].clone()
        if device.type == "cpu":
            if "deferred" not in u and any(isinstance(v, torch.Tensor) and v.is_cuda for v in u.values()):
                u["deferred"] = True
            u = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in u.items()}
        return u

    def _prev_totals_host(self) -> torch.Tensor:
        with self._engine.on_stream():
            return self._prev_totals.to("cpu", copy=True)

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` saved by a sampler with the same
        constructor arguments, as of that call: every batch yielded by then
        whose update had arrived when the state was saved is applied, and
        the others are yielded again.

        Raises ValueError for a state of an unsupported version, saved with
        other arguments, or inconsistent. Everything is checked first: on
        error nothing changes.
        """
        self._worker.wait()
        if not isinstance(state, dict) or "version" not in state:
            raise ValueError("load_state_dict: not a ReplaySampler state_dict (no 'version')")
        if not isinstance(state.get("signature"), dict) or not isinstance(state.get("position"), dict):
            raise ValueError("load_state_dict: state fields signature and position must be dicts")
        if type(state["version"]) is not int or state["version"] not in (2, STATE_VERSION):
            raise ValueError(f"load_state_dict: state version {state['version']!r} is not supported "
                             f"(this hardmix reads versions 2 and {STATE_VERSION})")
        mine, theirs = self._signature(), dict(state["signature"])
        check_signature(theirs)
        pos = dict(state["position"])
        if state["version"] == 2:  # (version 2: one pass per epoch, numbered by the epoch: epoch_length="pass")
            theirs.setdefault("epoch_length", "pass")
            pos.setdefault("cursor", [int(pos["epoch"]), 0])
        if mine != theirs:
            raise ValueError("load_state_dict: the state was saved with other arguments: "
                             + "; ".join(self._differences(mine, theirs)))
        check_state({**state, "position": pos}, num_examples=self.num_examples, capacity=self.config.capacity,
                    class_limit=max(self.config.num_classes, CLASS_LIMIT))
        yielded = int(pos["yielded"])
        start = int(state["updates_start"])
        # (check_state took int-valued 0-d tensors for ints: ints from here on)
        classes, lag = (None if v is None else int(v) for v in (state["classes"], state["replay_lag"]))
        engine = Engine(self._config_for(classes), score_fn=self._engine.score_fn, shard=self._engine.shard)
        engine.load_state_dict(state["engine"])
        logged = list(state["updates"] or [])[: max(0, yielded - start)]
        first = next((u["first"] for u in logged if "first" in u), None)
        if classes is None and first is not None:  # copied before the first update, which the log holds
            classes = int(first["classes"])
            lag = lag if lag is not None else None if first["lag"] is None else int(first["lag"])
            engine = self._rebuilt(engine, self._config_for(classes))  # (it applied empty updates only)
        config = engine.config
        for n, u in enumerate(logged):  # (what the op would refuse; an empty update is made afresh)
            if u["indices"].numel() and (what := _inputs.kinds_error(config, margins=u["margins"] is not None,
                                                                      classes=u["classes"] is not None,
                                                                      priorities=u["priorities"] is not None)):
                raise ValueError(f"load_state_dict: state field updates[{n}] does not fit the policy: {what}")
        logits = owner = None
        if self.store_logits and classes is not None:
            if "logits" in state["engine"] and state["classes"] is not None:
                logits, owner = state["engine"]["logits"].clone(), state["engine"]["logit_owner"].clone()
            else:
                logits = torch.zeros(config.capacity, max(classes, 1), dtype=torch.float32)
                owner = torch.full((config.capacity,), -1, dtype=torch.int64)
        on_gpu = [v.device for u in state["updates"] or [] for v in u.values()
                  if isinstance(v, torch.Tensor) and v.is_cuda]
        device = self._engine.device
        if device.type == "cpu" and self.state_device.type == "cuda" and on_gpu:
            device = on_gpu[0]  # the inputs were on a GPU: the state goes there
        if device.type == "cuda":
            engine.to(device)
        if engine.step != start:
            raise ValueError(f"load_state_dict: engine step {engine.step} != updates_start {start}")
        # (copies: applying them marks them, and quarantines get carried into sharded rows;
        # the caller's state stays as it was)
        updates = [self._restored(u, engine.device) for u in logged]
        received = start + len(updates)
        if self.shard_table:  # the copied table lacks the dynamics of the updates received after the copy
            for n in range(max(start, int(state["dynamics_until"])), received):
                u = updates[n - start]
                engine.dynamics(n, u["indices"], u["losses"], margins=u["margins"], classes=u["classes"],
                                priorities=u["priorities"])
        records = [r for r in state["batches"] if received <= r["g"] < yielded]
        if [r["g"] for r in records] != list(range(received, yielded)):
            raise ValueError("load_state_dict: the state lacks the batches yielded but not updated")
        # The restored state is built on a new sampler object sharing this one's
        # settings and idle worker; this one takes its state only when all is
        # done: a failure on the way leaves it as it was.
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._fresh, new._next_fresh = state["fresh"], state["next_fresh"]
        new._epoch, new._yielded = int(pos["epoch"]), yielded
        new._epoch_start = int(pos["epoch_start"])
        cursor = tuple(int(c) for c in pos["cursor"])
        per = _plan.per_rank(new._plan_spec(), new._fresh)
        if len(cursor) != 2 or cursor[0] < 0 or not 0 <= cursor[1] <= per:
            raise ValueError(f"load_state_dict: position cursor {list(cursor)} is not [pass >= 0, position "
                             f"in [0, {per}]]")
        new._set_plan(new._make_plan(new._fresh, new._epoch_start, cursor))
        if (list(new._plan.fresh), list(new._plan.replay)) != tuple(list(x) for x in state["plan"]):
            raise ValueError("load_state_dict: this sampler's replay schedule (replay_fraction, warmup_steps, "
                             "ramp_steps) plans the epoch in progress differently from the saved one")
        new._batch = int(pos["batch"])
        if new._epoch_start + new._batch != yielded or new._batch > len(new._plan.fresh):
            raise ValueError(f"load_state_dict: inconsistent position {pos}")
        new._engine, new.config, new._classes = engine, config, classes
        new._logits, new._logit_owner = logits, owner
        new.replay_lag = lag if new._lag_arg is None else new._lag_arg
        new._received = received
        new._pending = UpdateQueue(updates)
        new._errors = [{"error": str(m)} for m in state.get("errors", [])]
        new._found = new._found_base = int(state.get("found", 0))
        new._outstanding = collections.deque(BatchRecord.from_state(r) for r in records)
        new._again = collections.deque()
        new._last_updated = None
        new._prev_totals = torch.as_tensor(state["prev_totals"], dtype=torch.int64).clone()
        new._checkpoints = CheckpointLog(new._checkpoints.rebase)
        new._hold = False
        new._generation += 1
        new._apply(new._due())
        if new._requested is not None:  # set_epoch() came first (as with StatefulDataLoader)
            if new._requested == new._epoch:
                new._hold = new._finished()
            else:
                new._start_epoch(new._requested)
        self.__dict__.update(new.__dict__)
        self._clock.pause()  # (the step now running spans the restore)
