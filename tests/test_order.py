"""hardmix::stable_order (the shuffle of an epoch's pass, hardmix.plan)
against torch.sort(keys, stable=True): ties, clustered keys, every bucket
path, its input checks; and the plan's passes against the sort they stand for."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hardmix
from hardmix import ops, plan
from hardmix.config import STREAM_EPOCH


def _sorted(keys: torch.Tensor) -> torch.Tensor:
    return torch.sort(keys, stable=True).indices


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([0.0, -0.0, 5e-324, 1e-300, 0.25, 0.5, 0.5000000000000001, 0.75,
                                 0.9999999999999999]) | st.floats(0.0, 1.0, exclude_max=True), max_size=300))
def test_the_order_is_torch_stable_sort(values):
    keys = torch.tensor(values, dtype=torch.float64)
    assert torch.equal(ops.stable_order(keys), _sorted(keys))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 1000, 100_000])
def test_the_order_of_a_pass_is_torch_stable_sort(n):
    u = ops.uniform(n, 7, 3, STREAM_EPOCH)
    assert torch.equal(ops.stable_order(u), _sorted(u))


@pytest.mark.parametrize("keys", [
    torch.full((5000,), 0.5, dtype=torch.float64),  # one bucket, all ties (the stable_sort path)
    0.5 + torch.rand(5000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e-12,  # clustered
    torch.randint(0, 3, (5000,), generator=torch.Generator().manual_seed(1)).double() / 3,  # 3 values
    torch.linspace(0.999, 0.9999999999999999, 4000, dtype=torch.float64),  # near 1 (the last bucket)
    torch.rand(777, dtype=torch.float64, generator=torch.Generator().manual_seed(2))[:700:3],  # strided
    torch.cat([torch.nextafter(torch.arange(1, 8, dtype=torch.float64) / 8, torch.tensor(d, dtype=torch.float64))
               for d in (0.0, 1.0)] + [torch.arange(1, 8, dtype=torch.float64) / 8] * 3
              + [torch.rand(4075, dtype=torch.float64, generator=torch.Generator().manual_seed(4))]),
], ids=["ties", "clustered", "three-values", "near-one", "strided", "bucket-edges"])
def test_hard_key_sets(keys):
    assert torch.equal(ops.stable_order(keys), _sorted(keys))


@pytest.mark.parametrize("keys,words", [
    (torch.tensor([0.5, 1.0], dtype=torch.float64), "keys[1] = 1 is outside [0, 1)"),
    (torch.tensor([0.5, float("nan")], dtype=torch.float64), "keys[1] = nan is outside [0, 1)"),
    (torch.tensor([-1e-300], dtype=torch.float64), "keys[0] = -1e-300 is outside [0, 1)"),
    (torch.tensor([0.5, 1.0000000000000002], dtype=torch.float64), "keys[1] = 1.0000000000000002 is outside"),
    (torch.zeros(3), "keys must have dtype Double"),
    (torch.zeros(2, 2, dtype=torch.float64), "keys [n] must be a 1-D"),
])
def test_bad_keys_raise_and_write_nothing(keys, words):
    out = torch.full(keys.shape[:1], -7, dtype=torch.int64)
    with pytest.raises(RuntimeError, match=words.replace("[", r"\[").replace(")", r"\)")):
        torch.ops.hardmix.stable_order(keys, out)
    assert (out == -7).all()


def test_a_bad_out_raises():
    keys = torch.rand(4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="out must have shape"):
        torch.ops.hardmix.stable_order(keys, torch.empty(3, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="out must have dtype Long"):
        torch.ops.hardmix.stable_order(keys, torch.empty(4, dtype=torch.int32))


@pytest.mark.parametrize("fresh", [None, "subset"])
def test_a_pass_is_the_stable_sort_of_its_uniforms(fresh):
    """plan.pass_grid shuffles by the pass's uniforms: the examples in the
    stable order of their uniforms (of the fresh subset's, with set_fresh)."""
    N = 5000
    subset = torch.randperm(N, generator=torch.Generator().manual_seed(3))[:1234]  # (unsorted)
    f = None if fresh is None else subset
    spec = hardmix.ReplaySampler(N, batch_size=32, capacity=64, seed=11)._plan_spec()
    per = plan.per_rank(spec, f)
    for p in (0, 1, 5):
        order = torch.arange(N) if f is None else f
        u = ops.uniform(N, spec.seed, p, STREAM_EPOCH)[order]
        assert torch.equal(plan.pass_grid(spec, p, f, per).reshape(-1), order[_sorted(u)])
