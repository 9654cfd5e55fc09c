"""Bad input: a clear error naming the argument and the value, raised before
any state changes (the full state is compared byte for byte), by the native
engine and the reference alike. Plus opcheck and torch.compile for the policy ops."""

import itertools
import math
import re

import pytest
import torch

from hardmix.config import PolicyConfig
from hardmix.engine import Engine
from hardmix.inputs import kinds_error
from hardmix.reference import ReferencePolicy
from policy_helpers import assert_state_unchanged, full_state, reference_snapshot

N, R = 10, 4


@pytest.mark.parametrize("score,quotas", [(s, q) for s in ("loss", "margin", "given") for q in (False, True)])
def test_kinds_error_is_the_ops_rule(score, quotas):
    """inputs.kinds_error (what load_state_dict checks logged updates with)
    refuses exactly the parts the update op refuses, in the op's words."""
    config = PolicyConfig(num_examples=N, capacity=R, score=score, class_quotas=quotas, num_classes=3 if quotas else 0)
    for m, c, p in itertools.product([False, True], repeat=3):
        want = kinds_error(config, margins=m, classes=c, priorities=p)
        e = Engine(config)
        parts = dict(margins=torch.rand(4) if m else None, classes=torch.arange(4) % 3 if c else None,
                     priorities=torch.rand(4) if p else None)
        if want is None:
            e.update(torch.arange(4), torch.rand(4), **parts)
        else:
            with pytest.raises(RuntimeError, match=re.escape(want)):
                e.update(torch.arange(4), torch.rand(4), **parts)


def warmed(**cfg) -> tuple[Engine, ReferencePolicy]:
    config = PolicyConfig(num_examples=N, capacity=R, seed=1, **cfg)
    e, r = Engine(config), ReferencePolicy(config)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        idx = torch.randint(0, N, (5,), generator=g)
        loss = torch.rand(5, generator=g)
        kw = {}
        if config.score == "margin":
            kw["margins"] = torch.randn(5, generator=g)
        if config.class_quotas:
            kw["classes"] = idx % config.num_classes
        if config.score == "given":
            kw["priorities"] = torch.rand(5, generator=g, dtype=torch.float64)
        e.update(idx, loss, **kw)
        r.update(idx.tolist(), loss.tolist(), *[kw[k].tolist() if k in kw else None for k in ("margins", "classes", "priorities")])
    return e, r


I = torch.tensor
L = torch.tensor([0.5, 0.5, 0.5])

# (name, config, engine kwargs, reference args or None, message regex)
CASES = [
    ("index-too-big", {}, dict(indices=I([0, 10, 2]), losses=L), ([0, 10, 2], [0.5] * 3),
     r"indices\[1\] = 10 is out of range \[0, 10\)"),
    ("index-negative", {}, dict(indices=I([-1, 1, 2]), losses=L), ([-1, 1, 2], [0.5] * 3),
     r"indices\[0\] = -1 is out of range \[0, 10\)"),
    ("index-float", {}, dict(indices=I([0.0, 1.0, 2.0]), losses=L), None,
     r"indices must have dtype .* got torch.float32"),
    ("index-2d", {}, dict(indices=I([[0, 1, 2]]), losses=L), None,
     r"indices must be a 1-D tensor \[B\], got shape \[1, 3\]"),
    ("losses-length", {}, dict(indices=I([0, 1, 2]), losses=I([0.5, 0.5])), ([0, 1, 2], [0.5, 0.5]),
     r"losses has 2 entries but indices has 3"),
    ("losses-int", {}, dict(indices=I([0, 1, 2]), losses=I([1, 2, 3])), None,
     r"losses must have dtype .* got torch.int64"),
    ("losses-not-tensor", {}, dict(indices=I([0, 1, 2]), losses=[0.5, 0.5, 0.5]), None,
     r"losses must be a torch.Tensor, got list"),
    ("nan-loss-raise", dict(nonfinite="raise"), dict(indices=I([0, 1, 2]), losses=I([0.5, math.nan, 0.5])),
     ([0, 1, 2], [0.5, math.nan, 0.5]), r"losses\[1\] = nan is not finite"),
    ("inf-loss-raise", dict(nonfinite="raise"), dict(indices=I([0, 1, 2]), losses=I([0.5, 0.5, math.inf])),
     ([0, 1, 2], [0.5, 0.5, math.inf]), r"losses\[2\] = inf is not finite"),
    ("margins-missing", dict(score="margin"), dict(indices=I([0, 1, 2]), losses=L), ([0, 1, 2], [0.5] * 3),
     r"score 'margin' needs margins"),
    ("margins-length", dict(score="margin"), dict(indices=I([0, 1, 2]), losses=L, margins=I([1.0])), None,
     r"margins has 1 entries but indices has 3"),
    ("inf-margin-raise", dict(score="margin", nonfinite="raise"),
     dict(indices=I([0, 1, 2]), losses=L, margins=I([1.0, -math.inf, 0.0])),
     ([0, 1, 2], [0.5] * 3, [1.0, -math.inf, 0.0]), r"margins\[1\] = -inf is not finite"),
    ("classes-missing", dict(class_quotas=True, num_classes=3), dict(indices=I([0, 1, 2]), losses=L),
     ([0, 1, 2], [0.5] * 3), r"class_quotas needs classes"),
    ("class-out-of-range", dict(class_quotas=True, num_classes=3),
     dict(indices=I([0, 1, 2]), losses=L, classes=I([0, 3, 1])), ([0, 1, 2], [0.5] * 3, None, [0, 3, 1]),
     r"classes\[1\] = 3 is out of range \[0, 3\)"),
    ("priorities-missing", dict(score="given"), dict(indices=I([0, 1, 2]), losses=L), ([0, 1, 2], [0.5] * 3),
     r"priorities must be given exactly when score is 'given'"),
    ("priority-negative", dict(score="given"),
     dict(indices=I([0, 1, 2]), losses=L, priorities=I([1.0, -2.0, 1.0], dtype=torch.float64)),
     ([0, 1, 2], [0.5] * 3, None, None, [1.0, -2.0, 1.0]), r"priorities\[1\] = -2(\.0)? is negative"),
    ("logits-without-targets", {}, dict(indices=I([0, 1, 2]), losses=L, logits=torch.zeros(3, 4)), None,
     r"logits and targets go together"),
    ("target-out-of-range", {}, dict(indices=I([0, 1, 2]), losses=L, logits=torch.zeros(3, 4), targets=I([0, 4, 1])),
     None, r"targets\[1\] = 4 is out of range for C = 4"),
]


@pytest.mark.parametrize("name,cfg,kwargs,ref_args,message", CASES, ids=[c[0] for c in CASES])
def test_bad_update_changes_nothing(name, cfg, kwargs, ref_args, message):
    e, r = warmed(**cfg)
    before = full_state(e)
    with pytest.raises((ValueError, TypeError, RuntimeError), match=message):
        e.update(**kwargs)
    assert_state_unchanged(before, e)
    if ref_args is not None:
        snap = reference_snapshot(r)
        with pytest.raises(ValueError, match=message):
            r.update(*ref_args)
        assert reference_snapshot(r) == snap


@pytest.mark.parametrize(
    "m,exclude,message",
    [
        (-1, None, r"m must be an int >= 0, got -1"),
        (2, I([0, 99]), r"exclude\[1\] = 99 is out of range \[0, 10\)"),
        (2, I([0.5]), r"exclude must have dtype"),
    ],
)
def test_bad_draw_changes_nothing(m, exclude, message):
    e, _ = warmed()
    before = full_state(e)
    with pytest.raises((ValueError, TypeError, RuntimeError), match=message):
        e.draw(m, exclude)
    assert_state_unchanged(before, e)


def test_draw_changes_nothing_when_it_succeeds():
    e, _ = warmed(gamma=1.5, lam=0.3)
    before = full_state(e)
    assert len(e.draw(3, I([0, 1]))) > 0
    assert_state_unchanged(before, e)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("capacity", 0, r"capacity must be an int in \[1, 2\*\*31\), got 0"),
        ("num_examples", 0, r"num_examples must be an int >= 1, got 0"),
        ("alpha", -1.0, r"alpha must be a finite number >= 0, got -1.0"),
        ("lam", math.inf, r"lam must be a finite number >= 0, got inf"),
        ("ema_beta", 1.0, r"ema_beta must be a number in \[0, 1\), got 1.0"),
        ("score", "entropy", r"score must be one of .* got 'entropy'"),
        ("num_classes", 0, r"num_classes must be >= 1 when class_quotas is on, got 0"),
        ("nonfinite", "ignore", r"nonfinite must be 'skip' or 'raise', got 'ignore'"),
        ("balance_replay", True, r"balance_replay must be False without class_quotas, got True"),
        ("reweight_every", 0, r"reweight_every must be an int in \[1, 2\*\*31\), got 0"),
    ],
)
def test_bad_config_is_refused(field, value, message):
    kwargs = dict(num_examples=10, capacity=4)
    if field == "num_classes":
        kwargs["class_quotas"] = True
    kwargs[field] = value
    with pytest.raises(ValueError, match=message):
        PolicyConfig(**kwargs)


@pytest.mark.parametrize("kind", ["dtype", "shape", "layout"])
def test_a_bad_slot_class_cache_is_refused(kind):
    """policy_update's slot_class cache must be int32 [R], contiguous: else an
    error naming it, before any state changes."""
    e = Engine(PolicyConfig(num_examples=N, capacity=8, class_quotas=True, num_classes=2, balance_replay=True))
    bad = {"dtype": torch.full((8,), -1, dtype=torch.int64), "shape": torch.full((7,), -1, dtype=torch.int32),
           "layout": torch.full((16,), -1, dtype=torch.int32)[::2]}[kind]
    before = full_state(e)
    with pytest.raises(RuntimeError, match="slot_class"):
        torch.ops.hardmix.policy_update(*e.state_tensors(), e.config_vector, e._seed, torch.tensor([1, 2]),
                                        torch.tensor([1.0, 2.0], dtype=torch.float64), None, torch.tensor([0, 1]),
                                        None, None, None, bad)
    assert_state_unchanged(before, e)


def test_a_slot_class_cache_that_disagrees_stays_in_bounds():
    """A cache that calls empty slots members gives them replay weight; the
    draw then rejects pick after pick of an empty slot, and stops when its
    buffer of rejections (E + m = 3) is full instead of writing past it (the
    sanitizers' run of this file would report that write): almost surely
    before it picks the one eligible member among 4096 weighted leaves."""
    R_ = 4096
    cfg = PolicyConfig(num_examples=N, capacity=R_, seed=1, alpha=0.0, lam=0.0, gamma=0.0, class_quotas=True,
                       num_classes=2, balance_replay=True)
    e = Engine(cfg)
    wrong = torch.zeros(R_, dtype=torch.int32)  # in range, but every slot a class-0 member
    torch.ops.hardmix.policy_update(*e.state_tensors(), e.config_vector, e._seed, torch.tensor([1, 2]),
                                    torch.tensor([1.0, 2.0], dtype=torch.float64), None, torch.tensor([0, 1]),
                                    None, None, None, wrong)
    assert int((e.tree[e.tree.numel() // 2:] > 0).sum()) > 2  # empty slots carry weight
    tree = e.tree.clone()
    drawn = e.draw(2, exclude=torch.tensor([1]))
    assert drawn.numel() == 0 and torch.equal(e.tree, tree)  # stopped short; the leaves put back


def test_a_host_engine_ignores_the_default_device():
    """A CPU engine's draw allocates on the host under another default device
    (``torch.set_default_device``, ``with torch.device(...)``): the same
    members as without it."""
    e = Engine(PolicyConfig(num_examples=N, capacity=R, seed=2))
    e.update(torch.tensor([1, 2, 3]), torch.tensor([1.0, 2.0, 0.5]))
    exclude = torch.tensor([1])
    want = e.draw(2, exclude)
    with torch.device("meta"):
        got, facts = e.draw(2, exclude, facts=True)
    assert got.device.type == "cpu" and facts.device.type == "cpu" and torch.equal(got, want)


def test_opcheck_policy_ops():
    e, _ = warmed(gamma=1.0, lam=0.1, max_new_per_step=2)
    args = (*e.state_tensors(), e.config_vector, 1, I([1, 2, 3]), torch.tensor([0.1, 2.0, 0.7]), None, None, None,
            torch.tensor([False, True, False]))
    torch.library.opcheck(torch.ops.hardmix.policy_update, args)
    out = torch.empty(3 + 1, dtype=torch.int64)
    torch.library.opcheck(
        torch.ops.hardmix.policy_draw, (e.tree, e.slots, e.pos, e.counters, e.config_vector, 1, I([0]), out)
    )


def test_engine_step_under_torch_compile():
    """The ops run inside torch.compile(fullgraph=True) and mutate the state
    exactly as in eager mode."""
    cfg = PolicyConfig(num_examples=20, capacity=6, seed=4, gamma=1.0, lam=0.1)
    eager, compiled = Engine(cfg), Engine(cfg)

    def step(state, config, idx, losses, out):
        torch.ops.hardmix.policy_update(*state, config, 4, idx, losses, None, None, None)
        torch.ops.hardmix.policy_draw(state[7], state[2], state[1], state[9], config, 4, idx[:2], out)
        return out

    fn = torch.compile(step, fullgraph=True, backend="inductor")
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        idx = torch.randint(0, 20, (4,), generator=g)
        losses = torch.rand(4, generator=g)
        want = step(eager.state_tensors(), eager.config_vector, idx, losses, torch.empty(4, dtype=torch.int64))
        got = fn(compiled.state_tensors(), compiled.config_vector, idx, losses, torch.empty(4, dtype=torch.int64))
        assert torch.equal(got, want)
        for a, b in zip(eager.state_tensors(), compiled.state_tensors()):
            assert torch.equal(a, b)


def test_state_dict_resume_is_exact():
    """A new engine loaded from a state_dict mid-stream continues exactly as
    the original (the full state is tensors; nothing hides in C++)."""
    cfg = PolicyConfig(num_examples=60, capacity=9, seed=8, lam=0.2, gamma=1.0, max_wrong=2, quarantine_steps=3)
    a = Engine(cfg)
    g = torch.Generator().manual_seed(8)
    batches = [(torch.randint(0, 60, (7,), generator=g), torch.rand(7, generator=g)) for _ in range(40)]
    for idx, loss in batches[:20]:
        a.update(idx, loss)
    saved = a.state_dict()
    b = Engine(cfg)
    b.load_state_dict(saved)
    for idx, loss in batches[20:]:
        a.update(idx, loss)
        b.update(idx, loss)
        assert torch.equal(a.draw(4, idx), b.draw(4, idx))
    for x, y in zip(a.state_tensors(), b.state_tensors()):
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match="different config"):
        Engine(PolicyConfig(num_examples=60, capacity=9, seed=9)).load_state_dict(saved)
