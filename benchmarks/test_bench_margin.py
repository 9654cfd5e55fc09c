"""``hardmix.margin`` (the logit margin of each row's target over the other
classes) against one ``torch.amax`` pass over the same logits.

    .venv/bin/python -m pytest benchmarks/test_bench_margin.py --benchmark-json out/bench-margin.json
    .venv/bin/python benchmarks/table.py out/bench-margin.json

B = 1024 rows of C = 10, 1000, 32000 standard normal logits in float32,
bfloat16 and float16, one intra-op thread, pytest-benchmark's default rounds
in each of REPS interleaved reps (conftest.py); table.py reports the median of
the reps' medians and the median of their ratios to amax's.

Family "margin", one group per (C, dtype). Anchor: ``amax``
(``torch.amax(logits, dim=1)``): it reads every logit once, as margin must,
so it is the floor; the target is margin <= 1.25x amax at C = 1000 and 32000
(float32).
"""

import pytest
import torch

import hardmix

B = 1024
REPS = 3
CASES = [(C, dtype) for C in (10, 1000, 32000) for dtype in (torch.float32, torch.bfloat16, torch.float16)]


# order of the tests: for each case, rep 0 of both impls, then rep 1, ...
@pytest.mark.parametrize("impl", ["amax", "margin"])
@pytest.mark.parametrize("rep", range(REPS))
@pytest.mark.parametrize("C,dtype", CASES, ids=[f"C{C}-{str(d).split('.')[1]}" for C, d in CASES])
def test_margin(benchmark, tag, smoke, prepared, impl, rep, C, dtype):
    rows = 8 if smoke else B
    if (C, dtype) not in prepared:
        prepared.clear()
        g = torch.Generator().manual_seed(0)
        prepared[C, dtype] = (torch.randn(rows, C, generator=g).to(dtype), torch.randint(0, C, (rows,), generator=g))
    logits, targets = prepared[C, dtype]
    dt = str(dtype).split(".")[1]
    tag("margin", f"B={B} C={C} {dt}", impl, "amax", rep=rep, B=B, C=C, dtype=dt)
    if impl == "amax":
        benchmark(torch.amax, logits, dim=1)
    else:
        out = benchmark(hardmix.margin, logits, targets)
        assert out.shape == (rows,)
