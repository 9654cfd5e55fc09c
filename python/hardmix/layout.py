"""Layouts of the native engine's state and config vectors, defined once.

Each tuple lists, in order, what ``csrc/kernels/policy_layout.h`` numbers in one enum
(named beside it); the ``*_<FIELD>`` constants are positions in it. Everything
in Python that indexes a state tensor or the config vector by position uses
these names; ``tests/test_layout.py`` reads ``policy_layout.h`` and checks every
position against it.
"""

from __future__ import annotations

# table [N, 8] (float64), per example (policy_layout.h: Col)
TABLE_COLUMNS = (
    "last_loss",  # the last finite loss seen
    "ema_loss",  # EMA of the loss: first value as is, then beta * ema + (1 - beta) * loss
    "times_seen",  # valid updates of this example
    "last_seen",  # the step of the last valid update, -1 if never
    "last_correct",  # 1 / 0 from the last margin seen (margin > 0), -1 if never known
    "forgetting",  # correct -> incorrect transitions (Toneva et al. 2019)
    "wrong",  # sightings wrong while its class was learned, none right; -1 once right then (reference: dynamics)
    "quarantine_until",  # not admitted while step < this
)
(
    COL_LAST_LOSS,
    COL_EMA,
    COL_SEEN,
    COL_LAST_SEEN,
    COL_CORRECT,
    COL_FORGET,
    COL_WRONG,
    COL_QUARANTINE,
) = range(len(TABLE_COLUMNS))

# slots [R, 8] (float64), the member of each slot (policy_layout.h: SlotField)
SLOT_FIELDS = ("index", "key", "logp", "step", "class", "admitted", "best_loss", "ticket")
(
    SLOT_INDEX,  # dataset index, -1: empty
    SLOT_KEY,  # admission key (the heaps' order)
    SLOT_LOGP,  # log priority of the last score
    SLOT_STEP,  # step of the last score
    SLOT_CLASS,
    SLOT_ADMITTED,  # admission step
    SLOT_BEST_LOSS,
    SLOT_TICKET,  # best admission draw since admission
) = range(len(SLOT_FIELDS))

# links [R, 4] (int32), leftist-heap links with class quotas (policy_layout.h: Link)
LINK_FIELDS = ("left", "right", "parent", "npl")

# classes [K, 2] (int64), per heap class: one heap per class with class quotas, else
# one heap (policy_layout.h: HeapClassField)
HEAP_CLASS_FIELDS = ("root", "count")  # the slot of the heap's weakest member (-1: none); its members
CLASS_ROOT, CLASS_COUNT = range(len(HEAP_CLASS_FIELDS))

# balance [K + 1, 3] (float64): rows 0..K-1 per class, row K the batch-wide
# figures (policy_layout.h: BalanceField)
BALANCE_COLUMNS = (
    "fresh",  # class rows: EMA of the step's fresh (not replayed) entries of the class; total row: of all entries
    "seen",  # class rows: 1 once the class appeared in a valid entry; total row: how many classes did
    "factor",  # class rows: replay weight of each member of the class, from the last reweighting
)
COL_FRESH, COL_SEEN_CLASS, COL_FACTOR = range(len(BALANCE_COLUMNS))

# counters [16] (int64) (policy_layout.h: Counter); the rest are unused
COUNTERS = (
    "step t",
    "t_ref",
    "nonfinite total",
    "admitted total",
    "evicted total",
    "graduated total",
    "quarantined total",
    "window count",
    "window head",
    "free stack top",
    "error code",  # CUDA only: the first bad input of a skipped step (ERROR_CODES)
    "error position",  # its position in the batch (or in exclude)
    "error value",  # the value (an int64, or a double's bits)
)
N_COUNTERS = 16
(
    CTR_T,
    CTR_T_REF,
    CTR_NONFINITE,
    CTR_ADMITTED,
    CTR_EVICTED,
    CTR_GRADUATED,
    CTR_QUARANTINED,
    CTR_WIN_COUNT,
    CTR_WIN_HEAD,
    CTR_FREE_TOP,
    CTR_ERR_CODE,
    CTR_ERR_AT,
    CTR_ERR_VALUE,
) = range(len(COUNTERS))
CTR_TOTALS = slice(CTR_NONFINITE, CTR_QUARANTINED + 1)  # nonfinite, admitted, evicted, graduated, quarantined

# the error codes of a skipped CUDA step, 1.. (policy_layout.h: ErrorCode; 0: none)
ERROR_CODES = ("index", "class", "negative", "nonfinite", "exclude")

# the config vector [20] (float64) (policy_layout.h: ConfigField); the rest are 0
CONFIG_FIELDS = (
    "alpha",
    "lam",
    "gamma",
    "ema_beta",
    "graduation",
    "max_wrong",
    "quarantine_steps",
    "max_new_per_step",
    "score",  # its position in config.SCORES (policy_layout.h: Score)
    "forget_boost",
    "class_quotas",  # 0 / 1
    "num_classes",
    "raise_nonfinite",  # 1: nonfinite == "raise"
    "shard_world",  # 0: the whole table here; else the number of shards
    "shard_rank",  # this shard: the indices i with i % world == rank
    "num_examples",
    "balance_replay",  # 0 / 1
    "reweight_every",
)
N_CONFIG = 20
