"""Benchmarks of one full policy step: ``python -m hardmix bench``.

One step = update (scores, dynamics, admission/eviction) on a batch of B
examples, then the replay draw of m members for the next batch, skipping its
B - m fresh indices. Three implementations do the same work:

- ``native``: :class:`hardmix.Engine` (the C++ ops);
- ``reference``: :class:`hardmix.ReferencePolicy` (pure Python, heapq + sum tree);
- ``torch``: :class:`TorchPolicy` below, a straightforward composition of torch
  ops (vectorised scores and dynamics, admission by ``topk`` over the R members
  plus the B candidates, replay by a Gumbel-top-m over the members).

Workload: fresh indices uniform over [0, N), losses uniform in [0, 3) (with
logits: C classes, standard normal logits), policy ``BENCH_CONFIG`` (loss
score, alpha 1, lam 1e-3, gamma 1). Before timing, the reservoir is filled by
one batch of min(R, N) examples and then stepped ``WARM_STEPS`` times; every
implementation then runs the same timed steps (a full reservoir in its busiest
phase: hundreds of admissions per step; the number is reported beside each
figure, since admissions are the dominant cost). Medians over the timed steps,
one intra-op thread, all implementations in one process, one after the other.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from .config import PolicyConfig
from .engine import Engine
from .ops import margin
from .reference import ReferencePolicy

BENCH_CONFIG = dict(score="loss", alpha=1.0, lam=1e-3, gamma=1.0, seed=0)
WARM_STEPS = 10


class TorchPolicy:
    """The policy's common case as plain torch ops: no duplicates within a
    batch, no quotas, no cap, no graduation or quarantine. A baseline for
    speed, not an oracle: its admission is a batch-wise top-R and its random
    numbers come from a torch.Generator."""

    def __init__(self, cfg: PolicyConfig):
        self.cfg = cfg
        N, R = cfg.num_examples, cfg.capacity
        self.table = torch.zeros(N, 8, dtype=torch.float64)
        self.pos = torch.full((N,), -1, dtype=torch.int64)
        self.index = torch.full((R,), -1, dtype=torch.int64)
        self.key = torch.full((R,), -float("inf"), dtype=torch.float64)
        self.logp = torch.full((R,), -float("inf"), dtype=torch.float64)
        self.s = torch.zeros(R, dtype=torch.float64)
        self.t = 0
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def update(self, idx: torch.Tensor, losses: torch.Tensor, margins: torch.Tensor | None = None) -> None:
        c, t = self.cfg, self.t
        loss = losses.double()
        ok = torch.isfinite(loss)
        idx, loss = idx[ok], loss[ok]
        rows = self.table[idx]
        first = rows[:, 2] == 0
        rows[:, 1] = torch.where(first, loss, c.ema_beta * rows[:, 1] + (1 - c.ema_beta) * loss)
        rows[:, 0] = loss
        rows[:, 2] += 1
        rows[:, 3] = t
        if margins is not None:
            correct = (margins[ok] > 0).double()
            rows[:, 5] += ((rows[:, 4] == 1) & (correct == 0)).double()
            rows[:, 4] = correct
        self.table[idx] = rows
        logp = torch.log(loss.clamp_min(0))
        u = torch.rand(len(idx), generator=self.gen, dtype=torch.float64)
        key = c.alpha * logp + c.lam * t - torch.log(-torch.log(u))
        slot = self.pos[idx]
        member = slot >= 0
        self.key[slot[member]] = key[member]
        self.logp[slot[member]] = logp[member]
        self.s[slot[member]] = t
        cand = ~member
        all_key = torch.cat([self.key, key[cand]])
        all_index = torch.cat([self.index, idx[cand]])
        all_logp = torch.cat([self.logp, logp[cand]])
        all_s = torch.cat([self.s, torch.full((int(cand.sum()),), float(t), dtype=torch.float64)])
        top = torch.topk(all_key, c.capacity).indices
        self.pos[self.index[self.index >= 0]] = -1
        self.key, self.index, self.logp, self.s = all_key[top], all_index[top], all_logp[top], all_s[top]
        live = self.index >= 0
        self.pos[self.index[live]] = torch.arange(c.capacity)[live]
        self.t += 1

    def draw(self, m: int, exclude: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        score = c.gamma * (self.logp + c.lam * self.s)
        score[self.index < 0] = -float("inf")
        slots = self.pos[exclude]
        score[slots[slots >= 0]] = -float("inf")
        u = torch.rand(c.capacity, generator=self.gen, dtype=torch.float64)
        g = score - torch.log(-torch.log(u))
        top = torch.topk(g, min(m, c.capacity)).indices
        return self.index[top[torch.isfinite(g[top])]]


def _make(impl: str, cfg: PolicyConfig):
    return {"native": Engine, "reference": ReferencePolicy, "torch": TorchPolicy}[impl](cfg)


def _step(impl: str, policy, idx, losses, logits, targets, m, nxt):
    if impl == "native":
        if logits is None:
            policy.update(idx, losses)
        else:
            policy.update(idx, losses, logits=logits, targets=targets)
        return policy.draw(m, nxt)
    margins = None if logits is None else margin(logits, targets)
    if impl == "torch":
        policy.update(idx, losses, margins)
        return policy.draw(m, nxt)
    policy.update(idx.tolist(), losses.tolist(), None if margins is None else margins.tolist(),
                  None if targets is None else targets.tolist())
    return policy.draw(m, nxt.tolist())


def _admitted(impl: str, policy) -> int | None:
    if impl == "native":
        return policy.totals()["admitted"]
    if impl == "reference":
        return policy.totals["admitted"]
    return None


def prepare_step(impl: str, B: int, R: int, N: int, C: int | None, m: int, steps: int, seed: int = 1,
                 warm: int = WARM_STEPS, config: dict | None = None):
    """A warmed-up policy of `impl` and the `steps` batches to time it on.

    The reservoir is filled by one batch of min(R, N) distinct examples and
    stepped WARM_STEPS times; the timed batches are made here, outside any
    timing, from a generator seeded the same for every implementation, so all
    three see the same stream. ``config``: the policy's knobs (default
    ``BENCH_CONFIG``)."""
    cfg = PolicyConfig(num_examples=N, capacity=R, **(BENCH_CONFIG if config is None else config))
    g = torch.Generator().manual_seed(seed)

    def batch(size):
        idx = torch.randperm(N, generator=g)[:size] if size > B else torch.randint(0, N, (size,), generator=g)
        size = len(idx)
        losses = torch.rand(size, generator=g) * 3
        if C is None:
            return idx, losses, None, None
        return idx, losses, torch.randn(size, C, generator=g), torch.randint(0, C, (size,), generator=g)

    policy = _make(impl, cfg)
    idx, losses, logits, targets = batch(min(R, N))
    _step(impl, policy, idx, losses, logits, targets, 0, idx[:0])
    for _ in range(warm):  # batches made one at a time: a long warm-up needs no memory
        i, l, lg, tg = batch(B)
        _step(impl, policy, i, l, lg, tg, m, torch.randint(0, N, (B - m,), generator=g))
    stream = [(*batch(B), torch.randint(0, N, (B - m,), generator=g)) for _ in range(steps)]
    return policy, stream


def bench_step(impl: str, B: int, R: int, N: int, C: int | None, m: int, steps: int = 30,
               warm: int = WARM_STEPS) -> dict:
    """Median microseconds of one step (update + draw) of `impl`, over the
    same `steps` batches for every implementation."""
    policy, stream = prepare_step(impl, B, R, N, C, m, steps, warm=warm)
    before = _admitted(impl, policy)
    times = []
    for i, l, lg, tg, nxt in stream:
        t0 = time.perf_counter()
        _step(impl, policy, i, l, lg, tg, m, nxt)
        times.append(time.perf_counter() - t0)
    after = _admitted(impl, policy)
    return dict(impl=impl, what="step", B=B, R=R, N=N, C=C, m=m, median_us=statistics.median(times) * 1e6,
                reps=len(times), admitted_per_step=None if before is None else (after - before) / len(times))


def bench_margin(impl: str, B: int, C: int, budget_s: float = 1.0) -> dict:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, C, generator=g)
    targets = torch.randint(0, C, (B,), generator=g)
    fn = (lambda: margin(logits, targets)) if impl == "native" else (lambda: torch.amax(logits, dim=1))
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < 1000 and (len(times) < 10 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return dict(impl=impl if impl == "native" else "torch-amax", what="margin", B=B, R=None, N=None, C=C, m=None,
                median_us=statistics.median(times) * 1e6, reps=len(times), admitted_per_step=None)


def cases(quick: bool, impls=("native", "torch", "reference")):
    """(kind, args) of every measurement, headline cases first."""
    if quick:
        for R in (65536, 1048576):
            for impl in impls:
                yield "step", dict(impl=impl, B=1024, R=R, N=10**6, C=None, m=256)
        if "native" in impls:
            for impl in ("native", "amax"):
                yield "margin", dict(impl=impl, B=1024, C=1000)
        return
    for N in (10**6, 10**7):
        for R in (4096, 65536, 1048576):
            for B in (256, 1024, 4096):
                for C in (None, 10, 1000):
                    for impl in impls:
                        yield "step", dict(impl=impl, B=B, R=R, N=N, C=C, m=B // 4)
    if "native" in impls:
        for C in (10, 1000, 32000):
            for impl in ("native", "amax"):
                yield "margin", dict(impl=impl, B=1024, C=C)


def table(records: list[dict]) -> str:
    """Medians as a Markdown table, each row with its ratio to native."""
    native = {}
    for r in records:
        if r["impl"] == "native":
            native[(r["what"], r["B"], r["R"], r["N"], r["C"], r["m"])] = r["median_us"]
    lines = ["| what | impl | B | R | N | C | m | median (µs) | × native | admitted/step |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        base = native.get((r["what"], r["B"], r["R"], r["N"], r["C"], r["m"]))
        ratio = f"{r['median_us'] / base:.1f}" if base else "—"
        adm = "" if r.get("admitted_per_step") is None else f"{r['admitted_per_step']:.0f}"
        fmt = lambda v: "—" if v is None else (f"10^{len(str(v)) - 1}" if v >= 10**6 and str(v).strip("0") == "1" else str(v))  # noqa: E731
        lines.append(f"| {r['what']} | {r['impl']} | {fmt(r['B'])} | {fmt(r['R'])} | {fmt(r['N'])} | {fmt(r['C'])} | "
                     f"{fmt(r['m'])} | {r['median_us']:.1f} | {ratio} | {adm} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hardmix bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the headline cases (under a minute)")
    parser.add_argument("--json", metavar="PATH", help="write the records as a JSON list")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (default 40 quick, 20 full)")
    parser.add_argument("--warm", type=int, default=WARM_STEPS,
                        help=f"steps after filling, before timing (default {WARM_STEPS}: the busiest phase)")
    parser.add_argument("--impls", default="native,torch,reference", help="comma-separated implementations")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = args.steps if args.steps is not None else (40 if args.quick else 20)
    records = []
    impls = tuple(args.impls.split(","))
    unknown = set(impls) - {"native", "torch", "reference"}
    if unknown:
        parser.error(f"--impls: unknown implementation(s) {sorted(unknown)}")
    for kind, kw in cases(args.quick, impls):
        if kind == "step":
            rec = bench_step(steps=steps, warm=args.warm, **kw)
        else:
            rec = bench_margin(kw["impl"], kw["B"], kw["C"])
        records.append(rec)
        print(f"  {rec['what']:<6} {rec['impl']:<10} B={rec['B']} R={rec['R']} N={rec['N']} C={rec['C']}: "
              f"{rec['median_us']:.1f} µs ({rec['reps']} reps)", file=sys.stderr, flush=True)
    print(table(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{k: r[k] for k in ("impl", "what", "B", "R", "N", "C", "m", "median_us", "admitted_per_step")}
                       for r in records], f, indent=1)
    return 0


__all__ = ["BENCH_CONFIG", "TorchPolicy", "bench_margin", "bench_step", "main"]


def batches_forever(sampler):
    """A ReplaySampler's batches, epoch after epoch (each new iteration starts
    the next epoch), for benchmarks that time a number of steps."""
    while True:
        yield from sampler
