"""A small CPU training loop, per step, with and without ReplaySampler.

    .venv/bin/python -m pytest benchmarks/test_bench_loop.py --benchmark-json out/bench-loop.json
    .venv/bin/python benchmarks/table.py out/bench-loop.json

The model is an MLP, 64 inputs -> 256 (ReLU) -> 10, trained by SGD (lr 0.05)
with cross-entropy on a synthetic ``TensorDataset`` of N = 20000 examples
(standard normal inputs, labels from a fixed random linear map), batch
B = 256, one intra-op thread, ``DataLoader(num_workers=0)``. One round = one
training step: the next batch from a persistent loader iterator (epoch after
epoch), forward, backward, optimizer step, and for hardmix the update. Each
variant is warmed up by WARM steps, then timed in REPS interleaved reps
(conftest.py) of ROUNDS rounds; table.py reports the median of the reps'
medians and the median of their ratios to the plain loop's.

Family "loop", one group. Anchor: ``plain``,
``DataLoader(ds, batch_size=256, shuffle=True)``. Against it: ``hardmix``,
``DataLoader(hardmix.WithIndex(ds), batch_sampler=ReplaySampler(N,
batch_size=256, capacity=8192, replay_fraction=0.25, seed=0))`` and, after the
optimizer step, ``sampler.update(idx, losses.detach(), logits=logits.detach(),
targets=y)`` as in the README's quickstart (per-example losses averaged in both
variants, the sampler's weights not applied); the replay lag is measured (0:
the next batch's draw needs this update, so the engine's work runs in the
loader's next call). ``hardmix lag 1``: the same with ``replay_lag=1``, so that
the engine's work for the next batch can run on the sampler's background
thread while the model trains (where the sampler's timing of its steps finds
that faster: docs/lag.md); ``hardmix update first``: the quickstart loop with
``update()`` called as soon as the losses are known, before the backward pass
(lag 0: the engine's work runs beside the backward pass and the optimizer
step). ``hardmix lag 1 inline``: ``replay_lag=1`` with ``background=False``
(the engine's work in the sampler's calls), so that the lag-1 row shows what
the background thread gives where the sampler chooses to use it.

Two rows separate what carrying the indices costs from what the sampler
costs: ``plain WithIndex``, the plain loop over ``hardmix.WithIndex(ds)`` (each
item a tuple with its index, the indices collated into a tensor; no
sampler), and ``hardmix batch_to_update``, the quickstart loop over the
unwrapped dataset with ``sampler.batch_to_update()`` as the indices.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import hardmix
from hardmix.bench import batches_forever

N, D, H, C = 20000, 64, 256, 10
B = 256
REPS = 10
ROUNDS = 80  # per rep
WARM = 300  # (past the sampler's first timing of its steps with and without hand-overs: hardmix.handover)


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, D, generator=g)
    Y = (X @ torch.randn(D, C, generator=g)).argmax(1)
    return TensorDataset(X, Y)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.ReLU(), torch.nn.Linear(H, C))


def _prepare(variant, warm):
    """The warmed-up training step of `variant` (one round of its benchmark)."""
    ds = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    if variant.startswith("plain"):
        data = hardmix.WithIndex(ds) if variant == "plain WithIndex" else ds
        loader = DataLoader(data, batch_size=B, shuffle=True, generator=torch.Generator().manual_seed(0))
        batches = batches_forever(loader)

        def step():
            *_, x, y = next(batches)  # (with WithIndex: the indices first, unused)
            logits = model(x)
            losses = F.cross_entropy(logits, y, reduction="none")
            losses.mean().backward()
            opt.step()
            opt.zero_grad()

    else:
        lag = 1 if variant.startswith("hardmix lag 1") else None
        sampler = hardmix.ReplaySampler(N, batch_size=B, capacity=8192, replay_fraction=0.25, seed=0, replay_lag=lag,
                                        background=not variant.endswith("inline"))
        held = variant == "hardmix batch_to_update"  # (the indices from the sampler, not the items)
        loader = DataLoader(ds if held else hardmix.WithIndex(ds), batch_sampler=sampler)
        batches = batches_forever(loader)

        first = variant == "hardmix update first"

        def step():
            *idx, x, y = next(batches)
            idx = sampler.batch_to_update() if held else idx[0]
            logits = model(x)
            losses = F.cross_entropy(logits, y, reduction="none")
            if first:
                sampler.update(idx, losses.detach(), logits=logits.detach(), targets=y)
            losses.mean().backward()
            opt.step()
            opt.zero_grad()
            if not first:
                sampler.update(idx, losses.detach(), logits=logits.detach(), targets=y)

    for _ in range(warm):
        step()
    return step


# order of the tests: rep 0 of both variants, then rep 1, ...
@pytest.mark.parametrize("variant", ["plain", "plain WithIndex", "hardmix", "hardmix batch_to_update",
                                     "hardmix lag 1", "hardmix lag 1 inline", "hardmix update first"])
@pytest.mark.parametrize("rep", range(REPS))
def test_loop(benchmark, tag, smoke, prepared, variant, rep):
    if variant not in prepared:
        prepared[variant] = _prepare(variant, 2 if smoke else WARM)
    tag("loop", f"MLP {D}-{H}-{C} N={N} B={B}", variant, "plain", rep=rep, N=N, B=B)
    benchmark.pedantic(prepared[variant], rounds=ROUNDS, iterations=1)
