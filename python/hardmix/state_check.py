"""Validation of an engine state before it is restored: one job.

:func:`check_state` decides whether an :meth:`hardmix.engine.Engine.state_dict`
may be loaded into an engine of a given config and shard. It checks every key
and type, every tensor's dtype, shape and device, and every invariant that the
native policy (csrc/kernels/policy.h) relies on or that its steps keep: ranges,
finiteness, the pos <-> slots maps, the free stack, the heaps (4-ary, or one
leftist heap per class), the sum tree, the window, the counters and the
dynamics table. A state that passes cannot crash, hang or write out of bounds
in ``policy_update`` / ``policy_draw``; one that fails raises one ValueError
naming the field and the value ("engine state: ..."). It only reads the state.

Cost: O(N + R log R) in vectorised torch ops, no Python loop over N or R (the
log R: pointer jumping through the leftist heaps with class quotas); about
twice the cost of copying the state in, so it runs on every load.
"""

from __future__ import annotations

import math

import torch

from .config import MAX_WEIGHT_EXPONENT, REBASE_EXPONENT, PolicyConfig
from .layout import (
    BALANCE_COLUMNS,
    CLASS_COUNT,
    CLASS_ROOT,
    COL_LAST_SEEN,
    COUNTERS,
    CTR_ADMITTED,
    CTR_ERR_AT,
    CTR_ERR_CODE,
    CTR_ERR_VALUE,
    CTR_EVICTED,
    CTR_FREE_TOP,
    CTR_GRADUATED,
    CTR_NONFINITE,
    CTR_QUARANTINED,
    CTR_T,
    CTR_T_REF,
    CTR_WIN_COUNT,
    CTR_WIN_HEAD,
    ERROR_CODES,
    HEAP_CLASS_FIELDS,
    LINK_FIELDS,
    N_COUNTERS,
    SLOT_FIELDS,
    TABLE_COLUMNS,
)

STEP_LIMIT = 1 << 39
"""Steps at or beyond this are refused: 17 years at 1000 steps a second, so no
genuine state gets there, while a flip of a high bit of the step counter does.
(The native code itself needs steps exact as doubles, below 2^53.)"""

TOTAL_LIMIT = 1 << 62
"""The running totals (admitted, evicted, ...) must stay below this."""

BALANCE_LIMIT = 2.0**64
"""balance_replay's fresh EMAs and class factors must be at most this. They are
at most the largest batch size; the bound keeps every replay weight times its
factor, summed over R < 2^31 slots, finite (e^600 * 2^64 * 2^31 < 1e300), so
the sum tree never holds inf (a descent through inf - inf could end on a leaf
beyond R)."""

_NPL_MAX = 32  # a leftist heap of n < 2^31 nodes has null-path lengths <= log2(n + 1) < 32
_EXACT = float(2**53)
_TABLE_CHUNK = 1 << 17  # rows of the table checked at a time (8 MiB: in cache, and ops large enough for threads)

TENSORS = ("table", "pos", "slots", "links", "heap", "free", "classes", "tree", "window", "counters", "balance")
"""The state tensors' names, in the policy ops' argument order (Engine.STATE_TENSORS)."""


def expected_tensors(config: PolicyConfig, shard: tuple[int, int] | None) -> dict:
    """name -> (shape, dtype) of each state tensor of an engine (Engine.__init__)."""
    N, R = config.num_examples, config.capacity
    K = config.num_classes if config.class_quotas else 1
    P = 1 << max(0, (R - 1).bit_length())
    rows = N if shard is None else (N - shard[0] + shard[1] - 1) // shard[1]
    f64, i32, i64 = torch.float64, torch.int32, torch.int64
    return dict(
        table=((rows, len(TABLE_COLUMNS)), f64), pos=((N if shard is None else 2 * P,), i32),
        slots=((R, len(SLOT_FIELDS)), f64), links=((R, len(LINK_FIELDS)), i32), heap=((R, 2), f64),
        free=((R,), i32), classes=((K, len(HEAP_CLASS_FIELDS)), i64), tree=((2 * P,), f64),
        window=((config.rank_window,), f64), counters=((N_COUNTERS,), i64), balance=((K + 1, len(BALANCE_COLUMNS)), f64),
    )


def _fail(msg: str):
    raise ValueError("engine state: " + msg)


def _f(x: float) -> str:
    return repr(float(x))


def _i(x: float) -> str:
    """A double that should hold an integer, as one when it does."""
    x = float(x)
    return str(int(x)) if math.isfinite(x) and x == int(x) else repr(x)


def _first(bad: torch.Tensor) -> int:
    return int(bad.reshape(-1).nonzero()[0, 0])


def _last(bad: torch.Tensor) -> int:
    return int(bad.reshape(-1).nonzero()[-1, 0])


def _rules(rules) -> None:
    """rules: (ok mask, message of position k), masks over the same positions.
    Raises for the first failing position (the first failing rule there)."""
    ok = rules[0][0]
    for mask, _ in rules[1:]:
        ok = ok & mask
    if bool(ok.all()):
        return
    k = _first(~ok)
    for mask, msg in rules:
        if not bool(mask.reshape(-1)[k]):
            _fail(msg(k))


def _integral(x: torch.Tensor) -> torch.Tensor:
    return x == torch.floor(x)  # NaN: False; +-inf: True (callers bound the range)


# --- deterministic exp and the hash, as the native code computes them ------------------

_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_O_THRESHOLD = 7.09782712893383973096e02
_U_THRESHOLD = -7.45133219101941108420e02
_P1, _P2, _P3, _P4, _P5 = (1.66666666666666019037e-01, -2.77777777770155933842e-03, 6.61375632143793436117e-05,
                           -1.65339022054652515390e-06, 4.13813679705723846039e-08)
_HALF_LN2_UP = float.fromhex("0x1.62e43p-2")
_THREE_HALF_LN2 = float.fromhex("0x1.0a2b2p+0")


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """2.0 ** k for int64 k in [-1022, 1023], exactly (the bits of the double)."""
    return ((k.clamp(-1022, 1023) + 1023) << 52).view(torch.float64)


def exp_det(x: torch.Tensor) -> torch.Tensor:
    """rng.h's exp_det (hardmix.rng.exp) elementwise on a float64 tensor, bit for
    bit: the same + - * / in the same order, one rounding each (torch's
    elementwise ops do not fuse)."""
    ax = x.abs()
    pos = x > 0
    big = ax >= _HALF_LN2_UP
    mid = big & (ax < _THREE_HALF_LN2)
    half = torch.full_like(x, 0.5)
    kf = torch.trunc(_INV_LN2 * x + torch.where(pos, half, -half)).nan_to_num(0.0, 0.0, 0.0).clamp(-1100, 1100)
    one = torch.ones_like(x)
    kf = torch.where(mid, torch.where(pos, one, -one), kf)
    kf = torch.where(big, kf, 0.0)
    hi = torch.where(mid, torch.where(pos, x - _LN2_HI, x + _LN2_HI), x - kf * _LN2_HI)
    lo = torch.where(mid, torch.where(pos, one * _LN2_LO, one * -_LN2_LO), kf * _LN2_LO)
    r = torch.where(big, hi - lo, x)
    hi = torch.where(big, hi, 0.0)
    lo = torch.where(big, lo, 0.0)
    t = r * r
    c = r - t * (_P1 + t * (_P2 + t * (_P3 + t * (_P4 + t * _P5))))
    y0 = 1.0 - ((r * c) / (c - 2.0) - r)
    y = 1.0 - ((lo - (r * c) / (2.0 - c)) - hi)
    k = kf.long()
    normal = k >= -1021
    yk = y * _pow2(torch.where(normal, k, k + 1000))
    yk = torch.where(normal, yk, yk * 2.0**-1000)
    yk = torch.where(k == 1024, (y * 2.0) * 2.0**1023, yk)
    out = torch.where(kf == 0, y0, yk)
    out = torch.where(~big & (ax < 2.0**-28), 1.0 + x, out)
    out = torch.where(x < _U_THRESHOLD, 0.0, out)
    out = torch.where(x > _O_THRESHOLD, math.inf, out)
    return torch.where(x != x, x + x, out)


_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)


def _lsr(z: torch.Tensor, k: int) -> torch.Tensor:
    return (z >> k) & ((1 << (64 - k)) - 1)


def mix13(z: torch.Tensor) -> torch.Tensor:
    """rng.h's mix13 elementwise on int64 (read as uint64; multiplication wraps)."""
    z = (z ^ _lsr(z, 30)) * _M1
    z = (z ^ _lsr(z, 27)) * _M2
    return z ^ _lsr(z, 31)


# --- the check ---------------------------------------------------------------------------


def check_state(state, config: PolicyConfig, shard: tuple[int, int] | None,
                device: torch.device | None = None) -> list:
    """Validates ``state`` (an Engine.state_dict()) for an engine of ``config``
    and ``shard`` whose tensors live on ``device`` (tensors on the CPU or there
    are accepted). Returns ``made`` (the sharded engine's kept quarantines) as
    checked; raises ValueError naming the field otherwise."""
    return _Check(state, config, shard, device).run()


class _Check:
    def __init__(self, state, config, shard, device):
        self.state, self.config, self.shard = state, config, shard
        self.device = torch.device("cpu") if device is None else torch.device(device)
        c = config
        self.N, self.R = c.num_examples, c.capacity
        self.K = c.num_classes if c.class_quotas else 1
        self.P = 1 << max(0, (self.R - 1).bit_length())
        self.W = c.rank_window

    def run(self) -> list:
        self.keys()
        self.counters()
        self.window()
        self.slots()
        self.free_stack()
        self.positions()
        if self.config.class_quotas:
            self.leftist()
        else:
            self.four_ary()
        self.balance()
        self.tree()
        self.table()
        return self.made()

    # -- keys, types, shapes -----------------------------------------------------------

    def keys(self) -> None:
        state = self.state
        if not isinstance(state, dict):
            _fail(f"must be a dict (an Engine.state_dict()), got {type(state).__name__}")
        missing = [k for k in ("config", *TENSORS) if k not in state]
        if missing:
            _fail(f"missing key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
        cfg = state["config"]
        if isinstance(cfg, dict):
            try:
                cfg = PolicyConfig(**cfg)
            except (TypeError, ValueError) as e:
                _fail(f"config is not a valid PolicyConfig: {e}")
        elif not isinstance(cfg, PolicyConfig):
            _fail(f"config must be a dict (PolicyConfig.as_dict()), got {type(cfg).__name__}")
        if cfg != self.config:
            _fail(f"state_dict was saved with a different config: {cfg} != {self.config}")
        shard = state.get("shard")
        if isinstance(shard, list):
            shard = tuple(shard)
        if not (shard is None or (isinstance(shard, tuple) and all(isinstance(v, int) for v in shard))):
            _fail(f"shard must be None or a tuple (rank, world), got {type(shard).__name__}")
        if shard != self.shard:
            _fail(f"state_dict holds table shard {shard!r}, this engine shard {self.shard!r}")
        self.x = {}
        for name, (shape, dtype) in expected_tensors(self.config, self.shard).items():
            v = state[name]
            if not isinstance(v, torch.Tensor):
                _fail(f"{name} must be a torch.Tensor, got {type(v).__name__}")
            if v.layout != torch.strided:
                _fail(f"{name} must be a dense (strided) tensor, got layout {v.layout}")
            if tuple(v.shape) != shape or v.dtype != dtype:
                _fail(f"state_dict[{name!r}] has shape/dtype {list(v.shape)}/{v.dtype}, want {list(shape)}/{dtype}")
            if v.device.type != "cpu" and v.device != self.device:
                _fail(f"{name} must be on the CPU or on the engine's device {self.device}, got {v.device}")
            self.x[name] = v.detach().to("cpu")

    # -- counters and window -----------------------------------------------------------

    def counters(self) -> None:
        c = self.x["counters"].tolist()
        cfg = self.config
        self.c = c

        def bad(k: int, what: str):
            name = COUNTERS[k] if k < len(COUNTERS) else "unused"
            _fail(f"{name} counters[{k}] = {c[k]} {what}")

        t, t_ref = c[CTR_T], c[CTR_T_REF]
        if not 0 <= t < STEP_LIMIT:
            bad(CTR_T, f"is out of range [0, 2^{STEP_LIMIT.bit_length() - 1})")
        if not 0 <= t_ref <= t:
            bad(CTR_T_REF, f"is out of range [0, t={t}]")
        rebasing = cfg.gamma > 0 and cfg.lam > 0
        if not rebasing and t_ref != 0:
            bad(CTR_T_REF, f"must be 0: replay weights are never rebased with gamma={cfg.gamma}, lam={cfg.lam}")
        if rebasing and t >= 1 and cfg.gamma * cfg.lam * float(t - 1 - t_ref) > REBASE_EXPONENT:
            bad(CTR_T_REF, f"is older than the rebase at step t - 1 = {t - 1} allows "
                        f"(gamma * lam * (t - 1 - t_ref) > {REBASE_EXPONENT})")
        for k in (CTR_NONFINITE, CTR_ADMITTED, CTR_EVICTED, CTR_GRADUATED, CTR_QUARANTINED):
            if not 0 <= c[k] < TOTAL_LIMIT:
                bad(k, "is out of range [0, 2^62)")
        if not 0 <= c[CTR_WIN_COUNT] <= self.W:
            bad(CTR_WIN_COUNT, f"is out of range [0, W={self.W}]")
        if not 0 <= c[CTR_WIN_HEAD] < self.W:
            bad(CTR_WIN_HEAD, f"is out of range [0, W={self.W})")
        if c[CTR_WIN_COUNT] < self.W and c[CTR_WIN_HEAD] != c[CTR_WIN_COUNT]:
            bad(CTR_WIN_HEAD, f"must equal the window count {c[CTR_WIN_COUNT]} until the window is full")
        if not 0 <= c[CTR_FREE_TOP] <= self.R:
            bad(CTR_FREE_TOP, f"is out of range [0, R={self.R}]")
        if not 0 <= c[CTR_ERR_CODE] <= len(ERROR_CODES):
            bad(CTR_ERR_CODE, f"is not an error code in [0, {len(ERROR_CODES)}]")
        if c[CTR_ERR_CODE] == 0:
            for k in (CTR_ERR_AT, CTR_ERR_VALUE):
                if c[k] != 0:
                    bad(k, "must be 0 with no error pending (error code 0)")
        elif not 0 <= c[CTR_ERR_AT] < TOTAL_LIMIT:
            bad(CTR_ERR_AT, "is not a position >= 0")
        for k in range(CTR_ERR_VALUE + 1, N_COUNTERS):
            if c[k] != 0:
                bad(k, "must be 0")
        total = c[CTR_ADMITTED] - c[CTR_EVICTED] - c[CTR_GRADUATED] - c[CTR_QUARANTINED]
        if total != self.R - c[CTR_FREE_TOP]:
            _fail(f"totals admitted - evicted - graduated - quarantined = {c[CTR_ADMITTED]} - {c[CTR_EVICTED]} - "
                  f"{c[CTR_GRADUATED]} - {c[CTR_QUARANTINED]} = {total} != the members R - free stack top counters[9] "
                  f"= {self.R} - {c[CTR_FREE_TOP]}")
        self.t, self.t_ref = t, t_ref

    def window(self) -> None:
        w = self.x["window"]
        n = self.c[CTR_WIN_COUNT]
        ok = torch.isfinite(w)
        if n < self.W:
            ok = torch.where(torch.arange(self.W) < n, ok, w == 0)
        _rules([(ok, lambda k: f"window[{k}] = {_f(w[k])} must be "
                               + ("a finite loss" if k < n else f"0 (beyond the window count {n})"))])

    # -- slots ---------------------------------------------------------------------------

    def slots(self) -> None:
        cfg, N, R, t = self.config, self.N, self.R, self.t
        s = self.x["slots"].t().contiguous()
        idx, key, logp, step, cls, adm, best, ticket = s
        fld = lambda k, f: f"slots[{k}, {f!r}]"  # noqa: E731
        _rules([((idx == -1) | ((idx >= 0) & (idx < N) & _integral(idx)),
                 lambda k: f"{fld(k, 'index')} = {_i(idx[k])} is not -1 (empty) or an index in [0, N={N})")])
        m = idx >= 0
        self.member = m
        self.idx = idx.long()
        self.key = key

        def on(ok):  # a rule on the members only
            return ok | ~m

        if cfg.class_quotas or cfg.num_classes > 0:
            ncls = cfg.num_classes
            cls_ok = (cls >= 0) & (cls < ncls) & _integral(cls)
            cls_what = f"is not a class in [0, num_classes={ncls})"
        else:
            cls_ok = (cls.abs() <= 2.0**63) & _integral(cls)
            cls_what = "is not an integer"
        alpha, lam = cfg.alpha, cfg.lam
        head = (alpha * logp if alpha != 0 else torch.zeros_like(logp)) + lam * step
        want = head + ticket
        _rules([
            (on(key == key), lambda k: f"{fld(k, 'key')} of a member is NaN"),
            (on(logp == logp), lambda k: f"{fld(k, 'logp')} of a member is NaN"),
            (on((step >= 0) & (step < t) & _integral(step)),
             lambda k: f"{fld(k, 'step')} = {_i(step[k])} is not a step in [0, t={t})"),
            (on((adm >= 0) & (adm <= step) & _integral(adm)),
             lambda k: f"{fld(k, 'admitted')} = {_i(adm[k])} is not a step in [0, its score step {_i(step[k])}]"),
            (on(cls_ok), lambda k: f"{fld(k, 'class')} = {_i(cls[k])} {cls_what}"),
            (on(torch.isfinite(best)), lambda k: f"{fld(k, 'best_loss')} = {_f(best[k])} is not finite"),
            (on(torch.isfinite(ticket)), lambda k: f"{fld(k, 'ticket')} = {_f(ticket[k])} is not finite"),
            (on(key == want),
             lambda k: f"{fld(k, 'key')} = {_f(key[k])} != alpha * logp + lam * step + ticket = {_f(want[k])}"),
        ])
        self.step, self.logp = torch.where(m, step, 0.0), logp
        # heap class of each slot (0 for empty slots, whose fields are stale and never read)
        self.hc = torch.where(m, cls, 0.0).long() if cfg.class_quotas else torch.zeros(R, dtype=torch.int64)
        self.n_members = int(m.sum())

    # -- free stack ------------------------------------------------------------------------

    def free_stack(self) -> None:
        R, top = self.R, self.c[CTR_FREE_TOP]
        free = self.x["free"].long()
        _rules([((free >= 0) & (free < R),
                 lambda k: f"free[{k}] = {int(free[k])} is out of range [0, R={R})"
                           + ("" if k < top else f" (a stale entry beyond the free stack top {top})"))])
        stack = free[:top]
        seen = torch.zeros(R, dtype=torch.int64).index_add_(0, stack, torch.ones_like(stack))
        dup = seen[stack] > 1
        if bool(dup.any()):
            k2 = _last(dup)
            k1 = _first(stack == stack[k2])
            _fail(f"free stack: free[{k1}] = free[{k2}] = {int(stack[k2])} (a slot twice; "
                  f"free stack top counters[9] = {top})")
        held = self.member[stack]
        if bool(held.any()):
            k = _first(held)
            j = int(stack[k])
            _fail(f"free stack: free[{k}] = {j} is the slot of a member (index {int(self.idx[j])}); "
                  f"free stack top counters[9] = {top}")
        if top != R - self.n_members:
            lost = (seen == 0) & ~self.member
            where = f"; slot {_first(lost)} is empty and not on it" if bool(lost.any()) else ""
            _fail(f"free stack top counters[9] = {top} but {self.n_members} of R={R} slots hold members "
                  f"(want top = R - members = {R - self.n_members}){where}")

    # -- pos: dataset index -> slot --------------------------------------------------------

    def positions(self) -> None:
        R = self.R
        pos = self.x["pos"]  # (int32: N entries when not sharded)
        lo, hi = torch.aminmax(pos)
        if not (int(lo) >= -1 and int(hi) < R):
            _rules([((pos >= -1) & (pos < R), lambda k: f"pos[{k}] = {int(pos[k])} is out of range [-1, R={R})")])
        m, idx = self.member, self.idx
        slots = torch.arange(R)
        if self.shard is None:
            at = pos[idx.clamp(min=0)].long()
            _rules([((at == slots) | ~m,
                     lambda j: f"slots[{j}] holds index {int(idx[j])} but pos[{int(idx[j])}] = {int(at[j])}")])
            # The members' pos entries are right (so distinct); no other entry may be >= 0.
            if int((pos >= 0).sum()) == self.n_members:
                return
            nz = (pos >= 0).nonzero().squeeze(1)
            back = idx[pos[nz]]
            _rules([(back == nz, lambda k: f"pos[{int(nz[k])}] = {int(pos[nz[k]])} but slots[{int(pos[nz[k]])}] "
                                           + ("is empty" if int(back[k]) < 0 else f"holds index {int(back[k])}"))])
            return
        # Sharded: an open-addressing hash [2P] of the member slots, keyed by their index, linear probing.
        pos = pos.long()
        H = pos.numel()
        occ = pos >= 0
        hs = occ.nonzero().squeeze(1)
        js = pos[hs]
        _rules([(m[js], lambda k: f"pos[{int(hs[k])}] = {int(js[k])} (hash entry) but slot {int(js[k])} is empty")])
        count = torch.zeros(R, dtype=torch.int64).index_add_(0, js, torch.ones_like(js))
        dup = count[js] > 1
        if bool(dup.any()):
            k2 = _last(dup)
            k1 = _first(js == js[k2])
            _fail(f"pos[{int(hs[k1])}] = pos[{int(hs[k2])}] = {int(js[k2])}: a slot twice in the hash")
        missing = m & (count == 0)
        if bool(missing.any()):
            j = _first(missing)
            _fail(f"slots[{j}] holds index {int(idx[j])} but the hash pos has no entry for slot {j}")
        mi = idx[m]
        srt, order = torch.sort(mi)
        same = srt[1:] == srt[:-1]
        if bool(same.any()):
            k = _first(same)
            ms = m.nonzero().squeeze(1)[order]
            a, b = sorted((int(ms[k]), int(ms[k + 1])))
            _fail(f"slots[{a}] and slots[{b}] both hold index {int(srt[k])}")
        # Every entry lies on its index's probe run: no empty entry cyclically in [home, h].
        home = mix13(idx[js]) & (H - 1)
        empties = torch.zeros(H + 1, dtype=torch.int64)
        empties[1:] = torch.cumsum((~occ).long(), 0)  # empties[k]: empty entries in [0, k)
        wrap = home > hs
        gaps = torch.where(wrap, empties[H] - empties[home] + empties[hs + 1], empties[hs + 1] - empties[home])

        def unreachable(k: int) -> str:
            h, g = int(hs[k]), int(home[k])
            span = [(g + d) % H for d in range((h - g) % H + 1)]
            e = next(q for q in span if not bool(occ[q]))
            return (f"pos[{h}] = {int(js[k])} (index {int(idx[js[k]])}, home {g}) is unreachable: "
                    f"pos[{e}] on its probe run is empty")
        _rules([(gaps == 0, unreachable)])

    # -- heaps -----------------------------------------------------------------------------

    def four_ary(self) -> None:
        R, m, idx, key = self.R, self.member, self.idx, self.key
        heap, links = self.x["heap"], self.x["links"].reshape(-1).long()
        row = self.x["classes"][0].tolist()
        root, n = row[CLASS_ROOT], row[CLASS_COUNT]
        if n != self.n_members:
            _fail(f"classes[0] count = {n} but there are {self.n_members} members")
        hkey, hslot = heap[:, 0], heap[:, 1]
        live = torch.arange(R) < n
        _rules([((hslot >= 0) & (hslot < R) & _integral(hslot),
                 lambda k: f"heap[{k}] slot = {_i(hslot[k])} is out of range [0, R={R})"
                           + ("" if k < n else f" (a stale entry beyond the heap size {n})")),
                (live | (hkey == hkey), lambda k: f"heap[{k}] key (a stale entry) is NaN")])
        hs = hslot[:n].long()
        hpos = links[:R]
        _rules([((hpos >= -1) & (hpos < R), lambda j: f"links heap position of slot {j} = {int(hpos[j])} "
                                                     f"is out of range [-1, R={R})")])
        _rules([(m[hs], lambda k: f"heap[{k}] holds slot {int(hs[k])}, which is empty")])
        _rules([(hpos[hs] == torch.arange(n),
                 lambda k: f"links heap position of slot {int(hs[k])} = {int(hpos[hs[k]])} but heap[{k}] holds it")])
        _rules([(hkey[:n] == key[hs],
                 lambda k: f"heap[{k}] key = {_f(hkey[k])} but its slot {int(hs[k])} has key {_f(key[hs[k]])}")])
        want = int(hs[0]) if n > 0 else -1
        if root != want:
            _fail(f"classes[0] root = {root}, want {want} (" + ("the slot at heap[0])" if n else "no members)"))
        if n > 1:
            kk = torch.arange(1, n)
            par = (kk - 1) // 4
            kc, kp = hkey[1:n], hkey[par]
            ic, ip = idx[hs[1:]], idx[hs[par]]
            order = (kp < kc) | ((kp == kc) & (ip > ic))
            _rules([(order, lambda k: f"heap order broken: heap[{k + 1}] (key {_f(kc[k])}, index {int(ic[k])}) is "
                                      f"weaker than its parent heap[{int(par[k])}] (key {_f(kp[k])}, index "
                                      f"{int(ip[k])})")])
        rest = links[R:]
        _rules([(rest == -1, lambda k: f"links[{(R + k) // 4}, {LINK_FIELDS[(R + k) % 4]!r}] = {int(rest[k])} "
                                       f"must be -1 (unused without class quotas)")])

    def leftist(self) -> None:
        R, K, m, idx, key = self.R, self.K, self.member, self.idx, self.key
        heap = self.x["heap"]
        _rules([(heap.reshape(-1) == 0, lambda k: f"heap[{k // 2}] = {_f(heap.reshape(-1)[k])} must be 0 "
                                                   f"(unused with class quotas)")])
        links = self.x["links"].long()
        L, Rt, Pa, npl = links.unbind(1)
        name = lambda j, f: f"links[{j}, {f!r}]"  # noqa: E731
        in_range = lambda v: (v >= -1) & (v < R)  # noqa: E731
        _rules([(in_range(v), lambda j, v=v, f=f: f"{name(j, f)} = {int(v[j])} is out of range [-1, R={R})")
                for v, f in ((L, "left"), (Rt, "right"), (Pa, "parent"))]
               + [((npl >= -1) & (npl <= _NPL_MAX), lambda j: f"{name(j, 'npl')} = {int(npl[j])} is out of range")])
        hc = self.hc
        cl = self.x["classes"]
        roots, counts = cl[:, CLASS_ROOT], cl[:, CLASS_COUNT]
        have = torch.zeros(K, dtype=torch.int64).index_add_(0, hc[m], torch.ones(self.n_members, dtype=torch.int64))
        _rules([(counts == have, lambda c: f"classes[{c}] count = {int(counts[c])} but class {c} has "
                                           f"{int(have[c])} members")])
        root_ok = torch.where(counts == 0, roots == -1, (roots >= 0) & (roots < R))
        _rules([(root_ok, lambda c: f"classes[{c}] root = {int(roots[c])} is "
                                    + ("not -1 (the class has no members)" if int(counts[c]) == 0
                                       else f"out of range [0, R={R})"))])
        r = roots.clamp(min=0)
        nonempty = counts > 0
        _rules([(~nonempty | m[r], lambda c: f"classes[{c}] root = {int(roots[c])} is an empty slot"),
                (~nonempty | (hc[r] == torch.arange(K)),
                 lambda c: f"classes[{c}] root = {int(roots[c])} is a member of class {int(hc[roots[c]])}"),
                (~nonempty | (Pa[r] == -1),
                 lambda c: f"classes[{c}] root = {int(roots[c])} has parent {int(Pa[roots[c]])}, not -1")])

        def on(ok):
            return ok | ~m

        def link_ok(v):  # -1, or a member of the same class
            vc = v.clamp(min=0)
            return (v == -1) | (m[vc] & (hc[vc] == hc))

        _rules([(on(link_ok(v)), lambda j, v=v, f=f: f"{name(j, f)} = {int(v[j])} of a member of class {int(hc[j])} "
                                                     f"is not -1 or a member of that class")
                for v, f in ((L, "left"), (Rt, "right"), (Pa, "parent"))]
               + [(on((npl >= 1)), lambda j: f"{name(j, 'npl')} = {int(npl[j])} of a member is not >= 1")])
        Lc, Rc, Pc = L.clamp(min=0), Rt.clamp(min=0), Pa.clamp(min=0)
        slots = torch.arange(R)
        _rules([
            (on((L < 0) | (L != Rt)), lambda j: f"links[{j}] left = right = {int(L[j])}"),
            (on((L < 0) | (Pa[Lc] == slots)),
             lambda j: f"links[{j}] left = {int(L[j])} but that slot's parent is {int(Pa[L[j]])}"),
            (on((Rt < 0) | (Pa[Rc] == slots)),
             lambda j: f"links[{j}] right = {int(Rt[j])} but that slot's parent is {int(Pa[Rt[j]])}"),
            (on((Pa < 0) | (L[Pc] == slots) | (Rt[Pc] == slots)),
             lambda j: f"links[{j}] parent = {int(Pa[j])} but slot {j} is not a child of it "
                       f"(its children: {int(L[Pa[j]])}, {int(Rt[Pa[j]])})"),
            (on((Pa >= 0) | (roots[hc] == slots)),
             lambda j: f"links[{j}] parent = -1 but slot {j} is not the root of its class {int(hc[j])} "
                       f"(classes[{int(hc[j])}] root = {int(roots[hc[j]])})"),
        ])
        # Acyclic: pointer jumping from every member reaches a node without parent.
        up = torch.where(m & (Pa >= 0), Pa, slots)
        for _ in range(max(1, R.bit_length()) + 1):
            up = up[up]
        _rules([(on(Pa[up] == -1), lambda j: f"links: slot {j} (class {int(hc[j])}) is on a cycle of parent links "
                                             f"or under one (never reaches its class root)")])
        # Heap order (a parent is weaker than its child) and null-path lengths.
        kc, kp = key, key[Pc]
        ic, ip = idx, idx[Pc]
        order = (Pa < 0) | (kp < kc) | ((kp == kc) & (ip > ic))
        nl = torch.where(L >= 0, npl[Lc], 0)
        nr = torch.where(Rt >= 0, npl[Rc], 0)
        _rules([
            (on(order), lambda j: f"heap order broken: slot {j} (key {_f(kc[j])}, index {int(ic[j])}) is weaker "
                                  f"than its parent slot {int(Pa[j])} (key {_f(kp[j])}, index {int(ip[j])})"),
            (on(npl == nr + 1), lambda j: f"{name(j, 'npl')} = {int(npl[j])} but its right child's is {int(nr[j])}"),
            (on(nl >= nr), lambda j: f"links[{j}]: left child's npl {int(nl[j])} < right child's {int(nr[j])}"),
        ])

    # -- balance, tree ---------------------------------------------------------------------

    def balance(self) -> None:
        K, cfg = self.K, self.config
        b = self.x["balance"]
        fresh, seen, factor = b[:K].t()
        nm = lambda k, c: f"balance[{k}, {BALANCE_COLUMNS[c]!r}]"  # noqa: E731
        if not cfg.balance_replay:
            want = torch.tensor([0.0, 0.0, 1.0]).repeat(K + 1, 1)
            want[K, 2] = 0.0
            _rules([(b.reshape(-1) == want.reshape(-1),
                     lambda k: f"{nm(k // 3, k % 3)} = {_f(b.reshape(-1)[k])} must be "
                               f"{_f(want.reshape(-1)[k])} (balance_replay is off)")])
            self.factor = b[:K, 2]
            return
        tf, ts, tz = b[K].tolist()
        if not 0 <= tf <= BALANCE_LIMIT:
            _fail(f"{nm(K, 0)} (total) = {_f(tf)} is out of range [0, 2^64]")
        _rules([
            ((fresh >= 0) & (fresh <= tf),
             lambda k: f"{nm(k, 0)} = {_f(fresh[k])} is out of range [0, the total's {_f(tf)}]"),
            ((seen == 0) | (seen == 1), lambda k: f"{nm(k, 1)} = {_f(seen[k])} is not 0 or 1"),
            ((factor >= 0) & (factor <= BALANCE_LIMIT),
             lambda k: f"{nm(k, 2)} = {_f(factor[k])} is out of range [0, 2^64]"),
        ])
        if ts != float(seen.sum()):
            _fail(f"{nm(K, 1)} (classes seen) = {_f(ts)} but {int(seen.sum())} classes are marked seen")
        if tz != 0.0:
            _fail(f"{nm(K, 2)} (total) = {_f(tz)} must be 0")
        self.factor = factor

    def tree(self) -> None:
        cfg, R, P, m = self.config, self.R, self.P, self.member
        tree = self.x["tree"]
        if cfg.gamma == 0:
            w = torch.ones(R, dtype=torch.float64)
        else:
            age = (self.step.long() - self.t_ref).double()
            x = cfg.gamma * (self.logp + cfg.lam * age)
            w = exp_det(torch.where(x < MAX_WEIGHT_EXPONENT, x, MAX_WEIGHT_EXPONENT))
        want = torch.zeros(P, dtype=torch.float64)
        want[:R] = torch.where(m, w * self.factor[self.hc], 0.0)
        leaves = tree[P:]

        def leaf(j: int) -> str:
            what = (f"a leaf beyond R={R} (position {j})" if j >= R
                    else f"the leaf of slot {j} (a member)" if bool(m[j]) else f"the leaf of empty slot {j}")
            return f"tree[{P + j}] = {_f(leaves[j])}, {what}, want {_f(want[j])}"
        _rules([(leaves == want, leaf)])
        if tree[0] != 0:
            _fail(f"tree[0] = {_f(tree[0])} must be 0 (unused)")
        if P > 1:
            sums = tree[2::2] + tree[3::2]  # sums[k - 1] = tree[2k] + tree[2k + 1]
            bad = ~((tree[1:P] == sums[: P - 1]) & torch.isfinite(tree[1:P]))
            if bool(bad.any()):
                k = _last(bad) + 1  # the deepest: a corrupted node fails there and at its ancestors
                _fail(f"tree[{k}] = {_f(tree[k])} != tree[{2 * k}] + tree[{2 * k + 1}] = {_f(sums[k - 1])}")
        if not math.isfinite(float(tree[1])):
            _fail(f"tree[1] (total) = {_f(tree[1])} is not finite")

    # -- the dynamics table ----------------------------------------------------------------

    def table(self) -> None:
        cfg, t = self.config, self.t
        table = self.x["table"]
        if self.shard is not None:
            rank, world = self.shard
            self.name = lambda i, c: f"table[{i}, {TABLE_COLUMNS[c]!r}] (index {i * world + rank})"  # noqa: E731
            self.seen_until = STEP_LIMIT  # (dynamics may run ahead of the updates)
            self.q_max = STEP_LIMIT + cfg.quarantine_steps
        else:
            self.name = lambda i, c: f"table[{i}, {TABLE_COLUMNS[c]!r}]"  # noqa: E731
            self.seen_until, self.q_max = t, max(0, t - 1 + cfg.quarantine_steps)
        if cfg.max_wrong == 0:
            self.q_max = 0
        # In chunks of rows that stay in cache while the ~40 ops run over them (strided columns).
        for start in range(0, table.shape[0], _TABLE_CHUNK):
            self.table_rows(table[start: start + _TABLE_CHUNK], start)
        if self.shard is None:  # a member was (re)scored at its last sighting
            m = self.member
            at = table[self.idx.clamp(min=0), COL_LAST_SEEN]
            _rules([((at == self.step) | ~m,
                     lambda j: f"slots[{j}, 'step'] = {_i(self.step[j])} but its index {int(self.idx[j])} was last "
                               f"seen at step {_i(at[j])} (table[{int(self.idx[j])}, 'last_seen'])")])

    def table_rows(self, rows: torch.Tensor, start: int) -> None:
        cfg, name, seen_until, q_max = self.config, self.name, self.seen_until, self.q_max
        ll, ema, seen, ls, corr, forg, wrong, quar = rows.unbind(1)  # (strided: the chunk is in cache)
        never = seen == 0
        fresh_row = (ll == 0) & (ema == 0) & (corr == -1) & (forg == 0) & (wrong == 0)
        if self.shard is None:
            fresh_row &= quar == 0
        _rules([
            (torch.isfinite(ll), lambda i: f"{name(start + i, 0)} = {_f(ll[i])} is not finite"),
            (torch.isfinite(ema), lambda i: f"{name(start + i, 1)} = {_f(ema[i])} is not finite"),
            ((seen >= 0) & (seen < _EXACT) & _integral(seen),
             lambda i: f"{name(start + i, 2)} = {_i(seen[i])} is not an integer in [0, 2^53)"),
            ((ls >= -1) & (ls < seen_until) & _integral(ls),
             lambda i: f"{name(start + i, 3)} = {_i(ls[i])} is not -1 or a step in [0, {seen_until})"),
            (never == (ls == -1), lambda i: f"{name(start + i, 3)} = {_i(ls[i])} with times_seen {_i(seen[i])}"),
            ((corr >= -1) & (corr <= 1) & _integral(corr),
             lambda i: f"{name(start + i, 4)} = {_f(corr[i])} is not -1, 0 or 1"),
            ((forg >= 0) & (forg <= seen) & _integral(forg),
             lambda i: f"{name(start + i, 5)} = {_i(forg[i])} is not an integer in [0, times_seen={_i(seen[i])}]"),
            ((wrong >= -1) & (wrong <= seen) & _integral(wrong),
             lambda i: f"{name(start + i, 6)} = {_i(wrong[i])} is not -1 or an integer in "
                       f"[0, times_seen={_i(seen[i])}]"),
            ((quar >= 0) & (quar <= q_max) & _integral(quar),
             lambda i: f"{name(start + i, 7)} = {_i(quar[i])} is not a step in [0, {q_max}]"
                       + (" (max_wrong is 0)" if cfg.max_wrong == 0 else "")),
            (~never | fresh_row, lambda i: f"table[{start + i}] = {rows[i].tolist()} was never seen (times_seen 0) "
                                           f"but differs from a new row"),
        ])

    # -- the sharded engine's kept quarantines ---------------------------------------------

    def made(self) -> list:
        made = self.state.get("made", [])
        if not isinstance(made, (list, tuple)):
            _fail(f"made must be a list of (step, indices, quarantine_until), got {type(made).__name__}")
        out = []
        for n, item in enumerate(made):
            if not (isinstance(item, (list, tuple)) and len(item) == 3):
                _fail(f"made[{n}] must be a tuple (step, indices, quarantine_until)")
            s, who, until = item
            if isinstance(s, torch.Tensor) and s.dim() == 0 and not s.is_floating_point():
                s = int(s)
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < self.t:
                _fail(f"made[{n}] step = {s!r} is not a step in [0, t={self.t})")
            for v, nm, dt in ((who, "indices", torch.int64), (until, "quarantine_until", torch.float64)):
                if not isinstance(v, torch.Tensor) or v.dtype != dt or v.dim() != 1 or v.layout != torch.strided:
                    _fail(f"made[{n}] {nm} must be a 1-D {dt} tensor")
            if who.numel() != until.numel():
                _fail(f"made[{n}] has {who.numel()} indices but {until.numel()} quarantine_until values")
            who, until = who.to("cpu"), until.to("cpu")
            if bool(((who < 0) | (who >= self.N)).any()):
                _fail(f"made[{n}] indices has {int(who[(who < 0) | (who >= self.N)][0])}, out of range [0, N={self.N})")
            q_max = STEP_LIMIT + self.config.quarantine_steps
            if bool(~((until >= 0) & (until <= q_max) & _integral(until)).all()):
                _fail(f"made[{n}] quarantine_until holds a value that is not a step")
            out.append((s, who.clone(), until.clone()))
        return out
