"""An update's arguments, checked and copied into the entry that
ReplaySampler.update() queues (hardmix.update_queue) and logs
(hardmix.checkpoint_log): a dict of ``indices``, ``losses``, ``margins``,
``classes``, ``priorities`` (and ``logits`` with store_logits), none of them
the caller's tensors, so that the caller may reuse its buffers before the
update is applied. Host inputs are checked in full here; GPU inputs stay on
the GPU where the sampler allows it, their value checks deferred to when the
update is applied (the entry is marked ``deferred``). The argument checks
themselves are hardmix.inputs'.
"""

from __future__ import annotations

from typing import Callable

import torch

from . import inputs as _inputs
from . import ops as _ops
from .config import PolicyConfig
from .engine import Engine
from .inputs import HALF_DTYPES, INDEX_DTYPES, LOSS_DTYPES, SCORE_DTYPES, TARGET_DTYPES


def index_tensor(op: str, indices) -> torch.Tensor:
    """``indices`` checked (hardmix.inputs.vector) as int64."""
    indices = _inputs.vector("indices", indices, None, INDEX_DTYPES, op=op)
    return indices if indices.dtype == torch.int64 else indices.long()


def update_entry(indices, losses, logits, targets, priorities, *, expected: Callable, engine: Engine,
                 config: PolicyConfig, state_device: torch.device, store_logits: bool, width: int | None,
                 defer: bool) -> dict:
    """The entry of an update (see the module docstring), or ValueError /
    TypeError naming the argument and value. ``expected(op, indices)``: the
    record of the batch the indices must belong to (or its error);
    ``engine``: where the state is, and its ``score_fn``; ``width``: the
    logits' width at the first update, kept with ``store_logits`` (None:
    none yet); ``defer``: GPU inputs may have their values checked when the
    update is applied."""
    idx = index_tensor("update", indices)
    given = (losses, logits, targets, priorities)
    devices = {} if _on_host(idx, given) else _devices(idx, given, engine.device, state_device)
    rec = expected("update", idx)
    B = idx.numel()
    # Inputs on a GPU stay there (one process): their values are checked
    # when the update is applied, by the device or the host (the sampler's _apply).
    deferred = defers(devices, defer)
    host_checks = not deferred

    def vec(name: str, x, kinds) -> torch.Tensor:
        x = _inputs.vector(name, x, B, kinds, op="update")
        x = x.detach() if x.requires_grad else x
        return x if x.is_cpu or not host_checks else x.cpu()  # (also a score_fn's priorities)

    loss = vec("losses", losses, LOSS_DTYPES)
    loss = loss.float() if loss.dtype in HALF_DTYPES else loss.clone()
    margins = classes = prio = None
    if targets is not None:
        tgt = vec("targets", targets, TARGET_DTYPES)
        if logits is not None:
            _inputs.logits(logits, B, op="update")
            C = logits.shape[1]
            lg = logits.detach() if logits.requires_grad else logits  # (targets, integers, never need it)
            where = logits.device if deferred else engine.device
            if host_checks and logits.is_cpu and (config.num_classes == 0 or config.num_classes >= C):
                # (the CPU margin op refuses targets outside [0, C), the narrowest range to check here:
                # the shared words come from value_error once it has)
                try:
                    margins = _margins(lg, targets, tgt, where)
                except RuntimeError:
                    if what := _inputs.value_error(config, C, classes=tgt):
                        raise ValueError("update: " + what) from None
                    raise
            else:
                if host_checks and (what := _inputs.value_error(config, C, classes=tgt)):  # (before the margin op)
                    raise ValueError("update: " + what)
                margins = _margins(lg, targets, tgt, where)
        elif host_checks and (what := _inputs.value_error(config, None, classes=tgt)):
            raise ValueError("update: " + what)
        # (a copy, as of the losses: applied replay_lag batches later, the caller may reuse its buffers)
        classes = tgt.clone() if tgt.dtype == torch.int64 else tgt.long()
    elif logits is not None:
        raise ValueError("update: logits need targets (pass both, or targets alone for classes)")
    if config.score == "margin" and margins is None:
        raise ValueError("update: score 'margin' needs logits and targets")
    if store_logits:
        if logits is None:
            raise ValueError("update: store_logits needs logits (and targets)")
        width = width if width is not None else logits.shape[1]
        if logits.shape[1] != width:
            raise ValueError(f"update: logits must have {width} columns (store_logits keeps logits of that "
                             f"width since the first update), got {logits.shape[1]}")
    if config.class_quotas and classes is None:
        raise ValueError("update: class_quotas needs targets")
    if priorities is None and engine.score_fn is not None:
        priorities = torch.as_tensor(engine.score_fn(idx.cpu(), loss, margins))
    if config.score == "given":
        if priorities is None:
            raise ValueError("update: score 'given' needs priorities (or a score_fn)")
        prio = vec("priorities", priorities, SCORE_DTYPES).clone()
    elif priorities is not None:
        raise ValueError(f"update: priorities are only taken with score='given', not {config.score!r}")
    # (classes were checked above)
    if host_checks and (what := _inputs.value_error(config, None, loss, margins, None, prio)):
        raise ValueError("update: " + what)
    entry = {"indices": rec.indices, "losses": loss, "margins": margins, "classes": classes,
             "priorities": prio}
    if store_logits:  # (a copy: applied later, the caller may reuse its buffers)
        entry["logits"] = logits.detach().to(torch.float32 if host_checks else logits.dtype, copy=True)
        if host_checks:
            entry["logits"] = entry["logits"].cpu()
    if deferred:  # values unchecked (kept in checkpoints, so that a restore checks them)
        entry["deferred"] = True
        entry["C"] = logits.shape[1] if logits is not None else None  # (for the check of the targets)
    return entry


def _on_host(idx: torch.Tensor, given: tuple) -> bool:
    """Whether the indices and every tensor given are on the host."""
    if not idx.is_cpu:
        return False
    for t in given:
        if isinstance(t, torch.Tensor) and not t.is_cpu:
            return False
    return True


def _devices(idx: torch.Tensor, given: tuple, state: torch.device, state_device: torch.device) -> dict:
    """Each tensor's device by argument name (the indices' only off the
    host: they are only compared with the batch yielded), checked: on the
    CPU or a CUDA device, on the state's GPU (or ``state_device``'s), all on
    one device; else a ValueError naming them."""
    names = ("losses", "logits", "targets", "priorities")
    devices = {name: t.device for name, t in zip(names, given) if isinstance(t, torch.Tensor)}
    if not idx.is_cpu:
        devices["indices"] = idx.device
    for name, d in devices.items():
        if d.type not in ("cpu", "cuda"):
            raise ValueError(f"update: {name} must be on the CPU or a CUDA device, got {d}")
        if d.type == "cuda" and state.type == "cuda" and d != state:
            raise ValueError(f"update: the sampler's state is on {state}, got {name} on {d}")
        want = state_device
        if d.type == "cuda" and want.type == "cuda" and want.index is not None and d.index != want.index:
            raise ValueError(f"update: state_device is {want}, got {name} on {d}")
    if len(set(devices.values())) > 1:
        raise ValueError("update: all tensors must be on one device (indices may be on the CPU), got "
                         + ", ".join(f"{k} on {v}" for k, v in devices.items()))
    return devices


def defers(devices: dict, allowed: bool) -> bool:
    """Whether an update's values are checked when it is applied instead of
    now: inputs on a GPU (``devices``: each off-host input's), where
    ``allowed``."""
    return allowed and any(d.type == "cuda" for d in devices.values())


def empty_entry(config: PolicyConfig, sharded: bool) -> dict:
    """An update with no examples, as ``config`` has it (``sharded``: with
    its rows of the sharded table)."""
    entry = {"indices": torch.empty(0, dtype=torch.int64), "losses": torch.empty(0),
             "margins": torch.empty(0) if config.score == "margin" else None,
             "classes": torch.empty(0, dtype=torch.int64) if config.class_quotas else None,
             "priorities": torch.empty(0) if config.score == "given" else None}
    if sharded:
        entry["rows"] = torch.zeros(0, 8, dtype=torch.float64)
    return entry


def to_host(entry: dict) -> tuple:
    """Starts the copy of an update's GPU tensors to pinned host memory on
    the current stream (B numbers each: never the logits) and returns
    (event recorded after it, the host tensors). The entry keeps its GPU
    tensors until the copy is complete (the sampler's _apply): a checkpoint that logs
    it meanwhile reads them in stream order, never a copy in flight."""
    def copy(v):
        if not (isinstance(v, torch.Tensor) and v.is_cuda):
            return v
        return torch.empty(v.shape, dtype=v.dtype, pin_memory=True).copy_(v, non_blocking=True)

    host = {k: copy(v) for k, v in entry.items()}
    gpu = next(v.device for v in entry.values() if isinstance(v, torch.Tensor) and v.is_cuda)
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(gpu))
    return done, host


def _margins(logits: torch.Tensor, targets: torch.Tensor, targets_host: torch.Tensor,
             where: torch.device) -> torch.Tensor:
    """Margins [B] on ``where``, computed where the logits are (B floats
    cross, not B x C)."""
    if logits.device.type != "cpu":
        try:
            return _ops.margin(logits, targets).to(where)
        except (RuntimeError, NotImplementedError):  # no CUDA kernels in this build
            pass
    out = _ops.margin(logits.cpu(), targets_host.cpu())
    return out if where.type == "cpu" else out.to(where)
