"""ReplaySampler costs: one training step's sampler work against the bare
engine, and state_dict() (which torchdata's StatefulDataLoader calls once per
batch) against N.

    .venv/bin/python -m pytest benchmarks/bench_sampler.py --benchmark-json out/bench-sampler.json
    .venv/bin/python benchmarks/table.py out/bench-sampler.json --baseline engine

Groups (ratios are to the "engine" row of the group, or to N=10^4 for state_dict):
- "step": the sampler's work per batch (next batch with its replay draw and
  weights, then update) against the engine's (update + draw) on the same stream.
- "step+state_dict": the same plus one state_dict() per batch, as under
  StatefulDataLoader (its amortized copy of the engine every ceil(N/B) calls included).
- "state_dict": one call, between two copies of the engine.
- "stats": stats() with and without the class histogram and mean age (O(R)),
  for R = 8192 and 65536 (the figures the README and the docstring quote).
"""

import pytest
import torch

import hardmix
from hardmix.bench import batches_forever

B, R = 256, 8192
RHO = 0.25
STEPS = 400


def _sampler(N):
    return hardmix.ReplaySampler(N, batch_size=B, capacity=R, replay_fraction=RHO, seed=0, replay_lag=0)


def _losses(N):
    return torch.rand(N, generator=torch.Generator().manual_seed(0), dtype=torch.float32)


def _warm(s, loss_of, steps):
    it = batches_forever(s)
    for _ in range(steps):
        b = torch.tensor(next(it))
        s.update(b, loss_of[b])
    return it


@pytest.mark.parametrize("N", [10**4, 10**5, 10**6])
@pytest.mark.parametrize("impl", ["engine", "sampler", "sampler+state_dict"])
def test_step(benchmark, impl, N):
    loss_of = _losses(N)
    m = hardmix.schedules.replay_count(RHO, B)
    if impl == "engine":
        eng = hardmix.Engine(hardmix.PolicyConfig(num_examples=N, capacity=R, seed=0))
        order = torch.randperm(N, generator=torch.Generator().manual_seed(1))
        pos = [0]

        def one():
            k = pos[0] % (N - B)
            fresh = order[k : k + B - m]
            replay = eng.draw(m, exclude=fresh)
            b = torch.cat([fresh, replay])
            eng.update(b, loss_of[b])
            pos[0] += B - m

        for _ in range(50):
            one()
    else:
        s = _sampler(N)
        it = _warm(s, loss_of, 50)
        with_sd = impl.endswith("state_dict")

        def one():
            idx = torch.tensor(next(it))
            s.weights(idx)
            s.update(idx, loss_of[idx])
            if with_sd:
                s.state_dict()

    benchmark.group = f"step B={B} R={R} N={N}"
    benchmark.extra_info.update(impl=impl, what="step", B=B, R=R, N=N)
    benchmark.pedantic(one, rounds=STEPS, iterations=1)


@pytest.mark.parametrize("N", [10**4, 10**5, 10**6])
def test_state_dict(benchmark, N):
    s = _sampler(N)
    _warm(s, _losses(N), 20)
    s.state_dict()  # the copy of the engine, once
    benchmark.group = f"state_dict B={B} R={R}"
    benchmark.extra_info.update(impl=f"N={N}", what="state_dict", B=B, R=R, N=N)
    benchmark.pedantic(s.state_dict, rounds=2000, iterations=1)


@pytest.mark.parametrize("full", [True, False])
@pytest.mark.parametrize("R_", [8192, 65536])
def test_stats(benchmark, R_, full):
    N = 10**6
    s = hardmix.ReplaySampler(N, batch_size=1024, capacity=R_, replay_fraction=RHO, seed=0, replay_lag=0)
    _warm(s, _losses(N), 80)  # enough to fill the reservoir
    benchmark.group = f"stats N={N}"
    benchmark.extra_info.update(impl=f"R={R_} full={full}", what="stats", R=R_, N=N)
    benchmark.pedantic(lambda: s.stats(full=full), rounds=200, iterations=1)
