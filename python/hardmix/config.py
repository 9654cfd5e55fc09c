"""The policy's knobs and the constants shared by the reference and the engine.

:class:`PolicyConfig` is the one description of a policy: the pure-Python
reference (:mod:`hardmix.reference`) and the native engine
(:mod:`hardmix.engine`) both take it, and must behave identically under it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# The state's layouts (hardmix.layout), importable from here too.
from .layout import (  # noqa: F401
    BALANCE_COLUMNS,
    COL_CORRECT,
    COL_EMA,
    COL_FACTOR,
    COL_FORGET,
    COL_FRESH,
    COL_LAST_LOSS,
    COL_LAST_SEEN,
    COL_QUARANTINE,
    COL_SEEN,
    COL_SEEN_CLASS,
    COL_WRONG,
    TABLE_COLUMNS,
)

# Random-number streams (the `stream` counter of hardmix.rng / the fill ops).
STREAM_ADMIT = 1  # Gumbel noise of admission keys, by dataset index
STREAM_REPLAY = 2  # uniforms of the replay draw, by draw number
STREAM_EPOCH = 3  # ReplaySampler: the fresh order of an epoch (step = epoch), by dataset index
STREAM_FILL = 4  # ReplaySampler: fresh examples filling a short replay (step = batch), by try

# Built-in scores, and their codes in the native config vector.
SCORES = ("loss", "margin", "loss_rank", "forgetting", "given")

BALANCE_DECAY = 0.9  # the EMA's decay per step: it follows the fresh stream's classes over ~10 steps

# Replay weights are rebased when gamma * lam * (t - t_ref) exceeds this, so
# exp() never overflows (hardmix.reference: "t_ref is rebased").
REBASE_EXPONENT = 64.0
# Replay weights are exp(min(gamma * (log p + lam * age), this)): at most
# e^600 (~4e260), so R of them times a class factor never overflow the sum
# tree's total (a priority of 1e308 at gamma = 2 would be inf).
MAX_WEIGHT_EXPONENT = 600.0


@dataclass(frozen=True)
class PolicyConfig:
    """Every knob of the policy (its rules: :mod:`hardmix.reference`).

    Args:
        num_examples: N, the dataset size; indices are in [0, N).
        capacity: R, the reservoir's size, 1 <= R.
        seed: seed of every random draw (any int, read modulo 2**64).
        score: priority p >= 0 of an example: ``"loss"`` (max(loss, 0)),
            ``"margin"`` (softplus(-margin): decreasing in the margin, needs
            logits/targets), ``"loss_rank"`` (the loss's mid-rank percentile
            among the last ``rank_window`` valid losses, in (0, 1)),
            ``"forgetting"`` (max(loss, 0) * (1 + forget_boost * forgetting
            events)), or ``"given"`` (the caller passes priorities).
        alpha: admission exponent: keys are alpha * log p + lam * step + Gumbel.
            0 is classic reservoir sampling (p ignored), large is greedy top-k.
        lam: staleness decay per step (lambda): a score taken at step s weighs
            exp(-lam * (t - s)).
        gamma: replay exponent: members are drawn with probability proportional
            to decayed priority ** gamma; 0 is uniform replay.
        ema_beta: smoothing of the loss EMA in the dynamics table, in [0, 1).
        graduation: a member whose fresh priority falls below this leaves (it
            is learned), and candidates below it are not admitted; 0 disables.
        max_wrong: suspected mislabeling. An example is judged only in the
            steps where its class is being learned (a quarter or more of the
            step's entries of its class are right): right once, it is
            learnable as labeled and never suspected again; wrong, it counts
            a strike. With one strike or more it is not admitted; a member
            with ``max_wrong`` strikes leaves and is quarantined. Needs
            margins (logits and targets); 0 disables.
        quarantine_steps: how long a quarantined example may not be admitted.
        max_new_per_step: admit at most this many new members per step (the
            top keys among the step's candidates); 0 means no cap.
        class_quotas: balance the reservoir across classes (needs classes).
        num_classes: the number of classes when classes are given; required
            (>= 1) with class_quotas.
        balance_replay: draw replay by class so that each batch, fresh and
            replayed together, is as close to class-balanced as the fresh
            stream allows: class c's members share the weight
            max(0, S / K_seen - F_c), where F_c is the recent number of fresh
            (not replayed) entries of class c per step, S the recent batch
            size and K_seen the classes seen so far (all equal when every
            class is at or above its share). Needs class_quotas.
        reweight_every: the class weights of ``balance_replay`` are
            recomputed every this many steps (O(R) each time).
        forget_boost: the weight of forgetting events in the "forgetting" score.
        rank_window: how many recent valid losses "loss_rank" compares against.
        nonfinite: what a NaN/inf loss (or margin, or given priority) does:
            ``"skip"`` (the entry is ignored and counted) or ``"raise"``.
    """

    num_examples: int
    capacity: int
    seed: int = 0
    score: str = "loss"
    alpha: float = 1.0
    lam: float = 0.0
    gamma: float = 1.0
    ema_beta: float = 0.9
    graduation: float = 0.0
    max_wrong: int = 0
    quarantine_steps: int = 0
    max_new_per_step: int = 0
    class_quotas: bool = False
    num_classes: int = 0
    balance_replay: bool = False
    reweight_every: int = 1
    forget_boost: float = 1.0
    rank_window: int = 256
    nonfinite: str = "skip"

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, want: str) -> None:
            if not ok:
                raise ValueError(f"PolicyConfig: {name} must be {want}, got {getattr(self, name)!r}")

        def is_int(name: str) -> bool:
            v = getattr(self, name)
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(name: str) -> bool:
            v = getattr(self, name)
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(is_int("num_examples") and self.num_examples >= 1, "num_examples", "an int >= 1")
        need(is_int("capacity") and 1 <= self.capacity < 2**31, "capacity", "an int in [1, 2**31)")
        need(is_int("seed") and -(2**63) <= self.seed < 2**64, "seed", "an int in [-2**63, 2**64)")
        need(self.score in SCORES, "score", f"one of {SCORES}")
        for name in ("alpha", "lam", "gamma", "graduation", "forget_boost"):
            need(is_num(name) and getattr(self, name) >= 0, name, "a finite number >= 0")
        need(is_num("ema_beta") and 0 <= self.ema_beta < 1, "ema_beta", "a number in [0, 1)")
        for name in ("max_wrong", "quarantine_steps", "max_new_per_step", "num_classes"):
            need(is_int(name) and 0 <= getattr(self, name) < 2**31, name, "an int in [0, 2**31)")
        need(is_int("rank_window") and 1 <= self.rank_window < 2**31, "rank_window", "an int in [1, 2**31)")
        need(isinstance(self.class_quotas, bool), "class_quotas", "a bool")
        need(isinstance(self.balance_replay, bool), "balance_replay", "a bool")
        need(not self.balance_replay or self.class_quotas, "balance_replay", "False without class_quotas")
        need(is_int("reweight_every") and 1 <= self.reweight_every < 2**31, "reweight_every", "an int in [1, 2**31)")
        need(not self.class_quotas or self.num_classes >= 1, "num_classes", ">= 1 when class_quotas is on")
        need(self.nonfinite in ("skip", "raise"), "nonfinite", "'skip' or 'raise'")

    def as_dict(self) -> dict:
        return asdict(self)
