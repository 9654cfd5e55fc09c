"""hardmix::margin against a plain-torch reference, on random inputs of every
size (0 and 1 included), every dtype and layout, and its input checks."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hardmix

LOGIT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TARGET_DTYPES = [torch.int64, torch.int32]


def reference_margin(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Obviously correct: widen to float32, mask the true class, amax the rest."""
    x = logits.float()
    t = targets.long()
    true = x.gather(1, t[:, None]).squeeze(1)
    others = x.scatter(1, t[:, None], float("-inf"))
    return true - others.amax(dim=1)


def assert_same(got, want):
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


@st.composite
def margin_inputs(draw):
    B = draw(st.integers(0, 40))
    C = draw(st.integers(2, 70))
    dtype = draw(st.sampled_from(LOGIT_DTYPES))
    tdtype = draw(st.sampled_from(TARGET_DTYPES))
    seed = draw(st.integers(0, 2**31))
    g = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["normal", "ties", "special"]))
    if kind == "normal":
        x = torch.randn(B, C, generator=g) * draw(st.sampled_from([1e-3, 1.0, 50.0]))
    elif kind == "ties":  # few distinct values: many exact ties
        x = torch.randint(-2, 3, (B, C), generator=g).float()
    else:  # NaN and infinities sprinkled in
        x = torch.randn(B, C, generator=g)
        pick = torch.rand(B, C, generator=g)
        x[pick < 0.05] = float("nan")
        x[(pick >= 0.05) & (pick < 0.10)] = float("inf")
        x[(pick >= 0.10) & (pick < 0.15)] = float("-inf")
    t = torch.randint(0, C, (B,), generator=g, dtype=tdtype)
    return x.to(dtype), t


@settings(max_examples=400, deadline=None)
@given(inputs=margin_inputs())
def test_matches_reference(inputs):
    logits, targets = inputs
    got = hardmix.margin(logits, targets)
    assert got.dtype == torch.float32 and got.shape == (logits.shape[0],)
    assert_same(got, reference_margin(logits, targets))


@pytest.mark.parametrize("dtype", LOGIT_DTYPES)
@pytest.mark.parametrize("B,C", [(1, 2), (1, 1000), (3, 17), (513, 1024), (64, 40000)])
def test_sizes_and_threading(dtype, B, C, device):
    """Includes sizes large enough (B*C >= 2^18) for rows to be split across threads."""
    g = torch.Generator().manual_seed(B * C)
    logits = (torch.randn(B, C, generator=g) * 3).to(dtype).to(device)
    targets = torch.randint(0, C, (B,), generator=g).to(device)
    assert_same(hardmix.margin(logits, targets).cpu(), reference_margin(logits.cpu(), targets.cpu()))


def test_empty_batch(device):
    out = hardmix.margin(torch.empty(0, 5, device=device), torch.empty(0, dtype=torch.long, device=device))
    assert out.shape == (0,) and out.dtype == torch.float32


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda x: x[:, 3:40], id="column-slice-in-place"),
        pytest.param(lambda x: x[::2], id="every-other-row"),
        pytest.param(lambda x: x.t().contiguous().t(), id="column-major"),
        pytest.param(lambda x: x[:, ::3], id="strided-columns"),
        pytest.param(lambda x: x[:1].expand(x.shape[0], -1), id="expanded-rows"),
    ],
)
def test_non_contiguous_logits_are_handled(make, device):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(30, 60, generator=g).to(device)
    logits = make(base)
    assert not logits.is_contiguous()
    targets = torch.randint(0, logits.shape[1], (logits.shape[0],), generator=g).to(device)
    assert_same(hardmix.margin(logits, targets).cpu(), reference_margin(logits.cpu(), targets.cpu()))


def test_non_contiguous_targets_are_handled(device):
    logits = torch.randn(10, 4, device=device)
    t2 = torch.randint(0, 4, (10, 2), device=device)
    targets = t2[:, 1]
    assert not targets.is_contiguous()
    assert_same(hardmix.margin(logits, targets).cpu(), reference_margin(logits.cpu(), targets.cpu()))


def test_definition_on_known_rows():
    logits = torch.tensor([[2.0, 0.5, -1.0], [5.0, 5.0, 1.0], [-1.0, 3.0, 0.0], [float("inf"), 1.0, 0.0]])
    targets = torch.tensor([0, 1, 0, 0])
    assert hardmix.margin(logits, targets).tolist() == [1.5, 0.0, -4.0, float("inf")]


BAD = [
    ("rank", lambda: (torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long)),
     r"hardmix::margin: logits \[B, C\] must be a 2-D tensor, got a 3-D tensor of shape \[2, 3, 4\]"),
    ("target-rank", lambda: (torch.zeros(2, 3), torch.zeros(2, 1, dtype=torch.long)),
     r"targets \[B\] must be a 1-D tensor, got a 2-D tensor of shape \[2, 1\]"),
    ("logit-dtype", lambda: (torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, dtype=torch.long)),
     r"logits must have dtype Float, Half or BFloat16, got Double"),
    ("target-dtype", lambda: (torch.zeros(2, 3), torch.zeros(2)),
     r"targets must have dtype Long or Int, got Float"),
    ("mismatched-B", lambda: (torch.zeros(2, 3), torch.zeros(5, dtype=torch.long)),
     r"targets has 5 entries but logits has 2 rows \(logits shape \[2, 3\]\)"),
    ("one-class", lambda: (torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)),
     r"at least 2 classes \(C >= 2\), got C = 1"),
    ("target-too-big", lambda: (torch.zeros(3, 4), torch.tensor([0, 4, 1])),
     r"targets\[1\] = 4 is out of range for C = 4 classes"),
    ("target-negative", lambda: (torch.zeros(3, 4), torch.tensor([0, 1, -2], dtype=torch.int32)),
     r"targets\[2\] = -2 is out of range for C = 4 classes"),
]


@pytest.mark.parametrize("name,make,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_argument_and_value(name, make, message):
    logits, targets = make()
    before = (logits.clone(), targets.clone())
    with pytest.raises(RuntimeError, match=message):
        hardmix.margin(logits, targets)
    assert torch.equal(logits, before[0]) and torch.equal(targets, before[1])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_device_mismatch_and_bad_targets():
    with pytest.raises(RuntimeError, match="same device"):
        hardmix.margin(torch.zeros(2, 3, device="cuda"), torch.zeros(2, dtype=torch.long))
    out = hardmix.margin(torch.zeros(2, 3, device="cuda"), torch.tensor([0, 7], device="cuda"))
    assert out[0].item() == 0.0 and torch.isnan(out[1]).item()  # no sync: NaN, not an error


@pytest.mark.parametrize("dtype", LOGIT_DTYPES)
def test_opcheck(dtype, device):
    for B, C in [(0, 3), (1, 2), (7, 33)]:
        logits = torch.randn(B, C, device=device).to(dtype)
        targets = torch.randint(0, C, (B,), device=device)
        torch.library.opcheck(torch.ops.hardmix.margin, (logits, targets))


def test_under_torch_compile_fullgraph(device):
    @torch.compile(fullgraph=True, backend="inductor")
    def f(logits, targets):
        m = torch.ops.hardmix.margin(logits.detach(), targets)
        return (m < 0).float().mean(), m * 2

    logits = torch.randn(16, 5, device=device)
    targets = torch.randint(0, 5, (16,), device=device)
    err, m2 = f(logits, targets)
    ref = reference_margin(logits.cpu(), targets.cpu())
    assert_same(m2.cpu(), ref * 2)
    assert err.item() == (ref < 0).float().mean().item()


def test_under_torch_compile_dynamic_shapes():
    f = torch.compile(lambda x, t: torch.ops.hardmix.margin(x, t), fullgraph=True, dynamic=True)
    for B, C in [(4, 3), (9, 3), (9, 12)]:
        x, t = torch.randn(B, C), torch.randint(0, C, (B,))
        assert_same(f(x, t), reference_margin(x, t))


CHECK_ALL_DTYPES = """
import torch, hardmix
g = torch.Generator().manual_seed(5)
for C in (2, 3, 15, 16, 17, 31, 33, 63, 64, 65, 100, 1000):
    x = torch.randn(64, C, generator=g)
    x[0, 1] = float("nan"); x[1, 0] = float("inf"); x[2, C - 1] = float("-inf")
    t = torch.randint(0, C, (64,), generator=g)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        xd = x.to(dtype)
        ref = xd.float().gather(1, t[:, None]).squeeze(1) - xd.float().scatter(1, t[:, None], float("-inf")).amax(1)
        torch.testing.assert_close(hardmix.margin(xd, t), ref, rtol=0, atol=0, equal_nan=True)
print("ok")
"""


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_every_instruction_set_build_matches_reference(isa):
    """The CPU kernel exists once per instruction set; HARDMIX_CPU_ISA caps the
    one picked at run time, so each build is checked (where the CPU has it)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, HARDMIX_CPU_ISA=isa)
    proc = subprocess.run([sys.executable, "-c", CHECK_ALL_DTYPES], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
