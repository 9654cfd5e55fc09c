"""What a ReplaySampler checkpoint must hold, checked before any of it is used.

:func:`check_state` validates the sampler's part of a ``state_dict()``: every
key present, every field of the right type and in range, the batch records
and the logged updates as ``update()`` would have them (indices in [0, N),
matching lengths and dtypes, classes in range). The engine's part (its
tensors and their structural invariants) is :mod:`hardmix.state_check`'s.
A failure raises one ValueError that names the field. Cost: O(size of the
logged updates and batch records) plus O(N) for the fresh sets.
"""

from __future__ import annotations

import torch

from .batch_record import STATE_KEYS as BATCH_KEYS
from .inputs import LOGIT_DTYPES

STEP_LIMIT = 1 << 62
"""Steps, epochs and positions beyond this are refused (no run gets there)."""

_FLOATS = (torch.float32, torch.float64)


class _Check:
    def __init__(self, where: str = "load_state_dict"):
        self.where = where

    def fail(self, field: str, what: str):
        raise ValueError(f"{self.where}: state field {field} {what}")

    def has(self, d: dict, keys, field: str) -> None:
        if not isinstance(d, dict):
            self.fail(field, f"must be a dict, got {type(d).__name__}")
        missing = [k for k in keys if k not in d]
        if missing:
            self.fail(field, f"lacks {', '.join(map(repr, missing))}")

    def int_(self, v, field: str, lo: int = 0, hi: int = STEP_LIMIT) -> int:
        if isinstance(v, torch.Tensor) and v.dim() == 0 and not v.is_floating_point() and v.dtype != torch.bool:
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(field, f"must be an int, got {type(v).__name__}")
        if not lo <= v < hi:
            self.fail(field, f"= {v} is out of range [{lo}, {hi})")
        return v

    def tensor(self, v, field: str, dtypes, n: int | None = None, dim: int = 1) -> torch.Tensor:
        if not isinstance(v, torch.Tensor):
            self.fail(field, f"must be a tensor, got {type(v).__name__}")
        if v.dtype not in dtypes:
            self.fail(field, f"must have dtype {' or '.join(map(str, dtypes))}, got {v.dtype}")
        if v.dim() != dim or (n is not None and v.shape[0] != n):
            want = f"[{n if n is not None else 'n'}{', C' if dim == 2 else ''}]"
            self.fail(field, f"must have shape {want}, got {list(v.shape)}")
        return v

    def indices(self, v, field: str, N: int, n: int | None = None, unique: bool = True) -> torch.Tensor:
        v = self.tensor(v, field, (torch.int64,), n)
        host = v.cpu()
        bad = ((host < 0) | (host >= N)).nonzero()
        if bad.numel():
            k = int(bad[0])
            self.fail(f"{field}[{k}]", f"= {int(host[k])} is out of range [0, {N})")
        if unique and torch.unique(host).numel() != host.numel():
            self.fail(field, "holds an index twice")
        return v

    def classes(self, v, field: str, n: int, limit: int) -> None:
        v = self.tensor(v, field, (torch.int64,), n).cpu()
        bad = ((v < 0) | (v >= limit)).nonzero()
        if bad.numel():
            k = int(bad[0])
            self.fail(f"{field}[{k}]", f"= {int(v[k])} is out of range [0, {limit})")


def check_signature(sig: dict) -> None:
    """Raise ValueError unless a saved signature holds plain values only
    (None, bools, numbers, strings, and lists or str-keyed dicts of them)
    with ``policy`` a dict, so that comparing it with this sampler's cannot
    fail."""
    c = _Check()
    if not isinstance(sig.get("policy", {}), dict):
        c.fail("signature.policy", f"must be a dict, got {type(sig['policy']).__name__}")

    def walk(v, path: str) -> None:
        if v is None or isinstance(v, (bool, int, float, str)):
            return
        if isinstance(v, (list, tuple)):
            for k, x in enumerate(v):
                walk(x, f"{path}[{k}]")
            return
        if isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    c.fail(path, f"has a key {k!r} that is not a string")
                walk(x, f"{path}.{k}")
            return
        c.fail(path, f"must be a plain value (None, a bool, number or string, or a list or dict of them), "
                     f"got {type(v).__name__}")

    walk(sig, "signature")


def check_state(state: dict, *, num_examples: int, capacity: int, class_limit: int) -> None:
    """Raise ValueError naming the first field of a sampler state (version 2
    or 3, already migrated to 3's keys) that is missing, mistyped or out of
    range. ``class_limit`` bounds the class count and, until it is known,
    the logged classes."""
    c = _Check()
    N = num_examples
    c.has(state, ("signature", "position", "plan", "fresh", "next_fresh", "batches", "engine", "updates_start",
                  "dynamics_until", "updates", "prev_totals", "replay_lag", "classes"), "(the state)")
    pos = state["position"]
    c.has(pos, ("epoch", "epoch_start", "batch", "yielded", "cursor"), "position")
    for k in ("epoch", "epoch_start", "batch", "yielded"):
        c.int_(pos[k], f"position.{k}")
    cursor = pos["cursor"]  # (its range depends on the fresh set: load_state_dict checks it)
    if not isinstance(cursor, (list, tuple)):
        c.fail("position.cursor", f"must be a list [pass, position], got {type(cursor).__name__}")
    for k, v in enumerate(cursor):
        c.int_(v, f"position.cursor[{k}]", -STEP_LIMIT)
    plan = state["plan"]
    if (not isinstance(plan, (list, tuple)) or len(plan) != 2
            or not all(isinstance(p, (list, tuple)) for p in plan) or len(plan[0]) != len(plan[1])):
        c.fail("plan", "must be two sequences of equal length (fresh and replay counts per batch)")
    for f in ("fresh", "next_fresh"):
        if state[f] is not None:
            c.indices(state[f], f, N)
    start = c.int_(state["updates_start"], "updates_start")
    c.int_(state["dynamics_until"], "dynamics_until")
    if state["replay_lag"] is not None:
        c.int_(state["replay_lag"], "replay_lag")
    classes = state["classes"]
    if classes is not None:
        c.int_(classes, "classes", 0, class_limit + 1)
    c.tensor(state["prev_totals"], "prev_totals", (torch.int64,), 5)
    if not bool((state["prev_totals"] >= 0).all()):
        c.fail("prev_totals", "holds a negative total")
    if "errors" in state and not (isinstance(state["errors"], list)
                                  and all(isinstance(e, str) for e in state["errors"])):
        c.fail("errors", "must be a list of messages")
    if "found" in state:
        c.int_(state["found"], "found")
    if not isinstance(state["engine"], dict):
        c.fail("engine", f"must be a dict, got {type(state['engine']).__name__}")
    eng = state["engine"]
    if "logits" in eng:  # store_logits: each member's logits at admission, as wide as the logits were
        lg = c.tensor(eng["logits"], "engine.logits", (torch.float32,), capacity, dim=2)
        c.tensor(eng.get("logit_owner"), "engine.logit_owner", (torch.int64,), capacity)
        if classes is not None and lg.shape[1] != max(classes, 1):
            c.fail("classes", f"= {classes} does not match the stored logits' width {lg.shape[1]}")
    limit = classes if classes else class_limit
    updates = state["updates"]
    if updates is not None and not isinstance(updates, (list, tuple)):
        c.fail("updates", f"must be a list, got {type(updates).__name__}")
    for n, u in enumerate(updates or []):
        f = f"updates[{n}]"
        c.has(u, ("indices", "losses", "margins", "classes", "priorities"), f)
        idx = c.indices(u["indices"], f + ".indices", N, unique=False)  # (all ranks' batches, padded)
        B = idx.shape[0]
        c.tensor(u["losses"], f + ".losses", _FLOATS, B)
        if u["margins"] is not None:
            c.tensor(u["margins"], f + ".margins", _FLOATS, B)
        if u["classes"] is not None:
            c.classes(u["classes"], f + ".classes", B, u.get("C") or limit)
        if u["priorities"] is not None:
            c.tensor(u["priorities"], f + ".priorities", _FLOATS, B)
        if u.get("replayed") is not None:
            c.tensor(u["replayed"], f + ".replayed", (torch.bool,), B)
        if u.get("logits") is not None:
            c.tensor(u["logits"], f + ".logits", LOGIT_DTYPES, B, dim=2)
        if u.get("rows") is not None:
            rows = c.tensor(u["rows"], f + ".rows", (torch.float64,), B, dim=2)
            if rows.shape[1] != 8:
                c.fail(f + ".rows", f"must have shape [{B}, 8], got {list(rows.shape)}")
        if "first" in u:
            c.has(u["first"], ("classes", "lag"), f + ".first")
            c.int_(u["first"]["classes"], f + ".first.classes", 0, class_limit + 1)
            if u["first"]["lag"] is not None:
                c.int_(u["first"]["lag"], f + ".first.lag")
        if "error" in u and not isinstance(u["error"], str):
            c.fail(f + ".error", "must be a message")
    batches = state["batches"]
    if not isinstance(batches, (list, tuple)):
        c.fail("batches", f"must be a list, got {type(batches).__name__}")
    for n, r in enumerate(batches):
        f = f"batches[{n}]"
        c.has(r, BATCH_KEYS, f)
        c.int_(r["g"], f + ".g", start)
        idx = c.indices(r["indices"], f + ".indices", N)
        B = idx.shape[0]
        parts = [c.int_(r[k], f"{f}.{k}", 0, B + 1) for k in ("fresh", "replay", "fill")]
        if sum(parts) != B:
            c.fail(f, f"fresh + replay + fill = {sum(parts)}, not its {B} indices")
        c.int_(r["m"], f + ".m", parts[1], B + 1)
        w = c.tensor(r["w"], f + ".w", _FLOATS, B)
        drawn = c.tensor(r["drawn_w"], f + ".drawn_w", _FLOATS)
        if not (bool(torch.isfinite(w).all()) and bool((w >= 0).all()) and bool(torch.isfinite(drawn).all())
                and bool((drawn >= 0).all())):
            c.fail(f, "holds replay weights that are negative or not finite")
        if not isinstance(r["eligible"], float) or r["eligible"] != r["eligible"]:
            c.fail(f + ".eligible", "must be a number")
        c.int_(r["f_all"], f + ".f_all", 0, N + 1)
        c.int_(r["size_all"], f + ".size_all", 1, STEP_LIMIT)
        c.int_(r["n"], f + ".n", 0, N + 1)
        c.int_(r["outside"], f + ".outside", 0, capacity + 1)
        if r["in_fresh"] is not None:
            c.tensor(r["in_fresh"], f + ".in_fresh", (torch.bool,), B)
        if "stored" in r:
            c.tensor(r["stored"], f + ".stored", (torch.float32,), parts[1], dim=2)
            c.tensor(r.get("stored_ok"), f + ".stored_ok", (torch.bool,), parts[1])
    # (the batches between the updates and the position must all be there: this bounds every loop over them)
    held = start + len(updates or []) + len(batches)
    if not pos["epoch_start"] + pos["batch"] == pos["yielded"] <= held:
        c.fail("position", f"is an inconsistent position: epoch_start {pos['epoch_start']} + batch "
                           f"{pos['batch']} must equal yielded {pos['yielded']}, which the logged updates and "
                           f"batches reach up to {held}")
    if pos["batch"] > len(plan[0]):
        c.fail("position.batch", f"= {pos['batch']} is beyond the {len(plan[0])} batches of the epoch's plan")
