"""The native engine against the pure-Python reference: exact agreement, step
by step, on hypothesis-generated streams, with every option on and off."""

import dataclasses
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardmix.config import SCORES, PolicyConfig
from hardmix.engine import STATE_TENSORS, Engine, slot_classes
from hardmix.reference import ReferencePolicy
from policy_helpers import assert_same_state

LOSS_VALUES = [0.0, 0.25, 0.5, 1.0, 2.0, -0.5, 1e-30, 1e30]  # few values: many exact ties
ODD_VALUES = [math.nan, math.inf, -math.inf]


@st.composite
def configs(draw):
    N = draw(st.integers(1, 40))
    quotas = draw(st.booleans())
    num_classes = draw(st.integers(1, 4)) if quotas else draw(st.sampled_from([0, 3]))
    balance = quotas and draw(st.booleans())
    return PolicyConfig(
        num_examples=N,
        capacity=draw(st.sampled_from([1, 2, 3, 5, 8, 13, 50])),  # R > N included
        seed=draw(st.integers(-(2**63), 2**64 - 1)),
        score=draw(st.sampled_from(SCORES)),
        alpha=draw(st.sampled_from([0.0, 0.5, 1.0, 4.0])),
        lam=draw(st.sampled_from([0.0, 0.01, 1.0, 40.0])),  # 40: rebases every few steps
        gamma=draw(st.sampled_from([0.0, 1.0, 2.5])),
        ema_beta=draw(st.sampled_from([0.0, 0.5, 0.9])),
        graduation=draw(st.sampled_from([0.0, 0.0, 0.3])),
        max_wrong=draw(st.sampled_from([0, 0, 1, 2, 3])),
        quarantine_steps=draw(st.sampled_from([0, 4])),
        max_new_per_step=draw(st.sampled_from([0, 0, 1, 3])),
        class_quotas=quotas,
        num_classes=num_classes,
        balance_replay=balance,
        reweight_every=draw(st.sampled_from([1, 1, 3])),
        forget_boost=draw(st.sampled_from([0.0, 1.0])),
        rank_window=draw(st.sampled_from([1, 4, 64])),
    )


@st.composite
def steps(draw, cfg: PolicyConfig):
    B = draw(st.integers(0, 12))
    idx = draw(st.lists(st.integers(0, cfg.num_examples - 1), min_size=B, max_size=B))  # duplicates allowed
    odd = draw(st.booleans())
    pool = LOSS_VALUES + (ODD_VALUES if odd else [])
    losses = draw(st.lists(st.one_of(st.sampled_from(pool), st.floats(0, 5, width=32)), min_size=B, max_size=B))
    margins = None
    if cfg.score == "margin" or draw(st.booleans()):
        margins = draw(st.lists(st.one_of(st.sampled_from([-1.0, 0.0, 0.5] + (ODD_VALUES if odd else [])),
                                          st.floats(-4, 4, width=32)), min_size=B, max_size=B))
    classes = None
    if cfg.class_quotas or (cfg.num_classes and draw(st.booleans())):
        classes = draw(st.lists(st.integers(0, cfg.num_classes - 1), min_size=B, max_size=B))
    priorities = None
    if cfg.score == "given":
        priorities = draw(st.lists(st.sampled_from([0.0, 0.1, 1.0, 3.0] + ([math.nan] if odd else [])),
                                   min_size=B, max_size=B))
    m = draw(st.integers(0, 6))
    exclude = draw(st.lists(st.integers(0, cfg.num_examples - 1), max_size=4))
    replayed = draw(st.one_of(st.none(), st.lists(st.booleans(), min_size=B, max_size=B)))
    return idx, losses, margins, classes, priorities, m, exclude, replayed


def run_both(cfg, stream):
    e, r = Engine(cfg), ReferencePolicy(cfg)
    for n, (idx, losses, margins, classes, priorities, m, exclude, *rest) in enumerate(stream):
        replayed = rest[0] if rest else None
        loss_t = torch.tensor(losses, dtype=torch.float32)
        margin_t = None if margins is None else torch.tensor(margins, dtype=torch.float32)
        prio_t = None if priorities is None else torch.tensor(priorities, dtype=torch.float64)
        e.update(
            torch.tensor(idx, dtype=torch.int64), loss_t, margins=margin_t,
            classes=None if classes is None else torch.tensor(classes, dtype=torch.int64), priorities=prio_t,
            replayed=None if replayed is None else torch.tensor(replayed, dtype=torch.bool),
        )
        # the reference sees exactly the float32 values, widened
        r.update(idx, loss_t.tolist(), None if margins is None else margin_t.tolist(), classes,
                 None if priorities is None else prio_t.tolist(), replayed)
        assert_same_state(e, r, f"after step {n}")
        got = e.draw(m, torch.tensor(exclude, dtype=torch.int64)).tolist()
        want = r.draw(m, exclude)
        assert got == want, f"draw after step {n}: native {got}, reference {want}"
        assert_same_state(e, r, f"after the draw of step {n}")
    return e, r


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_engine_matches_reference(data):
    cfg = data.draw(configs())
    stream = data.draw(st.lists(steps(cfg), min_size=1, max_size=25))
    run_both(cfg, stream)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_slot_class_cache_changes_nothing(data):
    """policy_update's slot_class cache (which the rebuild of replay weights
    reads for gamma = 0) stays each slot's heap class as the slots say, and
    the state is bit for bit that of the same steps run without it. Most
    configs drawn rebuild their weights (balanced replay, every step or
    every 3) with gamma = 0; membership changes by admission, eviction
    across classes, graduation and quarantine."""
    cfg = data.draw(configs())
    quotas = data.draw(st.sampled_from([True, True, True, False]))  # (without quotas: every member's class is 0)
    cfg = dataclasses.replace(cfg, class_quotas=quotas, num_classes=max(cfg.num_classes, 1), balance_replay=quotas,
                              gamma=data.draw(st.sampled_from([0.0, 0.0, 0.0, 1.0])))
    stream = data.draw(st.lists(steps(cfg), min_size=1, max_size=25))
    cached, plain = Engine(cfg), Engine(cfg)
    for n, (idx, losses, margins, classes, priorities, m, exclude, replayed) in enumerate(stream):
        args = (torch.tensor(idx, dtype=torch.int64), torch.tensor(losses, dtype=torch.float64),
                None if margins is None else torch.tensor(margins, dtype=torch.float64),
                None if classes is None else torch.tensor(classes, dtype=torch.int64),
                None if priorities is None else torch.tensor(priorities, dtype=torch.float64),
                None if replayed is None else torch.tensor(replayed, dtype=torch.bool))
        cached._update_host(*args)
        torch.ops.hardmix.policy_update(*plain.state_tensors(), plain.config_vector, plain._seed, *args, None)
        for k, a, b in zip(STATE_TENSORS, cached.state_tensors(), plain.state_tensors()):
            assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), f"{k} after step {n}"
        assert torch.equal(cached.slot_class, slot_classes(cached.slots, quotas)), f"after step {n}"


def test_a_loaded_state_gets_its_slot_class_cache():
    """load_state_dict derives the cache from the slots it loads: the restored
    engine goes on as the one it was taken from."""
    cfg = PolicyConfig(num_examples=60, capacity=16, seed=5, alpha=0.0, lam=0.0, gamma=0.0, class_quotas=True,
                       num_classes=3, balance_replay=True, graduation=0.2)
    g = torch.Generator().manual_seed(0)
    a = Engine(cfg)
    batches = [(torch.randint(0, 60, (12,), generator=g), torch.rand(12, generator=g) * 2,
                torch.randint(0, 3, (12,), generator=g)) for _ in range(30)]
    for idx, loss, cls in batches[:10]:
        a.update(idx, loss, classes=cls)
    b = Engine(cfg)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.slot_class, a.slot_class) and (b.slot_class >= 0).any()
    for idx, loss, cls in batches[10:]:
        a.update(idx, loss, classes=cls)
        b.update(idx, loss, classes=cls)
        assert torch.equal(a.draw(4), b.draw(4))
    for x, y in zip(a.state_tensors(), b.state_tensors()):
        assert torch.equal(x, y)


@pytest.mark.parametrize("score", SCORES)
def test_long_stream_every_score(score):
    """A longer stream (300 steps, B = 32, N = 200, R = 24) with every option on."""
    g = torch.Generator().manual_seed(SCORES.index(score))
    cfg = PolicyConfig(num_examples=200, capacity=24, seed=11, score=score, alpha=1.5, lam=0.05, gamma=1.0,
                       graduation=0.05, max_wrong=4, quarantine_steps=10, max_new_per_step=6,
                       class_quotas=True, num_classes=5, balance_replay=True, reweight_every=3, rank_window=50)
    stream = []
    for _ in range(300):
        idx = torch.randint(0, 200, (32,), generator=g).tolist()
        losses = (torch.rand(32, generator=g) * 3).tolist()
        margins = (torch.randn(32, generator=g) * 2).tolist()
        classes = [i % 5 for i in idx]
        prio = (torch.rand(32, generator=g) * 2).tolist() if score == "given" else None
        stream.append((idx, losses, margins, classes, prio, 8, idx[:8], [b >= 24 for b in range(32)]))
    e, r = run_both(cfg, stream)
    assert e.totals()["admitted"] > 24 and e.size > 0
    assert len(set(e.balance[:5, 2].tolist())) > 1  # the classes' replay factors differ


def test_many_classes_agree():
    """Class quotas over K = 37 classes (not a power of two) and R = 48: most
    classes hold one or two members, so the largest class (ties: the lowest)
    changes within a step, and half of each batch comes from 5 classes that
    change every 30 steps. 150 steps, the two agreeing after each."""
    g = torch.Generator().manual_seed(37)
    cfg = PolicyConfig(num_examples=370, capacity=48, seed=9, alpha=1.0, lam=0.01, gamma=0.0,
                       class_quotas=True, num_classes=37)
    stream = []
    for step in range(150):
        hot = torch.tensor([(5 * (step // 30) + k) % 37 for k in range(5)])
        idx = torch.cat([torch.randint(0, 370, (12,), generator=g),
                         hot[torch.randint(0, 5, (12,), generator=g)] + 37 * torch.randint(0, 10, (12,), generator=g)])
        losses = (torch.rand(24, generator=g) * 3).tolist()
        stream.append((idx.tolist(), losses, None, [i % 37 for i in idx.tolist()], None, 6, idx[:6].tolist()))
    e, _ = run_both(cfg, stream)
    assert e.totals()["evicted"] > 150 and len(set(e.members()["cls"].tolist())) > 20


def test_regression_same_key_in_another_class():
    """Found by hypothesis: an example that graduates and comes back, in the
    same step, under another class has the same key (alpha = 0: the key is its
    Gumbel draw); the reference's lazy heap once mistook its stale entry in the
    old class for a member."""
    cfg = PolicyConfig(num_examples=5, capacity=2, seed=-2, score="given", alpha=0.0, lam=0.0, gamma=0.0,
                       ema_beta=0.0, graduation=0.3, class_quotas=True, num_classes=2, rank_window=1)
    empty = ([], [], None, [], [], 0, [])
    step = ([4, 4, 4, 0, 0, 0, 0], [0.0] * 7, None, [0, 0, 1, 0, 0, 0, 0], [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], 0, [])
    e, r = run_both(cfg, [empty, empty, empty, step])
    assert sorted(e.members()["index"].tolist()) == [0, 4]


def test_empty_batches_and_empty_reservoir():
    cfg = PolicyConfig(num_examples=5, capacity=3)
    e, r = run_both(cfg, [([], [], None, None, None, 4, [])] * 3)
    assert e.step == 3 and e.size == 0 and e.draw(4).numel() == 0


def test_larger_stream_agrees():
    """Larger sizes: N = 5000, R = 700, B = 256 with duplicates, 40 steps."""
    g = torch.Generator().manual_seed(123)
    cfg = PolicyConfig(num_examples=5000, capacity=700, seed=5, score="loss_rank", alpha=2.0, lam=0.02,
                       gamma=1.5, graduation=0.02, max_wrong=3, quarantine_steps=20, rank_window=128)
    stream = []
    for _ in range(40):
        idx = torch.randint(0, 5000, (256,), generator=g).tolist()
        losses = (torch.rand(256, generator=g) * 2).tolist()
        stream.append((idx, losses, None, None, None, 64, idx[:128]))
    e, _ = run_both(cfg, stream)
    assert e.size == 700


def test_keys_keep_their_precision_at_a_billion_steps():
    """Started at step 10^9 (lam * t = 10^6), the two still agree exactly and
    a fresher, lower-priority example still beats a stale one."""
    cfg = PolicyConfig(num_examples=20, capacity=4, seed=2, lam=1e-3, gamma=1.0)
    e, r = Engine(cfg), ReferencePolicy(cfg)
    state = e.state_dict()
    state["counters"][0] = 10**9
    state["counters"][1] = 10**9  # t_ref
    e.load_state_dict(state)
    r.t = r.t_ref = 10**9
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        idx = torch.randint(0, 20, (6,), generator=g)
        loss = (torch.rand(6, generator=g) * 3).float()
        e.update(idx, loss)
        r.update(idx.tolist(), loss.tolist())
        assert_same_state(e, r)
        assert e.draw(3).tolist() == r.draw(3)
    assert e.step == 10**9 + 30


def test_class_incremental_stream_agrees():
    """Tasks of 2 classes in turn, a quarter of each batch replayed; every
    entry is wrong during a task's first 10 steps (its classes are not learned
    yet), then right except a fixed mislabeled share: strikes, quarantines and
    balanced replay weights over 400 steps."""
    g = torch.Generator().manual_seed(7)
    cfg = PolicyConfig(num_examples=600, capacity=40, seed=3, alpha=0.0, lam=0.0, gamma=0.0, max_wrong=2,
                       quarantine_steps=1000, class_quotas=True, num_classes=10, balance_replay=True,
                       reweight_every=2)
    e, r = Engine(cfg), ReferencePolicy(cfg)
    labels = torch.arange(600) % 10
    bad = torch.rand(600, generator=g) < 0.2
    for step in range(400):
        task = step // 80
        pool = ((labels == 2 * task) | (labels == 2 * task + 1)).nonzero().squeeze(1)
        fresh = pool[torch.randint(len(pool), (12,), generator=g)]
        drawn = r.draw(4, fresh.tolist())
        assert e.draw(4, fresh).tolist() == drawn
        idx = torch.cat([fresh, torch.tensor(drawn, dtype=torch.int64)])
        cls = labels[idx]
        wrong = bad[idx] | ((labels[idx] >= 2 * task) & (step % 80 < 10))
        margins = torch.where(wrong, -1.0, 1.0) * (torch.rand(len(idx), generator=g) + 0.1)
        losses = torch.rand(len(idx), generator=g)
        replayed = torch.arange(len(idx)) >= 12
        e.update(idx, losses, margins=margins, classes=cls, replayed=replayed)
        r.update(idx.tolist(), losses.tolist(), margins.tolist(), cls.tolist(), None, replayed.tolist())
        assert_same_state(e, r, f"step {step}")
    members = e.members()["index"]
    assert e.totals()["quarantined"] > 0
    assert float(bad[members].float().mean()) < 0.05  # strikes keep the mislabeled out
    assert set(e.members()["cls"].tolist()) == set(range(10))


def test_replay_weights_stay_finite_for_huge_priorities():
    """gamma = 2 and a loss of 1e308: the weight exp(2 * log 1e308) would be
    inf; it is capped at e^MAX_WEIGHT_EXPONENT, the tree's total stays
    finite, the draw still follows the other weights, and the two agree."""
    from hardmix.config import MAX_WEIGHT_EXPONENT

    cfg = PolicyConfig(num_examples=50, capacity=8, seed=1, alpha=1.0, gamma=2.0)
    e, r = Engine(cfg), ReferencePolicy(cfg)
    idx = torch.arange(8)
    loss = torch.tensor([1e308, 1e300, 1.0, 2.0, 3.0, 1e-3, 0.5, 4.0], dtype=torch.float64)
    e.update(idx, loss)
    r.update(idx.tolist(), loss.tolist())
    assert_same_state(e, r)
    total = float(e.tree[1])
    assert math.isfinite(total) and total <= 8 * math.exp(MAX_WEIGHT_EXPONENT)
    for _ in range(5):
        assert e.draw(3).tolist() == r.draw(3)
    # with the two capped members excluded, the draw follows the others' weights (loss ** 2)
    picks = []
    for seed in range(40):
        e = Engine(dataclasses.replace(cfg, seed=seed))
        e.update(idx, loss)
        picks.append(int(e.draw(1, exclude=torch.tensor([0, 1]))[0]))
    assert 5 not in picks and len(set(picks)) >= 3 and max(set(picks), key=picks.count) == 7, picks


def _cpu_has(isa: str) -> bool:
    """Whether this CPU runs the tickets' build for ``isa`` (cpu_isa.h: AVX2
    counts with F16C); only x86-64 Linux is asked, other hosts have one build."""
    if isa == "baseline":
        return True
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return {"avx2": "avx2", "avx512": "avx512f"}[isa] in flags and "f16c" in flags


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_every_instruction_set_build_of_the_tickets_agrees(isa):
    """The host computes a batch's admission tickets in vectors of the CPU's
    widest instruction set (csrc/kernels/tickets.h); HARDMIX_CPU_ISA caps it,
    so each build runs this module's reference agreement tests (batches of
    0-12 entries: every lane count and tail; and batches of 256) in a
    subprocess, where the CPU has that build."""
    import os
    import subprocess
    import sys

    if not _cpu_has(isa):
        pytest.skip(f"this CPU has no {isa} build")
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"} | {"HARDMIX_CPU_ISA": isa}
    proc = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "-k", "engine_matches_reference or larger_stream_agrees"],
                          env=env, capture_output=True, text=True, timeout=600)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0 and last.startswith("2 passed"), proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("compiler", ["g++", "clang++"])
def test_the_instruction_set_chosen_is_the_best_the_cpu_has(compiler, tmp_path):
    """cpu_isa.h (with the host kernels' headers) compiles without warnings
    under each C++ compiler here, and chooses the widest build this CPU runs
    (its /proc/cpuinfo flags), or less under HARDMIX_CPU_ISA."""
    import os
    import shutil
    import subprocess
    import sys

    cxx = shutil.which(compiler)
    if cxx is None:
        pytest.skip(f"no {compiler} here")
    if not sys.platform.startswith("linux"):
        pytest.skip("the CPU's flags are read from /proc/cpuinfo")
    hello = tmp_path / "hello.cpp"
    hello.write_text("#include <cstdio>\nint main() { return std::puts(\"\") < 0; }\n")
    if subprocess.run([cxx, "-std=c++17", str(hello), "-o", str(tmp_path / "hello")], capture_output=True).returncode:
        pytest.skip(f"{compiler} here cannot build a C++17 program (no standard library for it?)")
    kernels = os.path.join(os.path.dirname(__file__), "..", "csrc", "kernels")
    exe = tmp_path / "isa_probe"
    built = subprocess.run([cxx, "-std=c++17", "-O1", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror",
                            f"-I{kernels}", os.path.join(os.path.dirname(__file__), "native", "isa_probe.cpp"),
                            "-o", str(exe)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    levels = ["baseline", "avx2", "avx512"]
    best = max(k for k, isa in enumerate(levels) if _cpu_has(isa))
    env = {k: v for k, v in os.environ.items() if k != "HARDMIX_CPU_ISA"}
    assert int(subprocess.run([str(exe)], env=env, capture_output=True, text=True, check=True).stdout) == best
    for k, cap in enumerate(levels):
        got = subprocess.run([str(exe)], env=env | {"HARDMIX_CPU_ISA": cap}, capture_output=True, text=True,
                             check=True).stdout
        assert int(got) == min(k, best), cap
