"""Replay-fraction schedules and the WithIndex dataset helper."""

import math

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from hardmix.data import WithIndex, collate_with_index
from hardmix.schedules import Anneal, Constant, Cosine, FromCallable, LinearRamp, as_schedule, replay_count


def test_schedule_values():
    assert [Constant(0.3)(t) for t in (0, 10**9)] == [0.3, 0.3]
    lin = LinearRamp(0.4, warmup_steps=10, ramp_steps=20)
    assert [lin(t) for t in (0, 9, 10, 20, 30, 31)] == [0.0, 0.0, 0.0, pytest.approx(0.2), 0.4, 0.4]
    cos = Cosine(0.4, warmup_steps=10, ramp_steps=20)
    assert cos(9) == 0.0 and cos(20) == pytest.approx(0.2) and cos(30) == pytest.approx(0.4)
    assert cos(12) < lin(12)  # gentle start
    ann = Anneal(0.5, total_steps=100, anneal_steps=40)
    assert [ann(t) for t in (0, 59, 60, 80, 100, 500)] == [0.5, 0.5, 0.5, pytest.approx(0.25), 0.0, 0.0]
    assert LinearRamp(0.25, 5, 0)(5) == 0.25  # no ramp: full value right after warm-up


def test_every_schedule_stays_below_one():
    schedules = [Constant(0.99), LinearRamp(0.9, 3, 7), Cosine(0.5, 0, 11), Anneal(Cosine(0.7, 2, 5), 30, 10),
                 FromCallable(lambda t: 0.5 * (1 + math.sin(t)) * 0.99)]
    for s in schedules:
        for t in range(0, 200):
            assert 0.0 <= s(t) < 1.0, (s, t)


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, math.nan, math.inf, "0.2", True])
def test_rho_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match=r"rho must be a number in \[0, 1\)"):
        Constant(bad)
    with pytest.raises(ValueError, match=r"rho must be a number in \[0, 1\)"):
        LinearRamp(bad)


def test_bad_steps_and_callables():
    with pytest.raises(ValueError, match="warmup_steps must be an int >= 0, got -1"):
        LinearRamp(0.2, warmup_steps=-1)
    with pytest.raises(ValueError, match="anneal_steps must be <= total_steps = 10, got 20"):
        Anneal(0.2, total_steps=10, anneal_steps=20)
    s = as_schedule(lambda t: 1.0 if t == 7 else 0.1)
    assert s(6) == 0.1
    with pytest.raises(ValueError, match=r"the schedule's value at step 7 must be a number in \[0, 1\).*got 1.0"):
        s(7)
    with pytest.raises(TypeError, match="a schedule must be a number, a Schedule or a callable, got str"):
        as_schedule("linear")


def test_peaks():
    assert Constant(0.3).peak == 0.3 and LinearRamp(0.4, 2, 3).peak == 0.4 and Cosine(0.2, 0, 5).peak == 0.2
    assert Anneal(LinearRamp(0.5, 1, 1), 10, 5).peak == 0.5 and FromCallable(lambda t: 0.1).peak is None
    s = FromCallable(lambda t: 0.1 * (t % 4), peak=0.25)
    assert s.peak == 0.25 and s(2) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="the schedule's value at step 3 is 0.3.*above its declared peak 0.25"):
        s(3)
    with pytest.raises(ValueError, match=r"peak must be a number in \[0, 1\)"):
        FromCallable(lambda t: 0.1, peak=1.0)


def test_replay_count():
    assert replay_count(0.25, 256) == 64
    assert replay_count(0.0, 256) == 0
    assert replay_count(0.999, 10) == 9  # never the whole batch
    assert replay_count(0.05, 10) == 1  # rounds half up
    assert replay_count(0.5, 0) == 0


class Squares(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return {"x": torch.tensor([float(i)]), "y": i * i}


@pytest.mark.parametrize("workers", [0, 2])
def test_with_index_in_a_dataloader(workers):
    ds = TensorDataset(torch.arange(20.0)[:, None] * 2, torch.arange(20) % 3)
    loader = DataLoader(WithIndex(ds), batch_sampler=[[3, 1, 4], [15, 9]], num_workers=workers)
    got = list(loader)
    assert [b[0].tolist() for b in got] == [[3, 1, 4], [15, 9]]
    for idx, x, y in got:
        assert torch.equal(x[:, 0], idx.float() * 2) and torch.equal(y, idx % 3)


class Batched(Squares):
    """Fetches a batch at once (as Subset and many dataset libraries do)."""

    def __getitems__(self, indices):
        return [{"x": torch.tensor([float(i)]), "y": i * i, "batched": True} for i in indices]


@pytest.mark.parametrize("make", [lambda: Subset(TensorDataset(torch.arange(20.0) * 2), list(range(19, -1, -1))),
                                  Batched])
def test_with_index_over_a_dataset_that_fetches_batches(make):
    """The DataLoader fetches a batch with __getitems__ where the dataset has
    one: WithIndex's puts the indices first, as __getitem__ does."""
    ds = make()
    loader = DataLoader(WithIndex(ds), batch_sampler=[[3, 1, 4], [15, 9]])
    for want, (idx, item) in zip([[3, 1, 4], [15, 9]], loader):
        assert idx.tolist() == want
        if isinstance(ds, Subset):
            assert torch.equal(item, (19 - idx).float() * 2)
        else:
            assert item["y"].tolist() == [i * i for i in want] and bool(item["batched"].all())


def test_with_index_non_tuple_items_and_custom_collate():
    wrapped = WithIndex(Squares())
    assert wrapped[3][0] == 3 and wrapped[3][1]["y"] == 9 and len(wrapped) == 10

    def my_collate(items):  # written for the unwrapped dataset
        return torch.stack([it["x"] for it in items]), torch.tensor([it["y"] for it in items])

    loader = DataLoader(wrapped, batch_size=4, collate_fn=collate_with_index(my_collate))
    idx, (x, y) = next(iter(loader))
    assert idx.tolist() == [0, 1, 2, 3] and y.tolist() == [0, 1, 4, 9] and x.shape == (4, 1)


def test_with_index_refuses_iterable_datasets():
    with pytest.raises(TypeError, match="WithIndex needs a map-style dataset"):
        WithIndex(iter(range(3)))


def test_docstring_examples_run():
    import doctest

    import hardmix.rng
    import hardmix.schedules

    for module in (hardmix.schedules, hardmix.rng):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
