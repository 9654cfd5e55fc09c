"""The sampler's cost on the training thread, per step, against a plain
``torch.utils.data.BatchSampler``.

    .venv/bin/python -m pytest benchmarks/test_bench_sampler.py --benchmark-json out/bench-sampler.json
    .venv/bin/python benchmarks/table.py out/bench-sampler.json

B = 256, capacity R = 8192, replay_fraction 0.25, replay_lag 0 (a loop
without workers), CPU tensors, one intra-op thread. Each implementation is
warmed up by WARM steps (the reservoir full and turning over), then timed in
REPS interleaved reps (conftest.py) of ROUNDS rounds of one step each;
table.py reports the median of the reps' medians and the median of their
ratios to the anchor's.

Family "sampler step", one group per N (10^5, 10^6). Anchor: ``BatchSampler``,
``BatchSampler(RandomSampler(range(N)), 256, drop_last=False)``, one step =
next batch + ``torch.tensor(batch)`` (what a DataLoader's sampler side does for
a batch). The other rows, each divided by the anchor:

- ``sampler``: ``ReplaySampler``, one step = next batch (fresh examples plus
  the replay draw) + ``torch.tensor(batch)`` + ``weights(idx)`` +
  ``update(idx, losses)`` (losses precomputed, B floats);
- ``sampler+state_dict``: the same plus one ``state_dict()`` per step, as
  torchdata's ``StatefulDataLoader`` calls it (the median leaves out the O(N)
  copy of the engine that one call in ceil(N/B) makes; the mean has it);
- ``state_dict``: one ``state_dict()`` call alone;
- ``engine``: the bare ``hardmix.Engine`` on a similar stream: ``draw`` of m
  replay members excluding the B - m fresh ones, then ``update`` of the B.

Family "sampler beside a waiting step", one group per N: the same calls in
a loop whose model step leaves the host waiting for WAIT (as a GPU-bound
step does; here ``time.sleep``, the GIL released), so that the sampler's
background thread can work meanwhile. One round = the training thread's
calls between two such waits (setup, untimed: the wait): for the sampler,
``weights`` + ``update`` of the batch trained on, then the next batch +
``torch.tensor``; for the anchor ``BatchSampler`` the next batch +
``torch.tensor``. ``sampler lag 1``: ``replay_lag=1`` (the engine's work
for a batch can run during the previous batch's step, where the sampler's
timing of its steps finds that faster: hardmix.handover); ``sampler lag 1
inline``: the same with ``background=False``; ``sampler lag 0``: the draw
needs the update just made. Warmed up past the sampler's first timing of
its steps with and without hand-overs.

Family "epoch start", one group per N (10^5, 10^6): what starting an epoch
costs on the training thread (the sampler plans the whole epoch then: each
batch's fresh examples, the pass's shuffle, the replay counts). Anchor:
``BatchSampler``, the first batch of a new epoch of
``BatchSampler(RandomSampler(range(N)), 256)`` (its permutation is drawn
then); ``sampler``: ``set_epoch(e)`` on a ReplaySampler (B = 256, R = 8192,
replay fraction 0.25) with no batch in flight, a new e each round.

Family "stats" (N = 10^6, B = 1024, one group per R = 8192, 65536, without
classes and with C = 10, given by logits and targets, so class quotas):
anchor ``stats(full=False)`` (O(1)), against ``stats(full=True)`` (the mean
age passes over R; the class histogram too, without class quotas).
"""

import itertools
import time

import pytest
import torch
from torch.utils.data import BatchSampler, RandomSampler

import hardmix
from hardmix.bench import batches_forever

B, R = 256, 8192
RHO = 0.25
REPS = 5
ROUNDS = 250  # per rep
WARM = 60
IMPLS = ["BatchSampler", "engine", "sampler", "sampler+state_dict", "state_dict"]
WAIT = 1e-3  # seconds: the model's step beside the sampler, during which the host waits
WAIT_IMPLS = ["BatchSampler", "sampler lag 1", "sampler lag 1 inline", "sampler lag 0"]
WAIT_WARM = 320  # steps: past the first timing of steps with and without hand-overs (handover.FIRST + a probe)


def _sampler(N, batch_size=B, capacity=R):
    return hardmix.ReplaySampler(N, batch_size=batch_size, capacity=capacity, replay_fraction=RHO, seed=0,
                                 replay_lag=0)


def _loss_pool(size, k=64):
    g = torch.Generator().manual_seed(0)
    return itertools.cycle([3 * torch.rand(size, generator=g) for _ in range(k)])


def _losses(pool, n):
    """The pool's next losses for a batch of ``n`` (a model's output: no slice
    unless the batch is short, an epoch's last)."""
    losses = next(pool)
    return losses if len(losses) == n else losses[:n]


def _warm(s, steps, batch_size=B, classes=0):
    """``steps`` batches of ``s`` updated; with ``classes``, with logits and
    targets of that many classes (the sampler then runs class quotas)."""
    it, pool = batches_forever(s), _loss_pool(batch_size)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.tensor(next(it))
        if classes:
            s.update(idx, _losses(pool, len(idx)), logits=torch.randn(len(idx), classes, generator=g),
                     targets=idx % classes)
        else:
            s.update(idx, _losses(pool, len(idx)))
    return it, pool


def _fmt_n(N):
    return f"N=10^{len(str(N)) - 1}"


def _prepare(impl, N, warm):
    """The warmed-up step function of `impl` (one round of its benchmark)."""
    if impl == "BatchSampler":
        bs = BatchSampler(RandomSampler(range(N), generator=torch.Generator().manual_seed(0)), B, drop_last=False)
        it = batches_forever(bs)  # a new permutation each pass, as a DataLoader's epochs make

        def one():
            return torch.tensor(next(it))

        for _ in range(warm):
            one()
        return one
    if impl == "engine":
        m = hardmix.schedules.replay_count(RHO, B)
        eng = hardmix.Engine(hardmix.PolicyConfig(num_examples=N, capacity=R, seed=0))
        order = torch.randperm(N, generator=torch.Generator().manual_seed(1))
        pool = _loss_pool(B)
        pos = [0]

        def one():
            k = pos[0] % (N - B)
            fresh = order[k : k + B - m]
            replay = eng.draw(m, exclude=fresh)
            b = torch.cat([fresh, replay])
            eng.update(b, _losses(pool, len(b)))
            pos[0] += B - m

        for _ in range(warm):
            one()
        return one
    s = _sampler(N)
    it, pool = _warm(s, warm)
    if impl == "state_dict":
        s.state_dict()  # the copy of the engine, once
        return s.state_dict
    with_sd = impl == "sampler+state_dict"

    def one():
        idx = torch.tensor(next(it))
        s.weights(idx)
        s.update(idx, _losses(pool, len(idx)))
        if with_sd:
            s.state_dict()

    return one


def _wait():
    time.sleep(WAIT)


def _prepare_waiting(impl, N, warm):
    """The warmed-up round of `impl` beside a waiting step (see the module
    docstring): the training thread's calls between two waits."""
    if impl == "BatchSampler":
        bs = BatchSampler(RandomSampler(range(N), generator=torch.Generator().manual_seed(0)), B, drop_last=False)
        it = batches_forever(bs)

        def calls():
            torch.tensor(next(it))

    else:
        s = hardmix.ReplaySampler(N, batch_size=B, capacity=R, replay_fraction=RHO, seed=0,
                                  replay_lag=0 if impl == "sampler lag 0" else 1,
                                  background=not impl.endswith("inline"))
        it, pool = batches_forever(s), _loss_pool(B)
        held = [torch.tensor(next(it))]  # the batch the waiting step trains on

        def calls():
            idx = held[0]
            s.weights(idx)
            s.update(idx, _losses(pool, len(idx)))
            held[0] = torch.tensor(next(it))

    for _ in range(warm):
        _wait()
        calls()
    return calls


# order of the tests: for each N, rep 0 of every impl, then rep 1, ...
@pytest.mark.parametrize("impl", WAIT_IMPLS)
@pytest.mark.parametrize("rep", range(REPS))
@pytest.mark.parametrize("N", [10**5, 10**6], ids=_fmt_n)
def test_sampler_beside_a_waiting_step(benchmark, tag, smoke, prepared, impl, rep, N):
    calls = prepared.of(("waiting", N), impl, lambda: _prepare_waiting(impl, N, 2 if smoke else WAIT_WARM))
    tag("sampler beside a waiting step", f"B={B} R={R} {_fmt_n(N)} wait={WAIT * 1e3:g}ms", impl, "BatchSampler",
        rep=rep, B=B, R=R, N=N)
    benchmark.pedantic(calls, setup=_wait, rounds=ROUNDS, iterations=1)


# order of the tests: for each N, rep 0 of every impl, then rep 1, ...
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rep", range(REPS))
@pytest.mark.parametrize("N", [10**5, 10**6], ids=_fmt_n)
def test_sampler_step(benchmark, tag, smoke, prepared, impl, rep, N):
    one = prepared.of(("sampler step", N), impl, lambda: _prepare(impl, N, 2 if smoke else WARM))
    tag("sampler step", f"B={B} R={R} {_fmt_n(N)}", impl, "BatchSampler", rep=rep, B=B, R=R, N=N)
    benchmark.pedantic(one, rounds=2 * ROUNDS if impl == "state_dict" else ROUNDS, iterations=1)


def _prepare_epoch_start(impl, N):
    """One round of `impl`'s epoch start (see the module docstring)."""
    if impl == "BatchSampler":
        bs = BatchSampler(RandomSampler(range(N), generator=torch.Generator().manual_seed(0)), B, drop_last=False)
        return lambda: next(iter(bs))
    s = _sampler(N)
    epochs = itertools.count(1)
    return lambda: s.set_epoch(next(epochs))


# order of the tests: for each N, rep 0 of both impls, then rep 1, ...
@pytest.mark.parametrize("impl", ["BatchSampler", "sampler"])
@pytest.mark.parametrize("rep", range(3))
@pytest.mark.parametrize("N", [10**5, 10**6], ids=_fmt_n)
def test_epoch_start(benchmark, tag, smoke, prepared, impl, rep, N):
    one = prepared.of(("epoch start", N), impl, lambda: _prepare_epoch_start(impl, 1000 if smoke else N))
    tag("epoch start", _fmt_n(N), impl, "BatchSampler", rep=rep, B=B, R=R, N=N)
    benchmark.pedantic(one, rounds=1 if smoke else 10, iterations=1)


@pytest.mark.parametrize("C", [0, 10], ids=["no classes", "C=10"])
@pytest.mark.parametrize("R_", [8192, 65536])
@pytest.mark.parametrize("full", [False, True], ids=["brief", "full"])
def test_stats(benchmark, tag, smoke, R_, full, C):
    N = 10**6
    s = _sampler(N, batch_size=1024, capacity=R_)
    _warm(s, 2 if smoke else 80, batch_size=1024, classes=C)  # 80 batches of 1024 fill R = 65536
    tag("stats", f"N=10^6 R={R_}" + (f" C={C}" if C else ""), f"stats(full={full})", "stats(full=False)", R=R_, N=N)
    benchmark.pedantic(lambda: s.stats(full=full), rounds=200, iterations=1)
