"""hardmix::replay_weights, the op behind ReplaySampler.weights, against its
formula written out in float64 torch."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hardmix  # noqa: F401  (registers the ops)


def _weights_formula(w, drawn_w, in_fresh, eligible, m_all, keep, n, f_all, scale):
    """ReplaySampler.weights' formula in float64 torch, step by step, as its docstring states it."""
    if m_all == 0:
        tau = 0.0
    elif len(drawn_w) < m_all:
        tau = math.inf
    else:
        tau, remaining = 0.0, eligible
        for wk in drawn_w.tolist() + [None]:
            if remaining <= eligible * 1e-12:
                tau = math.inf
                break
            tau += 1.0 / remaining
            if wk is not None:
                remaining -= wk
    rho = (w > 0).double() if tau == math.inf else -torch.expm1(-w * tau)
    q = torch.full_like(w, f_all) if in_fresh is None else in_fresh.double() * f_all
    out = scale / (q + (n - q) * rho)
    out[keep:] = 0.0
    return out.nan_to_num(posinf=0.0).float()


@settings(max_examples=300, deadline=None)
@given(B=st.integers(1, 40), D=st.integers(0, 40), m_extra=st.integers(-3, 3), zeros=st.booleans(),
       fresh_mask=st.booleans(), seed=st.integers(0, 2**31 - 1), tiny=st.booleans())
def test_replay_weights_op_matches_the_formula(B, D, m_extra, zeros, fresh_mask, seed, tiny):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(B, generator=g, dtype=torch.float64) * (1e-9 if tiny else 5)
    if zeros:
        w[torch.rand(B, generator=g) < 0.4] = 0.0
    drawn_w = torch.rand(D, generator=g, dtype=torch.float64) * 3
    eligible = float(drawn_w.sum()) + (0.0 if zeros else float(torch.rand(1, generator=g)) * 10)
    m_all = max(0, D + m_extra)
    in_fresh = (torch.rand(B, generator=g) < 0.5) if fresh_mask else None
    keep = int(torch.randint(0, B + 1, (1,), generator=g))
    n, f_all = 500.0, float(torch.randint(0, 60, (1,), generator=g))
    args = (w, drawn_w, in_fresh, eligible, m_all, keep, n, f_all, 64 * n / (n + 3))
    out = torch.empty(B, dtype=torch.float32)
    torch.ops.hardmix.replay_weights(*args, out)
    want = _weights_formula(*args)
    # (expm1 of torch and of the C library may differ in the last bit of a double)
    assert torch.allclose(out, want, rtol=2e-7, atol=0.0), (out, want)
    assert not out[keep:].any()


def test_replay_weights_op_refuses_bad_arguments():
    w, d, out = torch.ones(4, dtype=torch.float64), torch.ones(2, dtype=torch.float64), torch.empty(4)
    op = torch.ops.hardmix.replay_weights
    with pytest.raises(RuntimeError, match="keep must be in \\[0, 4\\], got 5"):
        op(w, d, None, 3.0, 2, 5, 10.0, 2.0, 1.0, out)
    with pytest.raises(RuntimeError, match="w must have dtype Double"):
        op(w.float(), d, None, 3.0, 2, 4, 10.0, 2.0, 1.0, out)
    with pytest.raises(RuntimeError, match="out must be a 1-D tensor \\[4\\]"):
        op(w, d, None, 3.0, 2, 4, 10.0, 2.0, 1.0, torch.empty(3))
    with pytest.raises(RuntimeError, match="in_fresh must have dtype Bool"):
        op(w, d, torch.ones(4), 3.0, 2, 4, 10.0, 2.0, 1.0, out)
    with pytest.raises(RuntimeError, match="m_all must be >= 0"):
        op(w, d, None, 3.0, -1, 4, 10.0, 2.0, 1.0, out)
