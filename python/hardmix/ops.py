"""Typed wrappers over ``torch.ops.hardmix.*``, each with its fake kernel.

The schemas and full contracts live in csrc/ops/library.cpp; these wrappers
add argument normalisation (64-bit integer arguments may be given as any
Python int, read modulo 2**64) and convenience allocators. The fake kernels
let every op run under ``torch.compile`` and ``FakeTensorMode``.
"""

from __future__ import annotations

import torch

from .inputs import LOGIT_DTYPES, TARGET_DTYPES

_I64_MIN = -(1 << 63)
_U64 = 1 << 64


def as_int64(value: int, name: str) -> int:
    """Map any int in [-2**63, 2**64) to the int64 with the same low 64 bits."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not _I64_MIN <= value < _U64:
        raise ValueError(f"{name} must be in [-2**63, 2**64), got {value}")
    return value - _U64 if value >= (1 << 63) else value


# --- random numbers ----------------------------------------------------------


def uniform_(out: torch.Tensor, seed: int, step: int, stream: int, offset: int = 0) -> None:
    """Fill ``out`` (float64, contiguous) with counter-based uniforms in (0, 1).

    ``out.view(-1)[i] = hardmix.rng.uniform(stream_key(seed, step, stream), offset + i)``:
    a pure function of the arguments, bit-identical on CPU, CUDA and in
    :mod:`hardmix.rng`. Mutates ``out`` only.
    """
    torch.ops.hardmix.uniform_fill(
        out,
        as_int64(seed, "seed"),
        as_int64(step, "step"),
        as_int64(stream, "stream"),
        as_int64(offset, "offset"),
    )


def gumbel_(out: torch.Tensor, seed: int, step: int, stream: int, offset: int = 0) -> None:
    """Fill ``out`` (float64, contiguous) with counter-based Gumbel(0, 1) draws.

    Element i is ``-log(-log(u))`` for the uniform :func:`uniform_` would write
    there. Mutates ``out`` only.
    """
    torch.ops.hardmix.gumbel_fill(
        out,
        as_int64(seed, "seed"),
        as_int64(step, "step"),
        as_int64(stream, "stream"),
        as_int64(offset, "offset"),
    )


def uniform(
    n: int, seed: int, step: int, stream: int, offset: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """A new float64 tensor [n] of the uniforms :func:`uniform_` defines."""
    out = torch.empty(n, dtype=torch.float64, device=device)
    uniform_(out, seed, step, stream, offset)
    return out


def gumbel(
    n: int, seed: int, step: int, stream: int, offset: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """A new float64 tensor [n] of the Gumbel draws :func:`gumbel_` defines."""
    out = torch.empty(n, dtype=torch.float64, device=device)
    gumbel_(out, seed, step, stream, offset)
    return out


def _fake_fill(out: torch.Tensor, seed: int, step: int, stream: int, offset: int) -> None:
    torch._check(out.dtype == torch.float64, lambda: f"out must be float64, got {out.dtype}")


torch.library.register_fake("hardmix::uniform_fill")(_fake_fill)
torch.library.register_fake("hardmix::gumbel_fill")(_fake_fill)


# --- order -------------------------------------------------------------------


def stable_order(keys: torch.Tensor) -> torch.Tensor:
    """The stable sorting permutation of ``keys`` (float64 [n], CPU, each in
    [0, 1)): ``torch.sort(keys, stable=True).indices``, int64 [n], in
    expected O(n) for keys spread over [0, 1) (``hardmix::stable_order``)."""
    out = torch.empty(keys.shape, dtype=torch.int64, device=keys.device)
    torch.ops.hardmix.stable_order(keys, out)
    return out


@torch.library.register_fake("hardmix::stable_order")
def _fake_stable_order(keys: torch.Tensor, out: torch.Tensor) -> None:
    torch._check(keys.dim() == 1, lambda: f"keys must be 1-D, got {keys.dim()}-D")
    torch._check(out.shape == keys.shape, lambda: "out must have one entry per key")


# --- margin ------------------------------------------------------------------


def margin(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """True-class logit minus the largest other logit, per row.

    Args:
        logits: ``[B, C]`` float32, float16 or bfloat16, ``C >= 2``, any strides.
        targets: ``[B]`` int64 or int32 on the same device, each in ``[0, C)``.

    Returns:
        ``[B]`` float32: negative where the row is misclassified; NaN where the
        row holds a NaN (and, on CUDA, where the target is out of range: CPU
        raises instead, CUDA would need a host sync to).

    Not differentiable; pass detached logits.
    """
    return torch.ops.hardmix.margin(logits, targets)


@torch.library.register_fake("hardmix::margin")
def _fake_margin(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    torch._check(logits.dim() == 2, lambda: f"logits must be 2-D [B, C], got {logits.dim()}-D")
    torch._check(targets.dim() == 1, lambda: f"targets must be 1-D [B], got {targets.dim()}-D")
    torch._check(
        logits.dtype in LOGIT_DTYPES,
        lambda: f"logits must be float32, float16 or bfloat16, got {logits.dtype}",
    )
    torch._check(
        targets.dtype in TARGET_DTYPES,
        lambda: f"targets must be int64 or int32, got {targets.dtype}",
    )
    torch._check(
        targets.shape[0] == logits.shape[0],
        lambda: f"targets has {targets.shape[0]} entries but logits has {logits.shape[0]} rows",
    )
    torch._check(logits.shape[1] >= 2, lambda: f"logits must have C >= 2, got {logits.shape[1]}")
    return logits.new_empty((logits.shape[0],), dtype=torch.float32)


# --- policy ------------------------------------------------------------------
# policy_update / policy_draw (and, for a sharded table, policy_dynamics /
# policy_find) are driven by hardmix.engine.Engine, which owns
# their state tensors; their contracts are in csrc/ops/library.cpp. Both only
# mutate their declared (a!) arguments, so their fake kernels check nothing
# and return nothing.


@torch.library.register_fake("hardmix::policy_update")
def _fake_policy_update(
    table, pos, slots, links, heap, free, classes_state, tree, window, counters, balance,
    config, seed, indices, losses, margins, classes, priorities, replayed=None, rows=None, slot_class=None,
) -> None:  # fmt: skip
    torch._check(indices.dim() == 1, lambda: f"indices must be 1-D, got {indices.dim()}-D")
    torch._check(losses.shape == indices.shape, lambda: "losses must have one entry per index")


@torch.library.register_fake("hardmix::policy_draw")
def _fake_policy_draw(tree, slots, pos, counters, config, seed, exclude, out, facts=None) -> None:
    torch._check(out.dtype == torch.int64, lambda: f"out must be int64, got {out.dtype}")
    torch._check(out.numel() >= 1, lambda: "out must have m + 1 >= 1 entries")
    if facts is not None:
        torch._check(facts.numel() == exclude.numel() + out.numel(), lambda: "facts must have E + m + 1 entries")


@torch.library.register_fake("hardmix::policy_dynamics")
def _fake_policy_dynamics(table, config, t, indices, losses, margins, classes, priorities, rows) -> None:
    torch._check(rows.shape[0] == indices.shape[0], lambda: "rows must have one row per index")


@torch.library.register_fake("hardmix::policy_find")
def _fake_policy_find(pos, slots, config, indices, out) -> None:
    torch._check(out.shape == indices.shape, lambda: "out must have one entry per index")


@torch.library.register_fake("hardmix::replay_weights")
def _fake_replay_weights(w, drawn_w, in_fresh, eligible, m_all, keep, n, f_all, scale, out) -> None:
    torch._check(out.shape == w.shape, lambda: "out must have one entry per weight")


OPS = ("uniform_fill", "gumbel_fill", "stable_order", "margin", "policy_update", "policy_draw", "policy_dynamics",
       "policy_find", "replay_weights")
"""Every op of the library, by name in ``torch.ops.hardmix``."""

CUDA_OPS = ("uniform_fill", "gumbel_fill", "margin", "policy_update", "policy_draw")
"""The ops with a CUDA kernel. policy_dynamics and policy_find serve the
sharded table, which lives on the CPU (an unsharded engine finds members by
indexing its pos array, wherever it is); stable_order the epoch plan,
made on the host."""
