"""Counter-based random numbers: native ops against the pure-Python mirror,
the distributions they claim, and their input checks."""

import math
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hardmix
from hardmix import rng
from hardmix.ops import as_int64

I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
EXTREMES = [0, 1, -1, 2**31, 2**32 - 1, 2**63 - 1, -(2**63)]
FILLS = {"uniform": (hardmix.ops.uniform_, rng.uniforms), "gumbel": (hardmix.ops.gumbel_, rng.gumbels)}


def bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def from_bits(b: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", b))[0]


def native(kind, n, seed, step, stream, offset, device="cpu"):
    out = torch.empty(n, dtype=torch.float64, device=device)
    FILLS[kind][0](out, seed, step, stream, offset)
    return out.cpu().tolist()


def assert_same_bits(got, want):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert bits(a) == bits(b), f"element {i}: native {a!r} != mirror {b!r}"


@pytest.mark.parametrize("kind", sorted(FILLS))
@settings(max_examples=300, deadline=None)
@given(seed=I64, step=I64, stream=I64, offset=I64, n=st.integers(0, 40))
def test_native_matches_python_mirror(kind, seed, step, stream, offset, n):
    want = FILLS[kind][1](seed, step, stream, offset, n)
    assert_same_bits(native(kind, n, seed, step, stream, offset), want)


@pytest.mark.parametrize("kind", sorted(FILLS))
@pytest.mark.parametrize("arg", ["seed", "step", "stream", "offset"])
@pytest.mark.parametrize("value", EXTREMES)
def test_native_matches_mirror_at_extremes(kind, arg, value):
    args = dict(seed=12345, step=678, stream=9, offset=1000)
    args[arg] = value
    want = FILLS[kind][1](args["seed"], args["step"], args["stream"], args["offset"], 17)
    assert_same_bits(native(kind, 17, **args), want)


def test_index_wraps_modulo_2_64():
    """offset + i wraps past 2**64 - 1 to 0, on both sides."""
    got = native("uniform", 4, 7, 7, 7, 2**63 - 2)  # indices 2^63-2 .. 2^63+1
    assert_same_bits(got, rng.uniforms(7, 7, 7, 2**63 - 2, 4))
    wrap = hardmix.uniform(3, 7, 7, 7, offset=2**64 - 1)  # indices 2^64-1, 0, 1
    assert_same_bits(wrap.tolist(), [rng.uniform(rng.stream_key(7, 7, 7), i) for i in (2**64 - 1, 0, 1)])
    assert_same_bits(wrap[1:].tolist(), hardmix.uniform(2, 7, 7, 7, offset=0).tolist())


def test_signed_and_unsigned_spellings_are_one_seed():
    assert as_int64(2**64 - 1, "seed") == -1
    assert torch.equal(hardmix.uniform(5, -1, 0, 0), hardmix.uniform(5, 2**64 - 1, 0, 0))
    with pytest.raises(ValueError, match=r"seed must be in \[-2\*\*63, 2\*\*64\), got 18446744073709551616"):
        hardmix.uniform(5, 2**64, 0, 0)
    with pytest.raises(TypeError, match="step must be an int, got float 1.5"):
        hardmix.uniform(5, 0, 1.5, 0)


def test_draws_depend_on_every_counter():
    base = hardmix.uniform(64, 1, 2, 3, 4)
    for changed in [(9, 2, 3, 4), (1, 9, 3, 4), (1, 2, 9, 4), (1, 2, 3, 5)]:
        other = hardmix.uniform(64, *changed)
        assert (other != base).all(), changed


def test_multidimensional_out_is_filled_in_memory_order():
    out = torch.empty(3, 5, dtype=torch.float64)
    hardmix.ops.gumbel_(out, 3, 1, 4, 10)
    assert torch.equal(out.view(-1), hardmix.gumbel(15, 3, 1, 4, 10))


def test_uniform_extremes_are_open_interval():
    assert rng.to_uniform(0) == 2.0**-53
    assert rng.to_uniform(2**64 - 1) == 1.0 - 2.0**-53
    for b in (0, 2**64 - 1):
        g = rng.to_gumbel(rng.to_uniform(b))
        assert math.isfinite(g)
    assert -3.7 < rng.to_gumbel(2.0**-53) < -3.5
    assert 36 < rng.to_gumbel(1.0 - 2.0**-53) < 37


@settings(max_examples=2000, deadline=None)
@given(x=st.floats(min_value=2.0**-1022, max_value=1e308, allow_nan=False, allow_infinity=False))
def test_portable_log_within_one_ulp_of_libm(x):
    got, want = rng.log(x), math.log(x)
    assert abs(got - want) <= math.ulp(want) + 1e-300, (x, got, want)


def test_portable_log_exact_points():
    assert rng.log(1.0) == 0.0
    assert rng.log(2.0) == math.log(2.0)
    assert rng.log(0.5) == -math.log(2.0)


def within_one_ulp(got: float, want: float) -> bool:
    """|got - want| <= ulp(want); ulp(0) and ulp(subnormal) are 2**-1074, the
    absolute tolerance of one subnormal ulp."""
    return abs(got - want) <= math.ulp(want)


def floats(lo: float, hi: float):
    return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False)


def by_bits(lo: float, hi: float):
    """Non-negative floats in [lo, hi] uniform over bit patterns, so every binade
    (subnormals included) is drawn about equally often."""
    return st.integers(bits(lo), bits(hi)).map(from_bits)


SUBNORMALS = by_bits(5e-324, 2.0**-1022 - 5e-324)


@settings(max_examples=2000, deadline=None)
@given(x=floats(-745.2, 709.7))
def test_portable_exp_within_one_ulp_of_libm(x):
    got, want = rng.exp(x), math.exp(x)
    assert within_one_ulp(got, want), (x, got, want)


@settings(max_examples=2000, deadline=None)
@given(x=st.one_of(floats(-745.2, -707.0), floats(-1.5, 1.5), floats(700.0, 709.78), floats(-1e-8, 1e-8)))
def test_portable_exp_within_one_ulp_at_subnormal_results_and_edges(x):
    got, want = rng.exp(x), math.exp(x)
    assert within_one_ulp(got, want), (x, got, want)


@settings(max_examples=2000, deadline=None)
@given(x=st.one_of(floats(0.0, 1.0), by_bits(0.0, 1.0)))
def test_portable_log1p_within_one_ulp_of_libm(x):
    got, want = rng.log1p(x), math.log1p(x)
    assert within_one_ulp(got, want), (x, got, want)


@settings(max_examples=2000, deadline=None)
@given(x=st.one_of(by_bits(0.0, 2.0**-20), SUBNORMALS))
def test_portable_log1p_within_one_ulp_on_tiny_values(x):
    got, want = rng.log1p(x), math.log1p(x)
    assert within_one_ulp(got, want), (x, got, want)


@settings(max_examples=1000, deadline=None)
@given(x=st.one_of(floats(-1.0, 0.0).filter(lambda v: v > -1.0), by_bits(1.0, 1e308)))
def test_portable_log1p_within_one_ulp_beyond_the_policy_domain(x):
    got, want = rng.log1p(x), math.log1p(x)
    assert within_one_ulp(got, want), (x, got, want)


@settings(max_examples=2000, deadline=None)
@given(x=SUBNORMALS)
def test_portable_log_within_one_ulp_on_subnormals(x):
    got, want = rng.log(x), math.log(x)
    assert within_one_ulp(got, want), (x, got, want)


def test_portable_exp_log1p_log_special_values():
    inf = math.inf
    assert rng.exp(0.0) == 1.0 and rng.exp(-0.0) == 1.0
    assert within_one_ulp(rng.exp(1.0), math.e)  # fdlibm's e^1 is the double above e, 0.68 ulp off
    assert bits(rng.exp(-inf)) == bits(0.0)
    assert rng.exp(inf) == inf
    assert math.isnan(rng.exp(math.nan))
    assert rng.exp(710.0) == inf
    assert rng.exp(709.782712893384) == math.exp(709.782712893384)  # the largest finite result
    assert bits(rng.exp(-746.0)) == bits(0.0)
    assert rng.exp(-745.1332191019411) == 5e-324
    assert rng.exp(-744.0) == math.exp(-744.0)
    assert bits(rng.log1p(0.0)) == bits(0.0)
    assert bits(rng.log1p(-0.0)) == bits(-0.0)
    assert rng.log1p(5e-324) == 5e-324
    assert rng.log1p(1e-300) == 1e-300
    assert rng.log1p(1.0) == math.log(2.0)
    assert rng.log1p(inf) == inf
    assert rng.log1p(-1.0) == -inf
    assert math.isnan(rng.log1p(-2.0)) and math.isnan(rng.log1p(math.nan))
    assert rng.log(inf) == inf
    assert rng.log(0.0) == -inf and rng.log(-0.0) == -inf
    assert math.isnan(rng.log(-1.0)) and math.isnan(rng.log(math.nan))
    assert rng.log(5e-324) == math.log(5e-324)


PROBE = Path(__file__).with_name("rng_probe.cpp")
KERNELS = Path(__file__).resolve().parents[1] / "csrc" / "kernels"
SPECIALS = [0.0, -0.0, 5e-324, -5e-324, 2.0**-1022, 1.0, -1.0, 2.0, 0.5, math.inf, -math.inf, math.nan, -math.nan,
            1e-300, 2.0**-54, 2.0**-29, 2.0**-28, 709.782712893384, -745.1332191019411, 710.0, -746.0, 1e308,
            2.0**53, 0.41421365737915039, -0.2928934097290039, 0.3465735912322998, 1.0397205352783203]


def probe_inputs(seed: int = 20240607) -> list[tuple[str, float]]:
    """About 3000 (function, x) pairs: seeded random draws over each function's
    domain (uniform and by bit pattern), and the special values for all three."""
    r = random.Random(seed)
    draws = {
        "exp": [lambda: r.uniform(-745.2, 709.8), lambda: r.uniform(-2.0, 2.0),
                lambda: r.uniform(-745.2, -707.0), lambda: from_bits(r.randrange(bits(1e-20))) * r.choice((1, -1))],
        "log1p": [lambda: r.random(), lambda: from_bits(r.randrange(bits(1.0))),
                  lambda: r.uniform(-1.0, 0.0), lambda: from_bits(r.randrange(bits(1.0), bits(math.inf)))],
        "log": [lambda: from_bits(r.randrange(1, bits(math.inf))), lambda: from_bits(r.randrange(1, 2**52)),
                lambda: r.uniform(0.5, 2.0)],
    }
    pairs = [(fn, x) for fn in draws for x in SPECIALS]
    for fn, gens in draws.items():
        pairs += [(fn, r.choice(gens)()) for _ in range(1000)]
    return pairs


def test_portable_exp_log1p_log_cpp_matches_python_bit_for_bit(tmp_path):
    """rng.h's exp_det / log1p_det / log_det (compiled as the extension is: g++
    -O2 -ffp-contract=off) give the bits of rng.exp / rng.log1p / rng.log."""
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("needs the system g++ to compile tests/rng_probe.cpp")
    exe = tmp_path / "rng_probe"
    subprocess.run([cxx, "-O2", "-ffp-contract=off", "-std=c++17", f"-I{KERNELS}", str(PROBE), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    pairs = probe_inputs()
    assert len(pairs) > 3000
    out = subprocess.run([str(exe)], input="".join(f"{fn} {bits(x):x}\n" for fn, x in pairs),
                         check=True, capture_output=True, text=True).stdout.split()
    assert len(out) == len(pairs)
    python = {"exp": rng.exp, "log1p": rng.log1p, "log": rng.log}
    bad = [(fn, x, from_bits(int(o, 16)), python[fn](x)) for (fn, x), o in zip(pairs, out)
           if int(o, 16) != bits(python[fn](x))]
    assert not bad, f"{len(bad)} differ, (fn, x, C++, Python): {bad[:5]}"


def ks_statistic(sample: torch.Tensor, cdf) -> float:
    x, _ = torch.sort(sample)
    n = x.numel()
    f = cdf(x)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return max((i / n - f).max().item(), (f - (i - 1) / n).max().item())


N_KS = 200_000
# Kolmogorov-Smirnov critical value at alpha = 0.001: 1.95 / sqrt(n).
KS_CRIT = 1.95 / math.sqrt(N_KS)


@pytest.mark.parametrize("seed,step,stream", [(0, 0, 0), (1, 10**9, 5), (-1, 2**40, 2**62)])
def test_uniform_is_uniform(seed, step, stream):
    u = hardmix.uniform(N_KS, seed, step, stream)
    assert ((u > 0) & (u < 1)).all()
    assert ks_statistic(u, lambda x: x) < KS_CRIT
    # neighbouring indices are uncorrelated
    r = torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1].item()
    assert abs(r) < 4 / math.sqrt(N_KS)


@pytest.mark.parametrize("seed,step,stream", [(0, 0, 0), (3, 7, 11)])
def test_gumbel_is_gumbel(seed, step, stream):
    g = hardmix.gumbel(N_KS, seed, step, stream)
    assert torch.isfinite(g).all()
    assert ks_statistic(g, lambda x: torch.exp(-torch.exp(-x))) < KS_CRIT


def test_streams_and_steps_are_uncorrelated():
    a = hardmix.uniform(N_KS, 0, 5, 1)
    for other in (hardmix.uniform(N_KS, 0, 5, 2), hardmix.uniform(N_KS, 0, 6, 1), hardmix.uniform(N_KS, 1, 5, 1)):
        r = torch.corrcoef(torch.stack([a, other]))[0, 1].item()
        assert abs(r) < 4 / math.sqrt(N_KS)


def test_large_fill_uses_threads_and_matches_mirror():
    """Large enough to be split across threads; spot-check against the mirror."""
    n = 300_000
    g = hardmix.gumbel(n, 42, 1, 2, 5)
    key = rng.stream_key(42, 1, 2)
    for i in (0, 1, 32767, 32768, 65536, n // 2, n - 1):
        assert bits(g[i].item()) == bits(rng.gumbel(key, 5 + i))


@pytest.mark.parametrize("op", ["uniform_fill", "gumbel_fill"])
def test_bad_out_is_refused_and_left_untouched(op):
    fn = getattr(torch.ops.hardmix, op)
    out = torch.full((4,), 0.25, dtype=torch.float32)
    with pytest.raises(RuntimeError, match=rf"hardmix::{op}: out must have dtype Double, got Float"):
        fn(out, 0, 0, 0, 0)
    assert (out == 0.25).all()
    base = torch.full((4, 4), 0.25, dtype=torch.float64)
    view = base.t()
    with pytest.raises(RuntimeError, match=rf"hardmix::{op}: out must be contiguous .* got shape \[4, 4\]"):
        fn(view, 0, 0, 0, 0)
    assert (base == 0.25).all()


def test_empty_out_is_fine():
    out = torch.empty(0, dtype=torch.float64)
    hardmix.ops.uniform_(out, 0, 0, 0)
    assert out.numel() == 0


@pytest.mark.parametrize("op", ["uniform_fill", "gumbel_fill"])
def test_opcheck(op, device):
    fn = getattr(torch.ops.hardmix, op)
    for n in (0, 1, 100):
        torch.library.opcheck(fn, (torch.empty(n, dtype=torch.float64, device=device), 1, 2, 3, 4))


def test_under_torch_compile_fullgraph(device):
    @torch.compile(fullgraph=True, backend="inductor")
    def f(x):
        out = torch.empty_like(x)
        torch.ops.hardmix.gumbel_fill(out, 7, 1, 2, 0)
        return out + x

    x = torch.zeros(33, dtype=torch.float64, device=device)
    assert torch.equal(f(x), hardmix.gumbel(33, 7, 1, 2, device=device))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", sorted(FILLS))
def test_cuda_draws_are_the_cpu_draws_bit_for_bit(kind):
    for seed, step, stream, offset in [(0, 0, 0, 0), (-1, 2**62, 7, 2**64 - 5), (123, 456, 789, 10**12)]:
        n = 100_003
        cpu = torch.empty(n, dtype=torch.float64)
        gpu = torch.empty(n, dtype=torch.float64, device="cuda")
        FILLS[kind][0](cpu, seed, step, stream, offset)
        FILLS[kind][0](gpu, seed, step, stream, offset)
        assert torch.equal(cpu.view(torch.int64), gpu.cpu().view(torch.int64))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fill_does_not_sync():
    out = torch.empty(1000, dtype=torch.float64, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        hardmix.ops.gumbel_(out, 1, 2, 3)
        hardmix.margin(torch.randn(8, 5, device="cuda"), torch.randint(0, 5, (8,), device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode(0)
