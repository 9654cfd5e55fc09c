"""Fuzzing Engine.load_state_dict with corrupted states, every case guarded.

A pool of genuine engine states (random configs with every option, whole
tables and W = 2 sharded tables, driven by random streams) is built from the
seed. Case k corrupts one element of one state tensor of one of them (a bit
flip, or a value replaced by one of a list of likely trouble-makers), loads it
into a fresh engine and, if the load accepts it, runs 20 updates and draws and
checks that the engine's state is still valid. Each case ends as one of:

- ``refused``: ValueError("engine state: ...");
- ``accepted``: loaded, ran, and left a valid state;
- failures: ``unclear`` (the load raised something else), ``late`` (an update
  or draw raised), ``drift`` (the state after the run fails the check),
  ``crash`` (the worker process died) or ``hang`` (no answer in time).

Cases run in worker subprocesses, in chunks; a watchdog in the parent gives
each case a timeout, and after a crash or hang attributes it to the case that
was running (workers announce each case before they start it) and goes on
with a new worker from the next case. Run as a script for a long run:

    PYTHONPATH=python python tests/engine_state_fuzz.py --cases 10000 --seed 0
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time

import torch

from hardmix.config import SCORES, PolicyConfig
from hardmix.engine import STATE_TENSORS, Engine
from hardmix.state_check import check_state

FAILURES = ("unclear", "late", "drift", "crash", "hang")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- genuine states ---------------------------------------------------------------------


def random_config(r: random.Random, **fixed) -> PolicyConfig:
    quotas = r.random() < 0.5
    kw = dict(
        num_examples=r.choice([1, 5, 40, 300]),
        capacity=r.choice([1, 2, 3, 8, 13, 64]),  # R > N included
        seed=r.randrange(2**64),
        score=r.choice(SCORES),
        alpha=r.choice([0.0, 0.5, 1.0, 4.0]),
        lam=r.choice([0.0, 0.01, 1.0, 40.0]),  # 40: rebases every few steps
        gamma=r.choice([0.0, 1.0, 2.5]),
        ema_beta=r.choice([0.0, 0.5, 0.9]),
        graduation=r.choice([0.0, 0.0, 0.3]),
        max_wrong=r.choice([0, 0, 1, 2, 3]),
        quarantine_steps=r.choice([0, 4]),
        max_new_per_step=r.choice([0, 0, 1, 3]),
        class_quotas=quotas,
        num_classes=r.randint(1, 4) if quotas else r.choice([0, 3]),
        balance_replay=quotas and r.random() < 0.5,
        reweight_every=r.choice([1, 1, 3]),
        forget_boost=r.choice([0.0, 1.0]),
        rank_window=r.choice([1, 4, 64]),
    )
    kw.update(fixed)
    return PolicyConfig(**kw)


LOSSES = [0.0, 0.25, 0.5, 1.0, 2.0, -0.5, 1e-30, 1e30, float("nan"), float("inf")]


def random_batch(r: random.Random, cfg: PolicyConfig, B: int | None = None) -> dict:
    """A valid update(): indices, losses (NaN/inf included: skipped), and what
    the config needs or allows."""
    B = r.randint(0, 16) if B is None else B
    N = cfg.num_examples
    kw = dict(indices=torch.tensor([r.randrange(N) for _ in range(B)], dtype=torch.int64),
              losses=torch.tensor([r.choice(LOSSES) if r.random() < 0.3 else r.uniform(0, 5) for _ in range(B)],
                                  dtype=torch.float32))
    if cfg.score == "margin" or r.random() < 0.6:
        kw["margins"] = torch.tensor([r.uniform(-3, 3) for _ in range(B)], dtype=torch.float32)
    if cfg.class_quotas or (cfg.num_classes and r.random() < 0.5):
        kw["classes"] = torch.tensor([r.randrange(cfg.num_classes) for _ in range(B)], dtype=torch.int64)
    if cfg.score == "given":
        kw["priorities"] = torch.tensor([r.choice([0.0, 0.1, 1.0, 3.0, r.random()]) for _ in range(B)],
                                        dtype=torch.float64)
    if r.random() < 0.3:
        kw["replayed"] = torch.tensor([r.random() < 0.3 for _ in range(B)], dtype=torch.bool)
    return kw


class Run:
    """One whole-table engine, or the W shards of one (dynamics summed: the all_reduce)."""

    def __init__(self, cfg: PolicyConfig, world: int = 0):
        self.cfg = cfg
        self.engines = [Engine(cfg)] if world == 0 else [Engine(cfg, shard=(r, world)) for r in range(world)]

    @property
    def sharded(self) -> bool:
        return self.engines[0].shard is not None

    def step(self, r: random.Random, batch: dict | None = None, agree: bool = True) -> None:
        batch = random_batch(r, self.cfg) if batch is None else batch
        if not self.sharded:
            self.engines[0].update(**batch)
        else:
            dyn = {k: v for k, v in batch.items() if k != "replayed"}
            rows = sum(e.dynamics(e.step, **dyn) for e in self.engines)
            for e in self.engines:
                e.update(**batch, rows=rows)
        m = r.randint(0, 6)
        exclude = batch["indices"][: r.randint(0, 4)]
        draws = [e.draw(m, exclude) for e in self.engines]
        # (shards of a genuine run agree; a corrupted replicated state may make them differ)
        assert not agree or all(torch.equal(d, draws[0]) for d in draws), "the shards' draws differ"

    def states(self) -> list[dict]:
        return [e.state_dict() for e in self.engines]


def pool(seed: int, n: int = 24) -> list[tuple[PolicyConfig, int, list[dict]]]:
    """Genuine states: (config, world, each shard's state) at random steps of random runs."""
    r = random.Random(f"pool:{seed}")
    out = []
    for k in range(n):
        world = 2 if k % 4 == 3 else 0
        fixed = dict(capacity=r.choice([8, 13])) if k % 6 == 5 else {}
        run = Run(random_config(r, **fixed), world)
        steps = r.choice([0, 3, 10, 30, 60])
        for _ in range(steps):
            run.step(r)
        out.append((run.cfg, world, run.states()))
    return out


# --- corruptions --------------------------------------------------------------------------

INTS = [-(2**31), -(2**31) + 1, -3, -2, -1, 0, 1, 2, 3, 2**31 - 1]
FLOATS = [float("nan"), float("inf"), float("-inf"), -1.0, -0.5, 0.0, -0.0, 0.5, 1.0, 2.0, 1e300, -1e300, 5e-324]


def corrupt(r: random.Random, state: dict, cfg: PolicyConfig) -> str:
    """Changes one element of one tensor of ``state`` in place; returns what it did."""
    name = r.choice([n for n in STATE_TENSORS if state[n].numel()])
    return f"{name}" + corrupt_tensor(r, state[name], cfg.capacity, cfg.num_examples)


def corrupt_tensor(r: random.Random, t: torch.Tensor, capacity: int, num_examples: int) -> str:
    """Changes one element of ``t`` in place; returns what it did."""
    x = t.view(-1)
    if x.dtype == torch.bool:
        k = r.randrange(x.numel())
        x[k] = not bool(x[k])
        return f"[{k}] flipped"
    k = r.randrange(x.numel())
    old = x[k].item()
    kind = r.random()
    if kind < 0.5:  # a bit flip
        bits = x.element_size() * 8
        b = r.randrange(bits)
        as_int = x.view({8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[x.element_size()])
        as_int[k] ^= (1 << b) if b < bits - 1 else -(1 << b)
        what = f"bit {b}"
    elif kind < 0.8:  # a likely trouble-maker
        if x.is_floating_point():
            v = r.choice(FLOATS + [float(capacity), float(num_examples), float(capacity - 1), old + 1,
                                   old - 1, -old, old * 2])
        else:
            v = r.choice(INTS + [capacity, capacity - 1, capacity + 1, num_examples,
                                 int(old) + 1, int(old) - 1, 2 * capacity])
            if x.dtype == torch.int64 and r.random() < 0.3:
                v = r.choice([2**62, -(2**63), 2**63 - 1, 10**12])
        try:
            x[k] = v
        except RuntimeError:  # (too large for a float32 or int32 tensor: its extreme instead)
            v = (torch.finfo(x.dtype).max if x.is_floating_point() else torch.iinfo(x.dtype).max) * (1 if v > 0 else -1)
            x[k] = v
        what = f"value {v!r}"
    else:  # another element's value
        k2 = r.randrange(x.numel())
        x[k] = x[k2]
        what = f"copy of [{k2}]"
    return f"[{k}] {old!r} -> {what}"


def _load_unchecked(e: Engine, state: dict) -> None:
    """What load_state_dict did before it validated (shapes and dtypes only): for
    --unchecked, to see that the harness catches the crashes and hangs."""
    for name in STATE_TENSORS:
        getattr(e, name).copy_(state[name])
    e._t = int(state["counters"][0])


def run_case(cases: list, seed: int, k: int, unchecked: bool = False) -> tuple[str, str]:
    r = random.Random(f"case:{seed}:{k}")
    cfg, world, states = cases[r.randrange(len(cases))]
    states = [{key: (v.clone() if isinstance(v, torch.Tensor) else v) for key, v in s.items()} for s in states]
    victim = r.randrange(len(states))
    what = corrupt(r, states[victim], cfg) + (f" (shard {victim} of {world})" if world else "")
    run = Run(cfg, world)
    try:
        for e, s in zip(run.engines, states):
            _load_unchecked(e, s) if unchecked else e.load_state_dict(s)
    except ValueError as err:
        if str(err).startswith("engine state: "):
            return "refused", what + ": " + str(err)[:200]
        return "unclear", what + ": " + repr(err)[:300]
    except Exception as err:  # noqa: BLE001
        return "unclear", what + ": " + repr(err)[:300]
    try:
        for _ in range(20):
            run.step(r, agree=False)
    except Exception as err:  # noqa: BLE001
        return "late", what + ": " + repr(err)[:300]
    try:
        for e in [] if unchecked else run.engines:
            check_state(e.state_dict(), cfg, e.shard)
    except ValueError as err:
        return "drift", what + ": " + str(err)[:300]
    return "accepted", what


# --- whole sampler states ------------------------------------------------------------------


def sampler_pool(seed: int, n: int = 12) -> list:
    """Genuine ReplaySampler states with logged updates and batches in flight:
    (constructor arguments, state)."""
    import hardmix
    from hardmix.bench import batches_forever

    r = random.Random(f"sampler-pool:{seed}")
    out = []
    for k in range(n):
        kw = dict(num_examples=r.choice([30, 97]), batch_size=r.choice([4, 8]), capacity=r.choice([5, 16]),
                  replay_fraction=r.choice([0.25, 0.5]), seed=r.randrange(2**32), replay_lag=r.choice([0, 1, 3]),
                  store_logits=r.random() < 0.3, num_classes=r.choice([0, 3]))
        if k % 3 == 2:
            kw.update(gamma=1.0, lam=0.1, alpha=1.0)
        s = hardmix.ReplaySampler(**kw)
        it = batches_forever(s)
        steps = r.choice([2, 6, 15])
        for step in range(steps):
            b = torch.tensor(next(it))
            if step == steps // 2:
                s.state_dict()  # the log starts: later updates are logged
            s.update(b, torch.rand(len(b)), logits=torch.randn(len(b), 3), targets=b % 3)
        for _ in range(kw["replay_lag"]):  # batches yielded, not yet updated
            next(it)
        out.append((kw, _clone(s.state_dict())))
    return out


def _clone(v):
    if isinstance(v, torch.Tensor):
        return v.clone()
    if isinstance(v, dict):
        return {k: _clone(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_clone(x) for x in v)
    return v


def _tensors(v, path=""):
    """(path, tensor) of every tensor in a nested state, and (path, container, key) of every int."""
    if isinstance(v, torch.Tensor):
        yield "t", path, v
    elif isinstance(v, dict):
        for k, x in v.items():
            if isinstance(x, int) and not isinstance(x, bool):
                yield "i", f"{path}.{k}", (v, k)
            else:
                yield from _tensors(x, f"{path}.{k}")
    elif isinstance(v, list):
        for k, x in enumerate(v):
            if isinstance(x, int) and not isinstance(x, bool):
                yield "i", f"{path}[{k}]", (v, k)
            else:
                yield from _tensors(x, f"{path}[{k}]")


def _slots(v, path=""):
    """(path, container, key) of every value in a nested state (containers too)."""
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
    for k, x in items:
        where = f"{path}.{k}" if isinstance(v, dict) else f"{path}[{k}]"
        yield where, v, k
        yield from _slots(x, where)


def _other_type(r: random.Random, old):
    """A value of another kind than ``old``: what a hand-edited or foreign checkpoint might hold."""
    kinds = [None, True, 3, 2.5, "x", [1, 2], {"a": 1}, torch.zeros(2), torch.tensor(7), (1,)]
    return r.choice([v for v in kinds if type(v) is not type(old)])


def run_sampler_case(cases: list, seed: int, k: int) -> tuple[str, str]:
    """Case k over whole sampler states: one int or tensor element changed as
    in run_case, or (one case in five) any value, containers included,
    replaced by one of another type; then load_state_dict and 20 steps."""
    import hardmix
    from hardmix.bench import batches_forever

    r = random.Random(f"sampler-case:{seed}:{k}")
    kw, state = cases[r.randrange(len(cases))]
    state = _clone(state)
    places = [p for p in _tensors(state) if p[0] == "i" or p[2].numel()]
    kind, path, obj = r.choice(places)
    if r.random() < 0.2:  # a value of another type anywhere, containers included
        path, d, key = r.choice(list(_slots(state)))
        old = d[key]
        d[key] = _other_type(r, old)
        what = f"{path} {type(old).__name__} -> {d[key]!r}"
    elif kind == "t":
        what = path + " " + corrupt_tensor(r, obj, kw["capacity"], kw["num_examples"])
    else:
        d, key = obj
        old = d[key]
        d[key] = r.choice(INTS + [old + 1, old - 1, -old, 2**62, 10**12])
        what = f"{path} {old!r} -> {d[key]!r}"
    s = hardmix.ReplaySampler(**kw)
    try:
        s.load_state_dict(state)
    except ValueError as err:
        if str(err).startswith(("engine state: ", "load_state_dict: ")):
            return "refused", what + ": " + str(err)[:200]
        return "unclear", what + ": " + repr(err)[:300]
    except Exception as err:  # noqa: BLE001
        return "unclear", what + ": " + repr(err)[:300]
    try:
        it = batches_forever(s)
        for _ in range(20):
            b = torch.tensor(next(it))
            s.update(b, torch.rand(len(b)), logits=torch.randn(len(b), 3), targets=b % 3)
        s.stats()
    except Exception as err:  # noqa: BLE001
        return "late", what + ": " + repr(err)[:300]
    return "accepted", what


# --- the worker and the watchdog ----------------------------------------------------------


def worker(seed: int, start: int, stop: int, unchecked: bool = False, pool_size: int = 24,
           sampler: bool = False) -> None:
    cases = sampler_pool(seed) if sampler else pool(seed, pool_size)
    # The watchdog's own test: "crash:K,hang:K2" makes case K die (SIGSEGV) and case K2 hang.
    simulate = dict(reversed(kv.split(":")) for kv in os.environ.get("HARDMIX_FUZZ_SIMULATE", "").split(",") if kv)
    out = sys.stdout
    for k in range(start, stop):
        out.write(f"S {k}\n")
        out.flush()
        if simulate.get(str(k)) == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        if simulate.get(str(k)) == "hang":
            time.sleep(3600)
        outcome, detail = run_sampler_case(cases, seed, k) if sampler else run_case(cases, seed, k, unchecked)
        out.write(f"R {k} {outcome} {json.dumps(detail)}\n")
        out.flush()


def _reader(stream, q: queue.Queue) -> None:
    for line in stream:
        q.put(line)
    q.put(None)


def fuzz(cases: int, seed: int = 0, chunk: int = 500, case_timeout: float = 20.0, startup_timeout: float = 120.0,
         log=None, unchecked: bool = False, env: dict | None = None,
         pool_size: int = 24, sampler: bool = False) -> tuple[collections.Counter, list]:
    """Runs cases [0, cases) under the watchdog. Returns the counts by outcome
    and the failures as (case, outcome, detail)."""
    counts: collections.Counter = collections.Counter()
    failures = []
    env = {**os.environ, **(env or {})}
    # (the tests' helpers; hardmix itself as this process imports it: installed, or PYTHONPATH)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "tests"), env.get("PYTHONPATH", "")])
    k = 0
    while k < cases:
        stop = min(cases, k + chunk)
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", "--seed", str(seed),
                                 "--start", str(k), "--stop", str(stop), "--pool", str(pool_size)]
                                + (["--unchecked"] if unchecked else []) + (["--sampler"] if sampler else []),
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        q: queue.Queue = queue.Queue()
        threading.Thread(target=_reader, args=(proc.stdout, q), daemon=True).start()
        err_lines: list = []
        threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True).start()
        running, timeout, hung = None, startup_timeout, False
        while True:
            try:
                line = q.get(timeout=timeout)
            except queue.Empty:
                hung = True
                proc.kill()
                break
            if line is None:
                break
            kind, n, *rest = line.rstrip("\n").split(" ", 3)
            if kind == "S":
                running, timeout = int(n), case_timeout
            else:
                outcome, detail = rest[0], json.loads(rest[1])
                counts[outcome] += 1
                if outcome in FAILURES:
                    failures.append((int(n), outcome, detail))
                running = None
                k = int(n) + 1
        rc = proc.wait()
        if running is None and k >= stop:
            continue
        if running is None:  # died or hung between cases (at start-up): not a case's fault
            raise RuntimeError(f"fuzz worker failed outside a case (rc {rc}): {''.join(err_lines)[-2000:]}")
        outcome = "hang" if hung else "crash"
        why = "no answer in time" if hung else (f"killed by signal {signal.Signals(-rc).name}" if rc < 0
                                                 else f"exit status {rc}")
        counts[outcome] += 1
        failures.append((running, outcome, f"{why}; stderr: {''.join(err_lines)[-500:]}"))
        k = running + 1
        if log:
            log(f"case {running}: {outcome} ({why})")
    return counts, failures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=500)
    p.add_argument("--case-timeout", type=float, default=20.0)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--stop", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--show", type=int, default=10, help="print this many failures")
    p.add_argument("--pool", type=int, default=24, help="genuine states to corrupt (from the seed)")
    p.add_argument("--unchecked", action="store_true",
                   help="load without validation (shapes and dtypes only), to see the harness catch failures")
    p.add_argument("--sampler", action="store_true",
                   help="corrupt whole ReplaySampler states (engine, logged updates, batches, positions)")
    a = p.parse_args()
    if a.worker:
        torch.set_num_threads(1)
        worker(a.seed, a.start, a.stop, a.unchecked, a.pool, a.sampler)
        return
    t0 = time.perf_counter()
    counts, failures = fuzz(a.cases, a.seed, a.chunk, a.case_timeout, log=lambda s: print(s, flush=True),
                            unchecked=a.unchecked, pool_size=a.pool, sampler=a.sampler)
    bad = sum(counts[f] for f in FAILURES)
    print(f"cases {a.cases}  refused with a clear error {counts['refused']}  accepted and ran {counts['accepted']}  "
          f"crashes {counts['crash']}  hangs {counts['hang']}  unclear errors {counts['unclear']}  "
          f"late errors {counts['late']}  drift {counts['drift']}  ({time.perf_counter() - t0:.0f} s)")
    for n, outcome, detail in failures[: a.show]:
        print(f"  case {n}: {outcome}: {detail}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
