"""A sharded table (Engine(shard=(rank, world))) against one whole-table engine.

W shards are simulated in one process: each step, every shard runs
``dynamics`` for the batch, the rows are summed (what the sampler's all_reduce
does), and every shard runs ``update`` with them. ``dynamics`` may run ``lag``
steps ahead of ``update`` (the sampler's replay lag); the quarantines made in
between are carried over with ``Engine.carry``. After every step every shard
must hold the whole engine's reservoir, counters, heap, tree and window, draw
the same replay, and its table rows must equal the whole table's rows of the
indices it owns."""

from __future__ import annotations

import collections

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardmix.config import PolicyConfig
from hardmix.engine import Engine
from policy_helpers import assert_state_unchanged, full_state
from test_policy_agreement import configs, steps

REPLICATED = ("slots", "links", "heap", "free", "classes", "tree", "window", "counters", "balance")


def as_args(step) -> dict:
    idx, losses, margins, classes, priorities, _, _, *rest = step
    replayed = rest[0] if rest else None
    return dict(
        replayed=None if replayed is None else torch.tensor(replayed, dtype=torch.bool),
        indices=torch.tensor(idx, dtype=torch.int64),
        losses=torch.tensor(losses, dtype=torch.float32),
        margins=None if margins is None else torch.tensor(margins, dtype=torch.float32),
        classes=None if classes is None else torch.tensor(classes, dtype=torch.int64),
        priorities=None if priorities is None else torch.tensor(priorities, dtype=torch.float64),
    )


def halves(args: dict) -> dict:
    """The arguments of Engine.dynamics among a step's."""
    return {k: v for k, v in args.items() if k != "replayed"}


def assert_same(whole: Engine, shards: list[Engine], where: str, ahead: bool) -> None:
    W = len(shards)
    every = torch.arange(whole.config.num_examples)
    for r, s in enumerate(shards):
        for name in REPLICATED:
            assert torch.equal(getattr(s, name), getattr(whole, name)), f"{where}: shard {r} {name}"
        # dynamics computed ahead are in the shard's table already; quarantine_until
        # is written by update() only
        cols = slice(7, 8) if ahead else slice(0, 8)
        assert torch.equal(s.table[:, cols], whole.table[r::W, cols]), f"{where}: shard {r} table rows"
        assert torch.equal(s.slots_of(every), whole.slots_of(every)), f"{where}: shard {r} membership"


STUBBORN = torch.arange(200) // 4 % 2 == 0  # half of every class (classes are i % 4)


def phased_margins(idx: torch.Tensor, t: int, g: torch.Generator) -> torch.Tensor:
    """Nothing is learned before step 40 (every entry wrong: examples are
    admitted without strikes); then the stubborn half stays wrong (strikes,
    quarantines) until step 150; after that every entry is right (the
    quarantined may come back once their quarantine is over)."""
    wrong = (t < 40) | (STUBBORN[idx] & (t < 150))
    return torch.where(wrong, -1.0, 1.0) * (torch.rand(len(idx), generator=g) + 0.1)


def run(cfg: PolicyConfig, stream: list, W: int, lag: int) -> None:
    whole = Engine(cfg)
    shards = [Engine(cfg, shard=(r, W)) for r in range(W)]
    pending: collections.deque = collections.deque()  # (step, args, each shard's rows)
    for t, step in enumerate(stream):
        args = as_args(step)
        rows = sum(s.dynamics(t, **halves(args)) for s in shards)  # the all_reduce
        pending.append((step, args, [rows.clone() for _ in shards]))
        while len(pending) > lag or (t == len(stream) - 1 and pending):
            step, args, mine = pending.popleft()
            whole.update(**args)
            made = [s.update(**args, rows=r) for s, r in zip(shards, mine)]
            for m in made[1:]:
                assert all(torch.equal(a, b) for a, b in zip(m, made[0])), "shards disagree on quarantines"
            for _, later_args, later_rows in pending:
                for r, rows_r in enumerate(later_rows):
                    Engine.carry(rows_r, later_args["indices"], made[r])
            where = f"W={W} lag={lag} step {whole.step - 1}"
            assert_same(whole, shards, where, ahead=bool(pending))
            m, exclude = step[5], torch.tensor(step[6], dtype=torch.int64)
            want = whole.draw(m, exclude)
            for s in shards:
                assert torch.equal(s.draw(m, exclude), want), f"{where}: draw"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_sharded_engines_equal_one_whole_engine(data):
    cfg = data.draw(configs())
    stream = data.draw(st.lists(steps(cfg), min_size=1, max_size=25))
    W = data.draw(st.integers(1, 4))
    lag = data.draw(st.sampled_from([0, 0, 1, 3]))
    run(cfg, stream, W, lag)


@pytest.mark.parametrize("W,lag", [(2, 0), (3, 5)])
def test_sharded_long_stream_with_quarantine(W, lag):
    """300 steps, B = 32 of N = 200, margins that keep half of the data wrong
    for a while (quarantine at work), class quotas, the forgetting score."""
    g = torch.Generator().manual_seed(7)
    cfg = PolicyConfig(num_examples=200, capacity=24, seed=3, score="forgetting", alpha=1.0, lam=0.01,
                       gamma=1.0, max_wrong=2, quarantine_steps=15, class_quotas=True, num_classes=4,
                       max_new_per_step=5)
    stream = []
    for t in range(300):
        idx = torch.randint(0, 200, (32,), generator=g)
        losses = torch.rand(32, generator=g) * 2
        margins = phased_margins(idx, t, g)
        stream.append((idx.tolist(), losses.tolist(), margins.tolist(), (idx % 4).tolist(), None, 6, []))
    run(cfg, stream, W, lag)
    whole = Engine(cfg)
    for step in stream:
        whole.update(**as_args(step))
    assert whole.totals()["quarantined"] > 3  # the stream exercised quarantine


def test_shard_memory_is_a_part_of_the_table():
    cfg = PolicyConfig(num_examples=10_001, capacity=64)
    whole = Engine(cfg)
    parts = [Engine(cfg, shard=(r, 4)) for r in range(4)]
    assert sum(p.table.shape[0] for p in parts) == 10_001
    assert [p.table.shape[0] for p in parts] == [2501, 2500, 2500, 2500]
    for p in parts:
        assert p.pos.numel() == 128  # a hash over the slots, not [N]
        n_bytes = sum(t.numel() * t.element_size() for t in p.state_tensors())
        assert n_bytes < sum(t.numel() * t.element_size() for t in whole.state_tensors()) / 3.5


def small_sharded():
    cfg = PolicyConfig(num_examples=10, capacity=3, seed=1, max_wrong=2, quarantine_steps=5)
    return [Engine(cfg, shard=(r, 2)) for r in range(2)]


def test_sharded_bad_input_changes_nothing():
    a, b = small_sharded()
    idx, losses = torch.tensor([1, 2, 3]), torch.tensor([1.0, 2.0, 3.0])
    rows = a.dynamics(0, idx, losses) + b.dynamics(0, idx, losses)
    before = full_state(a)
    cases = [
        (dict(indices=idx, losses=losses), ValueError, "rows must be given exactly when the table is sharded"),
        (dict(indices=idx, losses=losses, rows=rows[:2]), RuntimeError, r"rows must have shape \[3, 8\]"),
        (dict(indices=idx, losses=losses, rows=rows.float()), RuntimeError, "rows must have dtype Double"),
        (dict(indices=torch.tensor([1, 2, 10]), losses=losses, rows=rows), RuntimeError,
         r"indices\[2\] = 10 is out of range \[0, 10\)"),
    ]
    for kwargs, kind, match in cases:
        with pytest.raises(kind, match=match):
            a.update(**kwargs)
        assert_state_unchanged(before, a)
    for kwargs, kind, match in [
        (dict(t=-1, indices=idx, losses=losses), ValueError, "t must be an int >= 0, got -1"),
        (dict(t=0, indices=idx, losses=losses, priorities=torch.ones(3)), RuntimeError,
         "priorities must be given exactly when score is 'given'"),
        (dict(t=0, indices=torch.tensor([0, 11, 2]), losses=losses), RuntimeError,
         r"policy_dynamics: indices\[1\] = 11 is out of range \[0, 10\)"),
        (dict(t=0, indices=idx, losses=losses[:2]), ValueError, "losses has 2 entries but indices has 3"),
    ]:
        with pytest.raises(kind, match=match):
            a.dynamics(**kwargs)
        assert_state_unchanged(before, a)


def test_a_tree_of_the_wrong_size_is_refused():
    """A tree sized for another capacity (P = 2R) is refused: the sharded
    hash mask would reach past pos."""
    a, b = small_sharded()
    for e in (a, b):
        e.tree = torch.zeros(16, dtype=torch.float64)  # R = 3: P must be 4
    idx, losses = torch.tensor([1, 2]), torch.tensor([1.0, 2.0])
    rows = a.dynamics(0, idx, losses) + b.dynamics(0, idx, losses)
    with pytest.raises(RuntimeError, match="state tree must have 2P entries, P the least power of two >= R = 3"):
        a.update(idx, losses, rows=rows)
    with pytest.raises(RuntimeError, match="state tree does not match R = 3"):
        a.draw(1)


def test_shard_arguments_and_checkpoints():
    cfg = PolicyConfig(num_examples=10, capacity=3)
    for bad in [(2, 2), (0, 0), (-1, 2), [0, 2], (0, True)]:
        with pytest.raises(ValueError, match="shard must be a tuple"):
            Engine(cfg, shard=bad)
    with pytest.raises(ValueError, match="dynamics\\(\\) is for a sharded table"):
        Engine(cfg).dynamics(0, torch.tensor([1]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="rows must be given exactly"):
        Engine(cfg).update(torch.tensor([1]), torch.tensor([1.0]), rows=torch.zeros(1, 8, dtype=torch.float64))
    a, b = small_sharded()
    with pytest.raises(ValueError, match=r"state_dict holds table shard \(0, 2\), this engine shard \(1, 2\)"):
        b.load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match=r"state_dict holds table shard None"):
        a.load_state_dict(Engine(PolicyConfig(num_examples=10, capacity=3, seed=1, max_wrong=2,
                                              quarantine_steps=5)).state_dict())
    state = a.state_dict()
    b2 = Engine(a.config, shard=(0, 2))
    b2.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(b2.state_tensors(), a.state_tensors()))


def test_opcheck_sharded_ops():
    a, b = small_sharded()
    idx, losses = torch.tensor([1, 2, 3]), torch.tensor([1.0, 2.0, 3.0])
    rows = torch.zeros(3, 8, dtype=torch.float64)
    torch.library.opcheck(torch.ops.hardmix.policy_dynamics, (a.table, a.config_vector, 0, idx, losses, None, None,
                                                              None, rows))
    rows = a.dynamics(0, idx, losses) + b.dynamics(0, idx, losses)
    torch.library.opcheck(torch.ops.hardmix.policy_update,
                          (*a.state_tensors(), a.config_vector, 1, idx, losses, None, None, None, None, rows))
    out = torch.empty(3, dtype=torch.int64)
    torch.library.opcheck(torch.ops.hardmix.policy_find, (a.pos, a.slots, a.config_vector, idx, out))


def test_ranks_applying_at_different_times_agree():
    """Ranks of one sharded run may apply their queued updates at different
    times (a rank whose loader fetched further ahead has applied more of them
    when update() runs). The owner's rows then miss the quarantines of steps
    the owner applies later, while another rank applied them before the batch
    arrived: so every rank also carries in the quarantines of every step since
    the least step any rank had (Engine.carry_since; the sampler exchanges the
    steps with the rows). Without carry_since this fails."""
    g = torch.Generator().manual_seed(7)
    cfg = PolicyConfig(num_examples=200, capacity=24, seed=3, score="forgetting", alpha=1.0, lam=0.01,
                       gamma=1.0, max_wrong=2, quarantine_steps=15, class_quotas=True, num_classes=4,
                       max_new_per_step=5)
    lags = (0, 2, 1)  # rank 0 applies each update at once, rank 1 two updates later, rank 2 one
    whole = Engine(cfg)
    shards = [Engine(cfg, shard=(r, 3)) for r in range(3)]
    pending = [collections.deque() for _ in shards]
    T = 300
    for t in range(T):
        idx = torch.randperm(200, generator=g)[:32]
        losses = torch.rand(32, generator=g) * 2
        margins = phased_margins(idx, t, g)
        args = dict(indices=idx, losses=losses, margins=margins, classes=idx % 4)
        whole.update(**args)
        rows = sum(s.dynamics(t, **halves(args)) for s in shards)  # the all_reduce (with each rank's step)
        least = min(s.step for s in shards)
        for r, s in enumerate(shards):
            mine = rows.clone()
            s.carry_since(mine, idx, least)
            s.forget_before(least)
            pending[r].append((args, mine))
            while len(pending[r]) > lags[r] or (t == T - 1 and pending[r]):
                a, rows_r = pending[r].popleft()
                made = s.update(**a, rows=rows_r)
                for later_args, later_rows in pending[r]:
                    Engine.carry(later_rows, later_args["indices"], made)
    assert whole.totals()["quarantined"] > 3
    for r, s in enumerate(shards):
        assert torch.equal(s.counters, whole.counters), f"shard {r}: {s.totals()} != {whole.totals()}"
        assert torch.equal(s.slots, whole.slots), f"shard {r} slots"
        assert torch.equal(s.table, whole.table[r::3]), f"shard {r} table"


def test_a_single_rank_keeps_no_old_quarantines():
    """With one rank, Engine.carry_since keeps no quarantines: the engine
    state does not grow with every quarantine."""
    import hardmix

    s = hardmix.ReplaySampler(200, batch_size=16, capacity=24, replay_lag=3, seed=1, num_classes=4,
                              max_wrong=2, quarantine_steps=5, shard_table=True)
    for epoch in range(8):
        s.set_epoch(epoch)
        for b in s:
            idx = torch.tensor(b)
            logits = torch.zeros(len(b), 4)
            wrong = (epoch < 1) | (STUBBORN[idx] & (epoch < 5))  # as phased_margins, by epoch
            logits[torch.arange(len(b)), (idx + wrong.long()) % 4] = 1.0
            s.update(idx, torch.ones(len(b)), logits=logits, targets=idx % 4)
    assert s.engine.totals()["quarantined"] > 3
    assert len(s.engine.state_dict()["made"]) <= s.replay_lag + 1
