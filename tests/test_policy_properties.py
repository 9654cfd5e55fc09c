"""Properties of the policy that hold whatever the implementation: checked on
the native engine (the reference agrees with it exactly: test_policy_agreement).
Statistical tests use fixed seeds and chi-square critical values at alpha=0.001."""

import math

import pytest
import torch

from hardmix.config import PolicyConfig
from hardmix.engine import Engine
from hardmix.layout import COL_QUARANTINE, COL_WRONG

# chi-square critical values at alpha = 0.001, by degrees of freedom
CHI2_CRIT = {3: 16.27, 5: 20.52, 11: 31.26, 39: 72.05}


def chi2(observed, expected) -> float:
    return sum((o - e) ** 2 / e for o, e in zip(observed, expected))


def tick(e: Engine) -> None:
    """An empty update: advances the step counter, so the next draw uses fresh uniforms."""
    empty = torch.empty(0, dtype=torch.float64)
    e.update(torch.empty(0, dtype=torch.int64), empty, priorities=empty if e.config.score == "given" else None)


def losses_of(n, value=1.0):
    return torch.full((n,), value, dtype=torch.float32)


def test_alpha_0_lambda_0_is_classic_reservoir_sampling():
    """Each of n streamed examples ends up a member with probability R / n."""
    n, R, seeds = 40, 10, 600
    counts = torch.zeros(n)
    g = torch.Generator().manual_seed(0)
    for seed in range(seeds):
        e = Engine(PolicyConfig(num_examples=n, capacity=R, seed=seed, alpha=0.0, lam=0.0))
        order = torch.randperm(n, generator=g)
        for chunk in order.split(4):
            # each example has its own, very different loss: alpha = 0 must ignore it
            e.update(chunk, (chunk.float() + 1) * 10)
        assert e.size == R
        counts[e.members()["index"]] += 1
    expected = [seeds * R / n] * n
    assert chi2(counts.tolist(), expected) < CHI2_CRIT[39]


def test_greedy_limit_keeps_highest_priorities():
    """Large alpha: the reservoir holds the R highest priorities."""
    n, R = 50, 8
    e = Engine(PolicyConfig(num_examples=n, capacity=R, seed=1, alpha=1e4, lam=0.0))
    losses = torch.linspace(0.1, 5.0, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(2))
    for chunk in perm.split(7):
        e.update(chunk, losses[chunk].float())
    assert sorted(e.members()["index"].tolist()) == list(range(n - R, n))


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_replay_frequencies_proportional_to_priority_power_gamma(gamma):
    p = [0.5, 1.0, 2.0, 4.0]
    e = Engine(PolicyConfig(num_examples=4, capacity=4, seed=7, score="given", alpha=0.0, gamma=gamma))
    e.update(torch.arange(4), losses_of(4), priorities=torch.tensor(p, dtype=torch.float64))
    draws = 8000
    counts = [0] * 4
    for _ in range(draws):
        counts[e.draw(1).item()] += 1
        tick(e)
    w = [x**gamma for x in p]
    expected = [draws * x / sum(w) for x in w]
    assert chi2(counts, expected) < CHI2_CRIT[3]


def test_draw_without_replacement_is_successive_sampling():
    """Ordered pairs (m = 2) follow P(i, j) = w_i / W * w_j / (W - w_i): the
    distribution of the Gumbel-top-2 of log w + G."""
    w = [1.0, 2.0, 3.0, 4.0]
    e = Engine(PolicyConfig(num_examples=4, capacity=4, seed=3, score="given", alpha=0.0, gamma=1.0))
    e.update(torch.arange(4), losses_of(4), priorities=torch.tensor(w, dtype=torch.float64))
    draws = 12000
    pairs = {(i, j): 0 for i in range(4) for j in range(4) if i != j}
    for _ in range(draws):
        a, b = e.draw(2).tolist()
        pairs[(a, b)] += 1
        tick(e)
    W = sum(w)
    expected = [draws * w[i] / W * w[j] / (W - w[i]) for i, j in pairs]
    assert chi2(list(pairs.values()), expected) < CHI2_CRIT[11]


def test_draw_skips_excluded_and_never_repeats():
    e = Engine(PolicyConfig(num_examples=20, capacity=20, seed=0, alpha=0.0))
    e.update(torch.arange(20), losses_of(20))
    for _ in range(50):
        exclude = torch.tensor([0, 3, 5, 19])
        got = e.draw(30, exclude)
        assert len(got) == 16 and len(set(got.tolist())) == 16
        assert not set(got.tolist()) & {0, 3, 5, 19}
        tick(e)


@pytest.mark.parametrize("gamma,balance", [(1.0, False), (3.0, True)])
def test_draw_facts_are_the_members_weights(gamma, balance):
    """draw(facts=True) draws what draw() does, and reports each excluded and
    drawn index's replay weight (its sum-tree leaf; 0 for a non-member, and
    past the members drawn) and the total less the distinct excluded weight."""
    n, R = 400, 64
    cfg = PolicyConfig(num_examples=n, capacity=R, seed=3, gamma=gamma, num_classes=4 if balance else 0,
                       class_quotas=balance, balance_replay=balance)
    e = Engine(cfg)
    g = torch.Generator().manual_seed(3)
    for step in range(60):
        idx = torch.randperm(n, generator=g)[:32]
        e.update(idx, 3 * torch.rand(32, generator=g), classes=idx % 4 if balance else None)
        exclude = torch.randint(0, n, (24,), generator=g)  # (repeats too)
        m = [0, 5, 40, R][step % 4]
        plain = e.draw(m, exclude)
        got, facts = e.draw(m, exclude, facts=True)
        assert torch.equal(got, plain) and facts.shape == (24 + m + 1,)
        with e.on_stream():
            leaf = e.leaf_weights(e.slots_of(torch.cat([exclude, got])))
            total = float(e.replay_total())
        k = got.numel()
        assert torch.equal(facts[: 24 + k], leaf) and not facts[24 + k : 24 + m].any()
        distinct = e.leaf_weights(e.slots_of(torch.unique(exclude))).sum()
        assert math.isclose(float(facts[24 + m]), total - float(distinct), rel_tol=1e-12, abs_tol=1e-12 * total)


def test_unrescored_member_never_rises():
    """Each example seen once (nothing is rescored), no graduation/quarantine:
    a member's key never changes and the number of stronger members never falls."""
    n, R = 300, 20
    e = Engine(PolicyConfig(num_examples=n, capacity=R, seed=5, alpha=1.0, lam=0.05))
    g = torch.Generator().manual_seed(5)
    perm = torch.randperm(n, generator=g)
    history = {}  # index -> (key, number of stronger members)
    for chunk in perm.split(10):
        e.update(chunk, (torch.rand(len(chunk), generator=g) * 3).float())
        mem = e.members()
        keys = dict(zip(mem["index"].tolist(), mem["key"].tolist()))
        for i, k in keys.items():
            stronger = sum(1 for other in keys.values() if other > k)
            if i in history:
                key_before, stronger_before = history[i]
                assert k == key_before
                assert stronger >= stronger_before
            history[i] = (k, stronger)


def test_graduation_removes_exactly_the_learned():
    e = Engine(PolicyConfig(num_examples=10, capacity=10, seed=0, score="given", alpha=1.0, graduation=0.5))
    prio = torch.tensor([1.0, 2.0, 0.4, 3.0, 0.6, 1.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    e.update(torch.arange(10), losses_of(10), priorities=prio)
    assert sorted(e.members()["index"].tolist()) == [0, 1, 3, 4, 5, 6, 7, 8, 9]  # 2 is below: never admitted
    # rescore 0, 1, 3, 4: 1 and 4 fall below the threshold and graduate
    e.update(torch.tensor([0, 1, 3, 4]), losses_of(4), priorities=torch.tensor([0.9, 0.1, 0.5, 0.49], dtype=torch.float64))
    assert sorted(e.members()["index"].tolist()) == [0, 3, 5, 6, 7, 8, 9]
    assert e.totals()["graduated"] == 2


def test_strikes_quarantine_and_the_gate():
    """max_wrong = 2: an example is judged only while its class is being
    learned (a quarter or more of the step's entries of its class right).
    Wrong then, it gets a strike; right then, it is never suspected again.
    A member with 2 strikes leaves and is quarantined even though its loss
    falls; a learned one that is wrong again (forgotten) stays; a non-member
    with a strike is not admitted."""
    cfg = PolicyConfig(num_examples=6, capacity=6, seed=0, alpha=1.0, max_wrong=2, quarantine_steps=5)
    e = Engine(cfg)
    R, W = 1.0, -1.0

    def step(idx, losses, margins):
        e.update(torch.tensor(idx), torch.tensor(losses), margins=torch.tensor(margins, dtype=torch.float64))

    step([0, 1, 2, 3], [2.0, 2.0, 0.1, 0.1], [W, W, W, W])  # step 0: class not learned: no strikes, all in
    assert e.table[:4, COL_WRONG].tolist() == [0, 0, 0, 0] and e.size == 4
    step([0, 1, 2, 3], [1.5, 0.2, 0.1, 0.1], [W, R, R, R])  # class right 3/4: 0 gets a strike, 1-3 learned
    assert e.table[:4, COL_WRONG].tolist() == [1, -1, -1, -1]
    step([0, 1, 2, 3, 4], [1.0, 2.5, 0.1, 0.1, 2.0], [W, W, R, R, W])  # step 2: 0 out; 1 forgotten: stays; 4 kept out
    assert sorted(e.members()["index"].tolist()) == [1, 2, 3]
    assert e.table[0, COL_QUARANTINE] == 2 + 5 and e.totals()["quarantined"] == 1 and e.table[4, COL_WRONG] == 1
    for t in range(3, 7):  # steps 3..6 < 7: 0 not admitted; 1 forgotten again and again: stays
        step([0, 1, 2, 3], [3.0, 3.0, 0.1, 0.1], [W, W, R, R])
        assert sorted(e.members()["index"].tolist()) == [1, 2, 3], t
    step([0], [3.0], [R])  # step 7: right while its class is learned: not suspected, admitted
    assert 0 in e.members()["index"].tolist() and e.table[0, COL_WRONG] == -1


def test_no_quarantine_while_the_class_itself_is_not_learned():
    """A rare or forgotten class: examples that stay wrong while more than three
    quarters of their class in the batch is wrong too get no strikes."""
    cfg = PolicyConfig(num_examples=6, capacity=6, seed=0, alpha=1.0, max_wrong=1, quarantine_steps=5)
    e = Engine(cfg)
    for t in range(10):  # class 0 (examples 0, 1) always wrong; class 1 (2, 3) always right
        e.update(torch.tensor([0, 1, 2, 3]), torch.tensor([2.0, 2.0, 0.1, 0.1]),
                 margins=torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64), classes=torch.tensor([0, 0, 1, 1]))
    assert sorted(e.members()["index"].tolist()) == [0, 1, 2, 3] and e.totals()["quarantined"] == 0
    e.update(torch.tensor([0, 1, 2, 3]), torch.tensor([2.0, 2.0, 0.1, 0.1]),  # example 1 now right: class 0 half right
             margins=torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64), classes=torch.tensor([0, 0, 1, 1]))
    assert sorted(e.members()["index"].tolist()) == [1, 2, 3] and e.totals()["quarantined"] == 1


def test_without_margins_nothing_is_quarantined():
    """Whether an example stays wrong cannot be told from its loss alone."""
    e = Engine(PolicyConfig(num_examples=4, capacity=4, seed=0, alpha=1.0, max_wrong=1, quarantine_steps=5))
    for step in range(20):
        e.update(torch.tensor([0, 1]), torch.tensor([1.0 + step, 1.0]))  # never a better loss
    assert sorted(e.members()["index"].tolist()) == [0, 1] and e.totals()["quarantined"] == 0


def test_class_quotas_hold_to_within_one_example():
    K, R, n = 4, 10, 400
    e = Engine(PolicyConfig(num_examples=n, capacity=R, seed=9, alpha=1.0, class_quotas=True, num_classes=K))
    g = torch.Generator().manual_seed(9)
    cls_of = torch.randint(0, K, (n,), generator=g)
    cls_of[torch.rand(n, generator=g) < 0.6] = 0  # class 0 dominates the stream
    for step in range(200):
        idx = torch.randint(0, n, (16,), generator=g)
        e.update(idx, (torch.rand(16, generator=g) * 2).float(), classes=cls_of[idx])
        counts = e.classes[:, 1]
        assert int(counts.sum()) == e.size
        if step >= 20:
            assert int(counts.max() - counts.min()) <= 1, counts.tolist()
    mem = e.members()
    assert torch.equal(torch.bincount(mem["cls"], minlength=K), e.classes[:, 1])


def test_new_members_per_step_are_capped():
    e = Engine(PolicyConfig(num_examples=100, capacity=50, seed=0, max_new_per_step=3))
    g = torch.Generator().manual_seed(0)
    before = 0
    for _ in range(10):
        e.update(torch.randperm(100, generator=g)[:20], torch.rand(20, generator=g))
        admitted = e.totals()["admitted"]
        assert admitted - before <= 3
        before = admitted
    assert before == 30


def test_nonfinite_losses_never_admitted_and_counted():
    e = Engine(PolicyConfig(num_examples=6, capacity=6, seed=0))
    e.update(torch.arange(6), torch.tensor([1.0, math.nan, math.inf, -math.inf, 2.0, 3.0]))
    assert sorted(e.members()["index"].tolist()) == [0, 4, 5]
    assert e.totals()["nonfinite"] == 3
    assert e.table[1, 2] == 0  # times_seen untouched by the NaN


def test_stale_scores_lose_to_fresh_ones():
    """With a large lam, an old high-priority member is evicted by new, lower
    priority candidates: its key carries the step it was scored at."""
    e = Engine(PolicyConfig(num_examples=10, capacity=1, seed=0, alpha=1.0, lam=1.0))
    e.update(torch.tensor([0]), torch.tensor([50.0]))
    for _ in range(30):
        tick(e)
    e.update(torch.tensor([1]), torch.tensor([0.5]))
    assert e.members()["index"].tolist() == [1]


def test_rebase_keeps_weights_finite():
    e = Engine(PolicyConfig(num_examples=50, capacity=10, seed=0, lam=10.0, gamma=1.0))
    g = torch.Generator().manual_seed(0)
    for _ in range(400):  # gamma * lam * 400 = 4000 >> 709: would overflow without rebasing
        e.update(torch.randint(0, 50, (5,), generator=g), torch.rand(5, generator=g) + 0.1)
        assert math.isfinite(e.tree[1].item()) and e.tree[1].item() > 0
        assert len(e.draw(3)) == 3


@pytest.mark.parametrize("second_replayed", [False, True])
def test_alpha_zero_counts_fresh_appearances_not_replays(second_replayed):
    """With alpha = lam = 0 every fresh appearance is a ticket and a member
    keeps its best, so the reservoir is a sample without replacement weighted
    by the number of fresh appearances (reservoir sampling over the stream).
    R = 1, 30 examples seen twice and 30 once: the member is a twice-seen one
    with probability 2/3; when their second appearance is a replay, which
    holds no ticket, with probability 1/2. 600 seeds, a 4-sigma binomial
    tolerance."""
    N, seeds = 60, 600
    twice = 0
    for seed in range(seeds):
        e = Engine(PolicyConfig(num_examples=N, capacity=1, seed=seed, alpha=0.0, lam=0.0))
        e.update(torch.arange(N), torch.rand(N))
        e.update(torch.arange(30), torch.rand(30), replayed=torch.full((30,), second_replayed))
        twice += int(e.members()["index"][0] < 30)
    p = 0.5 if second_replayed else 2 / 3
    assert abs(twice - seeds * p) < 4 * (seeds * p * (1 - p)) ** 0.5, twice / seeds
