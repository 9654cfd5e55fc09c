"""The hardmix policy in plain Python: the executable specification.

This module defines the policy exactly. The native engine
(csrc/kernels/policy.h, driven by :mod:`hardmix.engine`) agrees with it on
every output: membership, keys, the dynamics table and the replay draws, bit
for bit. It uses the standard library only (lists, dicts, ``heapq``,
``math``) and the random numbers of :mod:`hardmix.rng`, and is written to be
read, not to be fast. Logarithms and exponentials are :mod:`hardmix.rng`'s
own (``rng.log``, ``rng.exp``, ``rng.log1p``: within 1 ulp of libm, written
with + - * / only), which the engine computes identically on the CPU and on
a GPU.

One step
========
``update(indices, losses, margins=None, classes=None, priorities=None)`` is
step t (t = 0, 1, 2, ...; one per call). Its entries are handled in batch
order, in two passes.

*Validity.* An entry is valid when its loss is finite, its margin (if margins
are given) is finite and its priority (if priorities are given) is finite.
Invalid entries change nothing but the ``nonfinite`` counter (or, with
``nonfinite="raise"``, the whole call raises before changing anything).

*Class tally.* First, per class, this step's valid entries with margins and
how many of them are right (margin > 0). The class of an entry is
*being learned* when at least a quarter of them are right (a quarter, not a
half: with 40% label noise, mislabeled entries can be most of a class in a
batch). Without margins no class is being learned.

*Pass 1: dynamics and scores*, for each valid entry in order (so a dataset
index that appears twice is updated twice, the second time seeing the first):

- dynamics table row of the index (columns in :data:`hardmix.layout.TABLE_COLUMNS`):
  ``ema = loss`` on the first sighting, else ``ema_beta * ema + (1 - ema_beta) * loss``;
  ``last_loss = loss``; ``times_seen += 1``; ``last_seen = t``; with margins,
  ``correct = margin > 0``, a forgetting event is counted when the example was
  correct last time and is not now, and ``last_correct = correct``. Then
  ``wrong``, the strikes against its label: while ``wrong >= 0`` and its class
  is being learned, it becomes -1 if the entry is right (the example is
  learnable as labeled, and is never suspected again), else ``wrong += 1``.
  A sighting while its class is not being learned (a new class, a rare one,
  a forgotten one) says nothing about the label and changes nothing.
- priority p >= 0 (config.score): ``loss``: max(loss, 0); ``margin``:
  softplus(-margin); ``loss_rank``: (less + equal / 2 + 1/2) / (n + 1) over the
  n losses in the rank window *as it was when the step began*; ``forgetting``:
  max(loss, 0) * (1 + forget_boost * forgetting events, after this update);
  ``given``: the caller's value.
- log p (-inf when p = 0); the head ``base + lam * t`` with
  ``base = alpha * log p`` (``0`` when alpha = 0, so that alpha = 0 is classic
  reservoir sampling whatever p is), and the entry's ticket
  ``G = gumbel(seed, t, STREAM_ADMIT, index)`` (duplicates in a batch share
  it). A *fresh* entry (not marked ``replayed``) is a new appearance of the
  example in the stream and holds that ticket; a replayed one holds none. The
  key is ``head + ticket``: for a non-member, its fresh ticket (a replayed
  non-member is no candidate); for a member, the best ticket of its fresh
  appearances since admission (``max(ticket, G)`` when fresh, the member's
  ticket when replayed). So with alpha = lam = 0 the reservoir is classic
  reservoir sampling (Vitter's algorithm R) over the fresh appearances: each
  appearance is a ticket, an example seen in more epochs holds more of them,
  and replay is no appearance. With alpha > 0 it is weighted reservoir
  sampling over the appearances.

After pass 1 the step's valid losses join the rank window (oldest out first).

*Pass 2: membership*, for each valid entry in order, reading the rows as
pass 1 left them:

- A **member** (the index is in the reservoir) is *rescored*: its log p, score
  step s = t, ticket and key are replaced (above), and its best loss since
  admission is updated. Then it **graduates** (leaves) if ``graduation > 0`` and
  p < graduation; else it is **quarantined** (leaves, and may not be admitted
  again before step t + quarantine_steps) if ``max_wrong > 0`` and
  ``wrong >= max_wrong``.
- A **candidate** (not a member) is passed over when it is quarantined, when
  ``max_wrong > 0`` and ``wrong > 0`` (suspected), when its key is -inf
  (p = 0 with alpha > 0), when ``graduation > 0`` and p < graduation, or when
  ``max_new_per_step = k > 0`` and it is not among the step's k best eligible
  candidates (decided once, at the start of pass 2, by key, then lower index,
  then batch position). Otherwise it is admitted if the
  reservoir has a free slot; if not, it is compared with the *weakest* member
  (lowest key; ties: the higher dataset index is weaker) and replaces it when
  its key is larger (ties: the lower dataset index wins). Over any run the
  reservoir therefore holds the R largest keys, with ties to the lower index.
- With ``class_quotas``, the weakest member is looked for within one class.
  Let V be the largest class (most members; ties: lowest class id) and c the
  candidate's class. If ``count[c] + 1 < count[V]`` the candidate is admitted
  unconditionally in place of V's weakest member (this evens classes out; the
  counts of the classes that keep sending candidates end within one example of
  each other). Else, if class c has no member, it competes with V's weakest;
  else with c's own weakest. "Equal shares of the capacity among the classes
  seen so far" is what this converges to.

*Class balance of replay* (``balance_replay``), at the end of the step: with
d = BALANCE_DECAY, every class's ``fresh = d * fresh + (1 - d) * n_c`` (n_c:
the step's valid entries of class c not marked ``replayed``), the total row's
``fresh = d * fresh + (1 - d) * n`` (n: all valid entries), and each class
with a valid entry is marked seen. Every ``reweight_every`` steps (when
(t + 1) is a multiple) the class factors are recomputed: with S the total
row's fresh, K the classes seen and n_c the members of class c, the deficit
``max(0, S / K - fresh_c)`` of each seen class (0 for others); if the deficits
of the classes with members sum to 0, every class's deficit is 1 instead;
``factor_c = deficit_c / max(n_c, 1)``. Then every member's replay weight is
recomputed. So replay goes to the classes the fresh stream lacks (in a stream
of tasks: the earlier tasks' classes; in long-tailed data: the rare ones),
each class's share spread evenly over its members.

Slots: members live in R numbered slots. A new member takes the evicted
member's slot, or the most recently freed slot (a stack, initially 0, 1, 2, ...).

Replay draw
===========
``draw(m, exclude)`` draws up to m members without replacement, with
probability proportional to ``w = exp(min(gamma * (log p + lam * (s - t_ref)),
MAX_WEIGHT_EXPONENT))`` (``w = 1`` when gamma = 0; the cap keeps every weight
and the tree's total finite: priorities beyond it weigh alike), i.e. to (decayed priority) ** gamma, times the
factor of the member's class (1 without ``balance_replay``): successive
sampling, the distribution of the Gumbel-top-m of ``gamma * (log p + lam * s)
+ G'``. Members whose index is in ``exclude`` (the next batch's fresh part) are
skipped. It reads draw r's uniform ``u = uniform(seed, t, STREAM_REPLAY, r)``
(t: the current step counter, i.e. the number of updates so far; r counts
every pick, including rejected ones: a pick is made with replacement and
rejected when excluded or already drawn, and a rejected member's weight is 0
for the rest of the draw), and walks a sum tree over the R slots: the same
tree, summed in the same order, as the native engine, so the two pick the
same members. The draw changes no state.

``t_ref`` is rebased to the current step at the start of an update when
``gamma * lam * (t - t_ref) > REBASE_EXPONENT`` (all weights recomputed), so
exp() never overflows.

The engine computes every float with the same formula in the same order
(float32 inputs widened exactly, the same logarithms, exponentials and sum
tree), so the tests compare the two with ``==``.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

from . import rng
from .config import (
    BALANCE_DECAY,
    MAX_WEIGHT_EXPONENT,
    REBASE_EXPONENT,
    STREAM_ADMIT,
    STREAM_REPLAY,
    PolicyConfig,
)
from .layout import (
    COL_CORRECT,
    COL_EMA,
    COL_FORGET,
    COL_LAST_LOSS,
    COL_LAST_SEEN,
    COL_QUARANTINE,
    COL_SEEN,
    COL_WRONG,
)

NEW_ROW = (0.0, 0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0)
"""The dynamics-table row of an example never seen."""


def softplus(x: float) -> float:
    """log(1 + e^x), without overflow."""
    if x > 0:
        return x + rng.log1p(rng.exp(-x))
    return rng.log1p(rng.exp(x))


@dataclass
class Member:
    """One reservoir slot's occupant."""

    index: int  # dataset index
    key: float  # admission/eviction order: larger is stronger
    ticket: float  # the best admission draw of its fresh appearances since admission
    logp: float  # log priority at the last (re)score
    s: int  # step of the last (re)score
    cls: int  # class (0 when no classes are given)
    admitted: int  # step of admission
    best_loss: float  # lowest loss since admission


class SumTree:
    """Sums over P = 2^ceil(log2 R) leaves in an array: node k has children
    2k and 2k + 1, the root is node 1, leaf j is node P + j. Every internal
    node is recomputed as left + right from its children, never updated by
    differences, so its value depends only on the leaves (no drift)."""

    def __init__(self, size: int):
        self.P = 1 << max(0, (size - 1).bit_length())
        self.node = [0.0] * (2 * self.P)

    def set(self, j: int, w: float) -> None:
        k = self.P + j
        self.node[k] = w
        k //= 2
        while k >= 1:
            self.node[k] = self.node[2 * k] + self.node[2 * k + 1]
            k //= 2

    def rebuild(self) -> None:
        for k in range(self.P - 1, 0, -1):
            self.node[k] = self.node[2 * k] + self.node[2 * k + 1]

    def total(self) -> float:
        return self.node[1]

    def find(self, x: float) -> int:
        """The leaf where the running sum passes x (0 <= x < total); never a
        leaf of weight 0, even when rounding puts x at the very end."""
        k = 1
        while k < self.P:
            left, right = self.node[2 * k], self.node[2 * k + 1]
            if left > 0 and (x < left or right <= 0):
                k = 2 * k
            else:
                x = x - left
                k = 2 * k + 1
        return k - self.P


class ReferencePolicy:
    """The policy, one step at a time (see the module docstring)."""

    def __init__(self, config: PolicyConfig):
        self.config = config
        c = config
        self.t = 0
        self.tally: dict | None = None  # per class [correct, seen] of the step in progress
        self.t_ref = 0
        self.table: dict[int, list[float]] = {}  # sparse: rows of examples seen
        self.pos: dict[int, int] = {}  # dataset index -> slot
        self.slots: list[Member | None] = [None] * c.capacity
        self.free = list(range(c.capacity - 1, -1, -1))  # pop() gives 0 first
        self.heap_classes = c.num_classes if c.class_quotas else 1
        self.count = [0] * self.heap_classes  # members per heap class
        self.heaps: list[list] = [[] for _ in range(self.heap_classes)]  # lazy min-heaps
        self.tree = SumTree(c.capacity)
        self.window: deque[float] = deque(maxlen=c.rank_window)
        # Replay balance (rows as the engine's balance tensor): per heap class
        # [fresh, seen, factor], then the total row [fresh, classes seen, 0].
        self.balance = [[0.0, 0.0, 1.0] for _ in range(self.heap_classes)] + [[0.0, 0.0, 0.0]]
        self.totals = dict(nonfinite=0, admitted=0, evicted=0, graduated=0, quarantined=0)

    # --- small helpers ---------------------------------------------------

    def row(self, i: int) -> list[float]:
        if i not in self.table:
            self.table[i] = list(NEW_ROW)
        return self.table[i]

    @property
    def size(self) -> int:
        return len(self.pos)

    def weight(self, m: Member) -> float:
        c = self.config
        if c.gamma == 0:
            return 1.0
        x = c.gamma * (m.logp + c.lam * (m.s - self.t_ref))
        return rng.exp(x if x < MAX_WEIGHT_EXPONENT else MAX_WEIGHT_EXPONENT)

    def leaf(self, m: Member) -> float:
        """The member's replay weight: weight times its class's factor."""
        return self.weight(m) * self.balance[self.heap_class(m.cls)][2]

    def heap_class(self, cls: int) -> int:
        return cls if self.config.class_quotas else 0

    def weakest(self, hc: int) -> Member:
        """The weakest member of heap class hc: lowest key, then highest index.
        Heap entries are (key, -index, slot); stale ones (the slot now holds
        another member, or this one with another key or class) are dropped
        lazily."""
        heap = self.heaps[hc]
        while True:
            key, neg_index, slot = heap[0]
            m = self.slots[slot]
            if m is not None and m.index == -neg_index and m.key == key and self.heap_class(m.cls) == hc:
                return m
            heapq.heappop(heap)

    def push(self, slot: int) -> None:
        m = self.slots[slot]
        hc = self.heap_class(m.cls)
        heap = self.heaps[hc]
        heapq.heappush(heap, (m.key, -m.index, slot))
        if len(heap) > 2 * self.count[hc] + 64:  # drop stale entries now and then
            live = [(s.key, -s.index, j) for j, s in enumerate(self.slots) if s is not None and self.heap_class(s.cls) == hc]
            heapq.heapify(live)
            self.heaps[hc] = live

    def place(self, slot: int, m: Member) -> None:
        """Put m into slot (empty, or just vacated by an eviction)."""
        self.slots[slot] = m
        self.pos[m.index] = slot
        self.count[self.heap_class(m.cls)] += 1
        self.push(slot)
        self.tree.set(slot, self.leaf(m))

    def vacate(self, slot: int) -> None:
        """Take the member out of slot (the slot is left empty)."""
        m = self.slots[slot]
        self.slots[slot] = None
        del self.pos[m.index]
        self.count[self.heap_class(m.cls)] -= 1
        self.tree.set(slot, 0.0)

    def rebase_if_due(self) -> None:
        c = self.config
        if c.gamma > 0 and c.lam > 0 and c.gamma * c.lam * (self.t - self.t_ref) > REBASE_EXPONENT:
            self.t_ref = self.t
            for j, m in enumerate(self.slots):
                self.tree.node[self.tree.P + j] = 0.0 if m is None else self.leaf(m)
            self.tree.rebuild()

    # --- validation --------------------------------------------------------

    def validate(self, indices, losses, margins, classes, priorities) -> None:
        c = self.config
        B = len(indices)
        for name, seq in (("losses", losses), ("margins", margins), ("classes", classes), ("priorities", priorities)):
            if seq is not None and len(seq) != B:
                raise ValueError(f"{name} has {len(seq)} entries but indices has {B}")
        for b, i in enumerate(indices):
            if not 0 <= i < c.num_examples:
                raise ValueError(f"indices[{b}] = {i} is out of range [0, {c.num_examples})")
        if c.score == "margin" and margins is None:
            raise ValueError("score 'margin' needs margins (pass logits and targets)")
        if (c.score == "given") != (priorities is not None):
            raise ValueError("priorities must be given exactly when score is 'given'")
        if c.class_quotas and classes is None:
            raise ValueError("class_quotas needs classes (pass targets)")
        if classes is not None and c.num_classes > 0:
            for b, k in enumerate(classes):
                if not 0 <= k < c.num_classes:
                    raise ValueError(f"classes[{b}] = {k} is out of range [0, {c.num_classes})")
        if priorities is not None:
            for b, p in enumerate(priorities):
                if p < 0:
                    raise ValueError(f"priorities[{b}] = {p} is negative")
        if c.nonfinite == "raise":
            for name, seq in (("losses", losses), ("margins", margins), ("priorities", priorities)):
                for b, v in enumerate(seq or ()):
                    if not math.isfinite(v):
                        raise ValueError(f"{name}[{b}] = {v} is not finite (nonfinite='raise')")

    # --- one step --------------------------------------------------------

    def update(self, indices, losses, margins=None, classes=None, priorities=None, replayed=None) -> None:
        """Step t: see the module docstring. Arguments are sequences of Python
        numbers (float32 values widened to float exactly); ``replayed`` marks
        the entries drawn from the reservoir (None: none)."""
        self.validate(indices, losses, margins, classes, priorities)
        if replayed is not None and len(replayed) != len(indices):
            raise ValueError(f"replayed has {len(replayed)} entries but indices has {len(indices)}")
        c = self.config
        t = self.t
        self.rebase_if_due()
        admit_key = rng.stream_key(c.seed, t, STREAM_ADMIT)  # this step's tickets, by index
        window = sorted(self.window)  # the rank window as the step began

        def valid(b: int) -> bool:
            return all(math.isfinite(v[b]) for v in (losses, margins, priorities) if v is not None)

        # Per class, this step's [right, seen] valid entries (with margins).
        self.tally = None
        if margins is not None:
            self.tally = {}
            for b in range(len(indices)):
                if valid(b):
                    ts = self.tally.setdefault(classes[b] if classes is not None else 0, [0, 0])
                    ts[0] += 1 if margins[b] > 0 else 0
                    ts[1] += 1

        # Pass 1: dynamics and scores.
        entries = []  # per batch position: None (invalid) or (index, loss, p, logp, key, cls, fresh, head, g)
        for b, i in enumerate(indices):
            loss = losses[b]
            mu = margins[b] if margins is not None else 0.0
            if not valid(b):
                self.totals["nonfinite"] += 1
                entries.append(None)
                continue
            cls = classes[b] if classes is not None else 0
            given = priorities[b] if priorities is not None else 0.0
            row = self.row(i)
            row[COL_EMA] = loss if row[COL_SEEN] == 0 else c.ema_beta * row[COL_EMA] + (1.0 - c.ema_beta) * loss
            row[COL_LAST_LOSS] = loss
            row[COL_SEEN] += 1.0
            row[COL_LAST_SEEN] = float(t)
            if margins is not None:
                correct = 1.0 if mu > 0 else 0.0
                if row[COL_CORRECT] == 1.0 and correct == 0.0:
                    row[COL_FORGET] += 1.0
                row[COL_CORRECT] = correct
                if row[COL_WRONG] >= 0 and self.class_learned(cls):
                    row[COL_WRONG] = -1.0 if correct == 1.0 else row[COL_WRONG] + 1.0
            if c.score == "loss":
                p = max(loss, 0.0)
            elif c.score == "margin":
                p = softplus(-mu)
            elif c.score == "loss_rank":
                less = sum(1 for v in window if v < loss)
                equal = sum(1 for v in window if v == loss)
                p = (less + 0.5 * equal + 0.5) / (len(window) + 1)
            elif c.score == "forgetting":
                p = max(loss, 0.0) * (1.0 + c.forget_boost * row[COL_FORGET])
            else:
                p = given
            logp = rng.log(p) if p > 0 else -math.inf
            base = 0.0 if c.alpha == 0 else c.alpha * logp
            head = base + c.lam * t
            g = rng.gumbel(admit_key, i)
            fresh = not (replayed is not None and replayed[b])
            key = head + g if fresh else -math.inf  # (a replayed non-member is no candidate)
            entries.append((i, loss, p, logp, key, cls, fresh, head, g))
        for e in entries:
            if e is not None:
                self.window.append(e[1])

        # The cap on new members: the k best eligible candidates of the step.
        allowed = None
        if c.max_new_per_step > 0:
            eligible = [(-e[4], e[0], b) for b, e in enumerate(entries) if e is not None and self.eligible(e, t)]
            allowed = {b for _, _, b in sorted(eligible)[: c.max_new_per_step]}

        # Pass 2: membership.
        for b, e in enumerate(entries):
            if e is None:
                continue
            if e[0] in self.pos:
                self.rescore(e, t)
            elif self.eligible(e, t) and (allowed is None or b in allowed):
                self.offer(e, t)
        if c.balance_replay:
            self.balance_step(entries, replayed)
        self.t += 1

    def balance_step(self, entries, replayed) -> None:
        """The class balance of replay at the end of step t (module docstring)."""
        K = self.heap_classes
        fresh = [0] * K
        n = 0
        for b, e in enumerate(entries):
            if e is None:
                continue
            n += 1
            hc = self.heap_class(e[5])
            if self.balance[hc][1] == 0.0:
                self.balance[hc][1] = 1.0
                self.balance[K][1] += 1.0
            if not (replayed is not None and replayed[b]):
                fresh[hc] += 1
        d = BALANCE_DECAY
        for k in range(K):
            self.balance[k][0] = d * self.balance[k][0] + (1.0 - d) * float(fresh[k])
        self.balance[K][0] = d * self.balance[K][0] + (1.0 - d) * float(n)
        if (self.t + 1) % self.config.reweight_every == 0:
            self.reweight()

    def reweight(self) -> None:
        """New class factors, and every member's replay weight with them."""
        K = self.heap_classes
        total = self.balance[K]
        if total[1] == 0.0:
            return
        share = total[0] / total[1]
        deficit = [max(0.0, share - self.balance[k][0]) if self.balance[k][1] == 1.0 else 0.0 for k in range(K)]
        if not sum(deficit[k] for k in range(K) if self.count[k] > 0) > 0:
            deficit = [1.0] * K
        for k in range(K):
            self.balance[k][2] = deficit[k] / float(max(self.count[k], 1))
        for j, m in enumerate(self.slots):
            self.tree.node[self.tree.P + j] = 0.0 if m is None else self.leaf(m)
        self.tree.rebuild()

    def eligible(self, e, t: int) -> bool:
        """Whether a non-member entry may be admitted at all this step."""
        i, _, p, _, key, *_ = e
        c = self.config
        row = self.row(i)
        if i in self.pos or row[COL_QUARANTINE] > t or key == -math.inf:
            return False
        if c.max_wrong > 0 and row[COL_WRONG] > 0:
            return False
        return not (c.graduation > 0 and p < c.graduation)

    def class_learned(self, cls: int) -> bool:
        """At least a quarter of this step's entries of the class (with margins) are right."""
        ts = (self.tally or {}).get(cls)
        return ts is not None and 4 * ts[0] >= ts[1]

    def rescore(self, e, t: int) -> None:
        i, loss, p, logp, _, _, fresh, head, g = e
        c = self.config
        slot = self.pos[i]
        m = self.slots[slot]
        row = self.row(i)
        if loss < m.best_loss:
            m.best_loss = loss
        m.ticket = max(m.ticket, g) if fresh else m.ticket
        m.logp, m.s, m.key = logp, t, head + m.ticket
        if c.graduation > 0 and p < c.graduation:
            self.vacate(slot)
            self.free.append(slot)
            self.totals["graduated"] += 1
        elif c.max_wrong > 0 and row[COL_WRONG] >= c.max_wrong:
            self.vacate(slot)
            self.free.append(slot)
            row[COL_QUARANTINE] = float(t + c.quarantine_steps)
            self.totals["quarantined"] += 1
        else:
            self.push(slot)
            self.tree.set(slot, self.leaf(m))

    def offer(self, e, t: int) -> None:
        """A candidate that may be admitted: a free slot, or a contest."""
        i, loss, _, logp, key, cls, _, _, g = e
        c = self.config
        new = Member(i, key, g, logp, t, cls, t, loss)
        if self.free:
            self.place(self.free.pop(), new)
            self.totals["admitted"] += 1
            return
        if c.class_quotas:
            largest = max(range(self.heap_classes), key=lambda k: (self.count[k], -k))
            if self.count[cls] + 1 < self.count[largest]:
                victim = self.weakest(largest)
                self.replace(victim, new)
                return
            victim = self.weakest(largest if self.count[cls] == 0 else cls)
        else:
            victim = self.weakest(0)
        if key > victim.key or (key == victim.key and i < victim.index):
            self.replace(victim, new)

    def replace(self, victim: Member, new: Member) -> None:
        slot = self.pos[victim.index]
        self.vacate(slot)
        self.place(slot, new)
        self.totals["evicted"] += 1
        self.totals["admitted"] += 1

    # --- replay draw -------------------------------------------------------

    def draw(self, m: int, exclude=()) -> list[int]:
        """Up to m members' dataset indices, drawn without replacement with
        probability proportional to their weights, skipping `exclude`.

        Draw r (r = 0, 1, ...) reads uniform r and picks a member *with*
        replacement; a pick that is excluded or already drawn is rejected and
        its weight set to 0 until the end of the draw, so it cannot come up
        again. Rejection keeps the distribution of drawing without replacement
        among the others (successive sampling); the weights are restored."""
        c = self.config
        blocked = set(exclude)
        zeroed = []
        out = []
        key = rng.stream_key(c.seed, self.t, STREAM_REPLAY)
        r = 0
        while len(out) < m:
            total = self.tree.total()
            if not total > 0:
                break
            slot = self.tree.find(rng.uniform(key, r) * total)
            r += 1
            index = self.slots[slot].index
            if index in blocked:
                self.tree.set(slot, 0.0)
                zeroed.append(slot)
                continue
            blocked.add(index)
            out.append(index)
        for slot in zeroed:
            self.tree.set(slot, self.leaf(self.slots[slot]))
        return out

    # --- inspection ----------------------------------------------------------

    def members(self) -> dict[int, Member]:
        """Dataset index -> its member record."""
        return {m.index: m for m in self.slots if m is not None}
