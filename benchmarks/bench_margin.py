"""hardmix::margin against one torch.amax pass over the same logits.

amax reads every logit once, as margin must, so it is the floor to compare
against: the target is margin <= 1.25x amax at C = 1000 and 32000 (float32).

    .venv/bin/python -m pytest benchmarks/bench_margin.py --benchmark-json out/bench-margin.json
    .venv/bin/python benchmarks/table.py out/bench-margin.json
"""

import pytest
import torch

import hardmix

B = 1024
CASES = [(C, dtype) for C in (10, 1000, 32000) for dtype in (torch.float32, torch.bfloat16, torch.float16)]


@pytest.mark.parametrize("impl", ["amax", "margin"])
@pytest.mark.parametrize("C,dtype", CASES, ids=[f"C{C}-{str(d).split('.')[1]}" for C, d in CASES])
def test_margin(benchmark, impl, C, dtype):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, C, generator=g).to(dtype)
    targets = torch.randint(0, C, (B,), generator=g)
    benchmark.group = f"margin B={B} C={C} {str(dtype).split('.')[1]}"
    benchmark.extra_info.update(impl=impl, what="margin", B=B, C=C, dtype=str(dtype))
    if impl == "amax":
        benchmark(torch.amax, logits, dim=1)
    else:
        out = benchmark(hardmix.margin, logits, targets)
        assert out.shape == (B,)
