"""One full policy step (update of B examples, then the replay draw of m) for
the native engine, the pure-Python reference and a torch composition, across
the reservoir capacity R (the data for a "time per step against R" plot).

    .venv/bin/python -m pytest benchmarks/test_bench_step.py --benchmark-json out/bench-step.json
    .venv/bin/python benchmarks/table.py out/bench-step.json

B = 1024, m = 256, N = 10^6, no logits, R = 2^12 .. 2^20. The workload is
``hardmix.bench.prepare_step``'s (the same as ``python -m hardmix bench``):
the reservoir filled with min(R, N) examples and stepped 10 times, then every
implementation runs the same timed batches (the busy phase: hundreds of
admissions per step). One intra-op thread; medians over the timed steps
(fewer at R >= 2^18, where the reference and the torch composition take tens
to hundreds of milliseconds a step and the reference's fill takes the longest).

Family "step", one group per R. Anchor: ``native`` (``hardmix.Engine``).
Against it: ``reference`` (``hardmix.ReferencePolicy``) and ``torch``
(``hardmix.bench.TorchPolicy``).
"""

import pytest

from hardmix.bench import _step, prepare_step

B, M, N = 1024, 256, 10**6
RS = [4096, 16384, 65536, 262144, 1048576]


@pytest.mark.parametrize("R", RS)
@pytest.mark.parametrize("impl", ["native", "torch", "reference"])
def test_step(benchmark, tag, smoke, impl, R):
    steps = 20 if R <= 65536 else 10
    if smoke:  # the code path at toy sizes
        policy, stream = prepare_step(impl, 64, 256, 2000, None, 16, 1, warm=1)
        m = 16
    else:
        policy, stream = prepare_step(impl, B, R, N, None, M, steps)
        m = M
    it = iter(stream)

    def one_step():
        i, l, lg, tg, nxt = next(it)
        _step(impl, policy, i, l, lg, tg, m, nxt)

    tag("step", f"B={B} m={M} N=10^6 R={R}", impl, "native", B=B, R=R, N=N, C=None, m=M)
    benchmark.pedantic(one_step, rounds=len(stream), iterations=1)
