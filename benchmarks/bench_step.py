"""One full policy step (update + replay draw) for the native engine, the
pure-Python reference and a torch composition: the headline cases of
`python -m hardmix bench --quick` under pytest-benchmark.

    .venv/bin/python -m pytest benchmarks/bench_step.py --benchmark-json out/bench-step.json
    .venv/bin/python benchmarks/table.py out/bench-step.json --baseline native
"""

import pytest

from hardmix.bench import _step, prepare_step

B, M, N = 1024, 256, 10**6
STEPS = 20


@pytest.mark.parametrize("impl", ["native", "torch", "reference"])
@pytest.mark.parametrize("R", [65536, 1048576])
def test_step(benchmark, impl, R):
    policy, stream = prepare_step(impl, B, R, N, None, M, STEPS)
    it = iter(stream)

    def one_step():
        i, l, lg, tg, nxt = next(it)
        _step(impl, policy, i, l, lg, tg, M, nxt)

    benchmark.group = f"step B={B} m={M} N={N} R={R}"
    benchmark.extra_info.update(impl=impl, what="step", B=B, R=R, N=N, C=None, m=M)
    benchmark.pedantic(one_step, rounds=STEPS, iterations=1)
