"""The engine with its state on a CUDA device (Engine(device="cuda")) against
the same engine on the CPU: bit-identical state after every step and the same
draws, on hypothesis streams with every option; update() never waits for the
device; bad values make the device run the step as an empty update and the
next draw raise. These tests need a GPU; without one they are skipped (the
CUDA kernels are still compiled and registered in CI)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardmix.config import PolicyConfig
from hardmix.engine import STATE_TENSORS, Engine
from test_policy_agreement import configs, steps
from test_sharded import as_args

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def assert_same(cpu: Engine, gpu: Engine, where: str) -> None:
    for k in STATE_TENSORS:
        a, b = getattr(cpu, k), getattr(gpu, k).cpu()
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), f"{where}: {k}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_cuda_engine_equals_the_cpu_engine(data):
    cfg = data.draw(configs())
    stream = data.draw(st.lists(steps(cfg), min_size=1, max_size=20))
    cpu, gpu = Engine(cfg), Engine(cfg, device="cuda")
    for n, step in enumerate(stream):
        args = as_args(step)
        cpu.update(**args)
        gpu.update(**{k: None if v is None else v.cuda() for k, v in args.items()})
        m, exclude = step[5], torch.tensor(step[6], dtype=torch.int64)
        assert torch.equal(gpu.draw(m, exclude), cpu.draw(m, exclude)), f"step {n}: draw"
        assert_same(cpu, gpu, f"step {n}")


@pytest.mark.parametrize("score", ["loss", "margin", "loss_rank", "forgetting"])
def test_cuda_engine_equals_the_cpu_engine_at_scale(score):
    """Full-size batches (fresh + the replay just drawn) over a reservoir that
    fills, turns over, graduates, quarantines and caps admissions: every draw
    and the final state bit for bit (the hypothesis streams above are small)."""
    N, R, B, C, m = 20_000, 1024, 256, 10, 64
    cfg = PolicyConfig(num_examples=N, capacity=R, seed=7, score=score, alpha=0.5, lam=1e-3, gamma=0.0,
                       graduation=0.05, max_wrong=3, quarantine_steps=40, max_new_per_step=96,
                       class_quotas=True, num_classes=C, rank_window=64)
    cpu, gpu = Engine(cfg), Engine(cfg, device="cuda")
    g = torch.Generator().manual_seed(3)
    label = torch.randint(0, C, (N,), generator=g)
    hard = torch.rand(N, generator=g) < 0.05  # always wrong: replayed until quarantined
    idx = torch.randint(0, N, (B,), generator=g)
    for k in range(80):
        targets = label[idx]
        logits = torch.randn(B, C, generator=g)
        rows = torch.arange(B)
        logits[rows, targets] += torch.where(hard[idx], -6.0, 3.0 * torch.rand(B, generator=g))
        losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        if k % 7 == 0:
            losses[k % B] = float("nan")  # skipped by both
        cpu.update(idx, losses, logits=logits, targets=targets)
        gpu.update(idx, losses.cuda(), logits=logits.cuda(), targets=targets.cuda())
        fresh = torch.randint(0, N, (B - m,), generator=g)  # (duplicates, re-visits)
        drawn = cpu.draw(m, fresh)
        assert torch.equal(gpu.draw(m, fresh.cuda()), drawn), f"step {k}: draw"
        idx = torch.cat([fresh, drawn, fresh[: m - len(drawn)]])
    t = cpu.totals()
    assert t["evicted"] > R and t["graduated"] > 0 and t["quarantined"] > 0 and t["nonfinite"] > 0, t
    assert_same(cpu, gpu, "after 80 steps")


def test_update_does_not_wait_for_the_device():
    cfg = PolicyConfig(num_examples=10_000, capacity=512, seed=1, class_quotas=True, num_classes=10,
                       max_wrong=3, quarantine_steps=50, score="margin")
    eng = Engine(cfg, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    idx = [torch.randperm(10_000)[:256] for _ in range(20)]  # indices from the loader: on the host
    logits = [torch.randn(256, 10, device="cuda", generator=g) for _ in range(20)]
    losses = [torch.rand(256, device="cuda", generator=g) for _ in range(20)]
    targets = [i.cuda() % 10 for i in idx]  # (a pageable copy waits: made before the check)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for k in range(20):
            eng.update(idx[k], losses[k], logits=logits[k], targets=targets[k])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert eng.step == 20 and eng.size == 512


def test_bad_values_on_the_device_raise_at_the_next_draw():
    cfg = PolicyConfig(num_examples=10, capacity=4, seed=1, num_classes=3, class_quotas=True)
    cpu, gpu = Engine(cfg), Engine(cfg, device="cuda")
    good = dict(indices=torch.tensor([1, 2]), losses=torch.tensor([1.0, 2.0]), classes=torch.tensor([0, 1]))
    for e in (cpu, gpu):
        e.update(**good)
    gpu.update(torch.tensor([3, 4], device="cuda"), torch.tensor([1.0, 1.0], device="cuda"),
               classes=torch.tensor([0, 7], device="cuda"))
    cpu.update(torch.tensor([], dtype=torch.int64), torch.tensor([]), classes=torch.tensor([], dtype=torch.int64))
    with pytest.raises(ValueError, match=r"classes\[1\] = 7 is out of range"):
        gpu.draw(2)
    gpu.check()  # cleared
    assert_same(cpu, gpu, "after the bad step")  # it ran as an update with no examples
    assert torch.equal(gpu.draw(2), cpu.draw(2))


def test_opcheck_cuda_policy_ops():
    cfg = PolicyConfig(num_examples=10, capacity=3, seed=1)
    e = Engine(cfg, device="cuda")
    idx, losses = torch.tensor([1, 2, 3], device="cuda"), torch.tensor([1.0, 2.0, 3.0], device="cuda",
                                                                       dtype=torch.float64)
    torch.library.opcheck(torch.ops.hardmix.policy_update,
                          (*e.state_tensors(), e.config_vector, 1, idx, losses, None, None, None, None))
    out = torch.empty(3, dtype=torch.int64, device="cuda")
    torch.library.opcheck(torch.ops.hardmix.policy_draw, (e.tree, e.slots, e.pos, e.counters, e.config_vector, 1,
                                                          idx[:1], out))
