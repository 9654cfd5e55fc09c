"""The checks of an update's or a draw's inputs above the ops, defined once
for every layer (the sampler, the engine, the margin op's wrapper,
checkpoint checks), so that no two of them accept different things or say
it differently: the dtypes each input may have, its shape (:func:`vector`,
:func:`logits`) and the value checks an update makes before it is queued
(:func:`value_error`). Narrower integers and half floats are widened
exactly before the ops. The ops check again (they are public too), in
their own words for dtypes (C++ names: "Float", "Long")."""

from __future__ import annotations

import torch

INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
"""Dataset indices (``indices``, ``exclude``, ``set_fresh``)."""

LOSS_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
"""Per-example losses."""

HALF_DTYPES = (torch.float16, torch.bfloat16)
"""Losses widened to float32 (exactly) on the way in."""

SCORE_DTYPES = (torch.float32, torch.float64)
"""Margins and priorities."""

TARGET_DTYPES = (torch.int64, torch.int32)
"""Targets and classes."""

LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
"""Logits (the margin op reads them as they are)."""

CLASS_LIMIT = 1 << 20
"""Targets must lie in [0, CLASS_LIMIT) when neither logits nor num_classes
bounds them (classes index per-class tables)."""


def _where(op: str) -> str:
    return f"{op}: " if op else ""


def vector(name: str, x, B: int | None, kinds: tuple[torch.dtype, ...], op: str = "",
           device: torch.device | None = None) -> torch.Tensor:
    """``x`` itself when it is a 1-D tensor of ``B`` entries (any length for
    None) with a dtype in ``kinds`` (and, with ``device``, on the CPU or on
    that device); else a TypeError or ValueError naming ``name`` (after
    ``op: ``) and what it got."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{_where(op)}{name} must be a torch.Tensor, got {type(x).__name__}")
    if device is not None and not x.is_cpu and x.device != device:
        raise ValueError(f"{_where(op)}{name} must be on the CPU or on the engine's device {device}, got {x.device}")
    if x.dim() != 1:
        raise ValueError(f"{_where(op)}{name} must be a 1-D tensor [B], got shape {list(x.shape)}")
    if B is not None and x.shape[0] != B:
        raise ValueError(f"{_where(op)}{name} has {x.shape[0]} entries but indices has {B}")
    if x.dtype not in kinds:
        raise TypeError(f"{_where(op)}{name} must have dtype {' or '.join(str(k) for k in kinds)}, got {x.dtype}")
    return x


def logits(x, B: int, op: str = "") -> torch.Tensor:
    """``x`` itself when it is a [B, C] tensor of a dtype in LOGIT_DTYPES,
    else a TypeError or ValueError naming what it got."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{_where(op)}logits must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] != B:
        raise ValueError(f"{_where(op)}logits must have shape [B={B}, C], got {list(x.shape)}")
    if x.dtype not in LOGIT_DTYPES:
        hint = " (for a float64 model's logits: logits.float())" if x.dtype == torch.float64 else ""
        raise TypeError(f"{_where(op)}logits must have dtype {' or '.join(str(k) for k in LOGIT_DTYPES)}, "
                        f"got {x.dtype}{hint}")
    return x


def kinds_error(config, margins: bool, classes: bool, priorities: bool) -> str | None:
    """What an update with these parts lacks, or has too many of, under
    ``config`` (a PolicyConfig), in the ops' words; None if it fits."""
    if config.score == "margin" and not margins:
        return "score 'margin' needs margins (pass logits and targets)"
    if (config.score == "given") != priorities:
        return "priorities must be given exactly when score is 'given'"
    if config.class_quotas and not classes:
        return "class_quotas needs classes (pass targets)"
    return None


def value_error(config, C: int | None, losses=None, margins=None, classes=None, priorities=None) -> str | None:
    """What is wrong with an update's values (host tensors) under ``config``
    (a PolicyConfig), or None: targets outside [0, C) for C logit columns,
    [0, num_classes) when set, else [0, CLASS_LIMIT); negative priorities;
    under ``nonfinite="raise"`` a NaN or infinity. The first bad entry is
    named; all is well after one pass over each input."""
    if classes is not None and classes.numel():
        limits = ([(C, "logits")] if C is not None else []) + (
            [(config.num_classes, "num_classes")] if config.num_classes > 0 else [])
        limits = limits or [(CLASS_LIMIT, "limit")]
        lo, top = (int(v) for v in torch.aminmax(classes))
        for hi, kind in limits:
            if lo < 0 or top >= hi:  # (the first bad one named)
                k = int(((classes < 0) | (classes >= hi)).nonzero()[0])
                text = {"logits": f"[0, {C}) (logits has {C} classes)",
                        "num_classes": f"[0, num_classes={hi})",
                        "limit": f"[0, {hi}) (the limit without logits or num_classes: pass num_classes "
                                 f"for more classes)"}[kind]
                return f"targets[{k}] = {int(classes[k])} is out of range {text}"
    if priorities is not None:
        neg = (priorities < 0).nonzero()
        if neg.numel():
            k = int(neg[0])
            return f"priorities[{k}] = {float(priorities[k])} is negative"
    if config.nonfinite == "raise":
        for name, v in (("losses", losses), ("margins", margins), ("priorities", priorities)):
            if v is not None:
                bad = (~torch.isfinite(v)).nonzero()
                if bad.numel():
                    k = int(bad[0])
                    return f"{name}[{k}] = {float(v[k])} is not finite (nonfinite='raise')"
    return None
