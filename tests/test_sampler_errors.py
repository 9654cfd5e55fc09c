"""ReplaySampler bad input: every public method validates before it changes
anything, with an error naming the argument and the value; the full sampler
state is compared before and after each failed call."""

from __future__ import annotations

import collections
import copy
import dataclasses
import math

import pytest
import torch

import hardmix
import hardmix.intake
from hardmix import schedules
from hardmix.batch_record import BatchRecord
from hardmix.checkpoint_log import CheckpointLog
from hardmix.engine import STATE_TENSORS
from hardmix.inputs import INDEX_DTYPES
from hardmix.plan import EpochPlan
from hardmix.update_queue import UpdateQueue


def plain(v):
    """v (tensors, containers, scalars) as plain, comparable values."""
    if isinstance(v, torch.Tensor):
        return ("tensor", str(v.dtype), tuple(v.shape), v.tolist())
    if isinstance(v, (list, tuple, collections.deque, UpdateQueue)):  # (the queue: its entries)
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (int, float, str, bool, type(None))):
        return v
    if isinstance(v, (EpochPlan, CheckpointLog)):  # (the sampler's parts)
        return {"type": type(v).__name__, **{k: plain(x) for k, x in vars(v).items()}}
    if isinstance(v, BatchRecord):  # (slots: no vars())
        return {"type": "BatchRecord", **{f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}}
    return type(v).__name__


def freeze(s: hardmix.ReplaySampler):
    """Every piece of the sampler's state as plain, comparable values, once
    its background work is done (``engine`` waits for it)."""
    engine = s.engine
    out = {k: plain(v) for k, v in vars(s).items() if k not in ("_engine", "_worker")}
    out["engine"] = {k: plain(getattr(engine, k)) for k in STATE_TENSORS}
    return out


def started(**kw):
    """A sampler that yielded a few batches (updated) plus one waiting for its update."""
    args = dict(batch_size=8, capacity=12, replay_fraction=0.25, replay_lag=1, seed=3, num_classes=3, class_quotas=False)
    args.update(kw)
    s = hardmix.ReplaySampler(40, **args)
    it = iter(s)
    for _ in range(3):
        b = torch.tensor(next(it))
        s.update(b, (b % 5).float(), logits=torch.randn(len(b), 3), targets=b % 3)
    s.state_dict()  # the checkpoint log is on, too
    b = torch.tensor(next(it))
    return s, it, b


def loss(b):
    return (b % 5).float()


UPDATE_CASES = {
    # name: (call(s, b), exception, message pattern)
    "indices out of range": (lambda s, b: s.update(torch.cat([b[:-1], torch.tensor([40])]), loss(b)),
                             ValueError, r"indices\[7\] = 40 is out of range \[0, 40\)"),
    "indices negative": (lambda s, b: s.update(torch.cat([torch.tensor([-1]), b[1:]]), loss(b)),
                         ValueError, r"indices\[0\] = -1 is out of range"),
    "indices float": (lambda s, b: s.update(b.float(), loss(b)), TypeError, r"indices must have dtype torch.int64 or .* got torch.float32"),
    "indices 2-D": (lambda s, b: s.update(b.view(2, -1), loss(b)), ValueError, r"1-D tensor \[B\], got shape \[2, 4\]"),
    "indices a list": (lambda s, b: s.update(b.tolist(), loss(b)), TypeError, "must be a torch.Tensor, got list"),
    "indices empty": (lambda s, b: s.update(b[:0], loss(b)[:0]), ValueError, "indices is empty"),
    "indices duplicated": (lambda s, b: s.update(torch.cat([b[:-1], b[:1]]), loss(b)), ValueError,
                           "contains .* more than once"),
    "indices reordered": (lambda s, b: s.update(b.flip(0), loss(b)), ValueError,
                          "not those of batch 3.*first difference at position 0"),
    "indices of another batch": (lambda s, b: s.update((b + 1) % 40, loss(b)), ValueError, "not those of batch 3"),
    "indices short": (lambda s, b: s.update(b[:-1], loss(b)[:-1]), ValueError, "got 7 indices, expected 8"),
    "losses short": (lambda s, b: s.update(b, loss(b)[:-1]), ValueError, r"update: losses has 7 entries but indices has 8"),
    "losses int": (lambda s, b: s.update(b, b), TypeError, "losses must have dtype .*got torch.int64"),
    "losses 2-D": (lambda s, b: s.update(b, loss(b)[:, None]), ValueError, r"update: losses must be a 1-D tensor \[B\], got shape \[8, 1\]"),
    "losses not a tensor": (lambda s, b: s.update(b, [0.0] * 8), TypeError, "losses must be a torch.Tensor, got list"),
    "losses on another device": (lambda s, b: s.update(b, loss(b).to("meta")), ValueError,
                                 "losses must be on the CPU or a CUDA device, got meta"),
    "logits on another device": (lambda s, b: s.update(b, loss(b), logits=torch.randn(8, 3, device="meta"),
                                                       targets=b % 3), ValueError,
                                 "logits must be on the CPU or a CUDA device, got meta"),
    "indices on another device": (lambda s, b: s.update(b.to("meta"), loss(b)), ValueError,
                                  "indices must be on the CPU or a CUDA device, got meta"),
    "targets on another device": (lambda s, b: s.update(b, loss(b), targets=(b % 3).to("meta")), ValueError,
                                  "targets must be on the CPU or a CUDA device, got meta"),
    "losses and targets on another device": (lambda s, b: s.update(b, loss(b).to("meta"),
                                                                   targets=(b % 3).to("meta")),
                                             ValueError, "losses must be on the CPU or a CUDA device, got meta"),
    "logits without targets": (lambda s, b: s.update(b, loss(b), logits=torch.randn(8, 3)), ValueError,
                               "logits need targets"),
    "logits wrong rows": (lambda s, b: s.update(b, loss(b), logits=torch.randn(7, 3), targets=b % 3), ValueError,
                          r"logits must have shape \[B=8, C\], got \[7, 3\]"),
    "logits 1-D": (lambda s, b: s.update(b, loss(b), logits=torch.randn(8), targets=b % 3), ValueError,
                   r"logits must have shape \[B=8, C\], got \[8\]"),
    "logits int": (lambda s, b: s.update(b, loss(b), logits=torch.ones(8, 3, dtype=torch.int64), targets=b % 3),
                   TypeError, "logits must have dtype"),
    "logits float64": (lambda s, b: s.update(b, loss(b), logits=torch.randn(8, 3, dtype=torch.float64),
                                             targets=b % 3),
                       TypeError, r"got torch.float64 \(for a float64 model's logits: logits.float\(\)\)$"),
    "targets out of range of logits": (lambda s, b: s.update(b, loss(b), logits=torch.randn(8, 2), targets=b % 3),
                                       ValueError, r"targets\[\d\] = 2 is out of range \[0, 2\)"),
    "targets out of num_classes": (lambda s, b: s.update(b, loss(b), targets=torch.full((8,), 3)), ValueError,
                                   r"targets\[0\] = 3 is out of range \[0, num_classes=3\)"),
    "targets out of num_classes, logits wider": (lambda s, b: s.update(b, loss(b), logits=torch.randn(8, 4),
                                                                        targets=torch.full((8,), 3)), ValueError,
                                                 r"targets\[0\] = 3 is out of range \[0, num_classes=3\)"),
    "targets float": (lambda s, b: s.update(b, loss(b), logits=torch.randn(8, 3), targets=(b % 3).float()),
                      TypeError, "targets must have dtype"),
    "targets short": (lambda s, b: s.update(b, loss(b), logits=torch.randn(8, 3), targets=b[:-1] % 3), ValueError,
                      r"update: targets has 7 entries but indices has 8"),
    "priorities without score given": (lambda s, b: s.update(b, loss(b), priorities=loss(b)), ValueError,
                                       "priorities are only taken with score='given', not 'loss'"),
}


@pytest.mark.parametrize("case", sorted(UPDATE_CASES))
def test_bad_update_changes_nothing(case):
    call, exc, pattern = UPDATE_CASES[case]
    s, it, b = started()
    before = freeze(s)
    with pytest.raises(exc, match=pattern):
        call(s, b)
    assert freeze(s) == before
    s.update(b, loss(b))  # and the sampler goes on
    next(it)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("targets", [lambda b: b % 3, lambda b: -(b % 2)])
def test_targets_outside_the_logits_change_nothing_without_num_classes(targets, dtype):
    """Without num_classes, on the host, the margin op is what checks targets
    against the logits' columns: its refusal still comes in the shared
    words, as a ValueError, before anything changes."""
    s, it, b = started(num_classes=0)
    assert s.config.num_classes == 0  # (the case this test is about)
    t = targets(b).to(dtype)
    k = int(((t < 0) | (t >= 2)).nonzero()[0])
    before = freeze(s)
    with pytest.raises(ValueError, match=rf"^update: targets\[{k}\] = {int(t[k])} is out of range \[0, 2\) "
                                         r"\(logits has 2 classes\)$"):
        s.update(b, loss(b), logits=torch.randn(8, 2), targets=t)
    assert freeze(s) == before
    s.update(b, loss(b), logits=torch.randn(8, 2), targets=b % 2)  # and the sampler goes on
    next(it)


SHAPE_CASES = {
    # name: the update arguments changed (a bad type, shape or dtype)
    "indices 2-D": lambda b: dict(indices=b.view(2, -1)),
    "indices float": lambda b: dict(indices=b.float()),
    "indices a list": lambda b: dict(indices=b.tolist()),
    "losses short": lambda b: dict(losses=loss(b)[:-1]),
    "losses 2-D": lambda b: dict(losses=loss(b)[:, None]),
    "losses int": lambda b: dict(losses=b),
    "losses a list": lambda b: dict(losses=loss(b).tolist()),
    "targets short": lambda b: dict(targets=(b % 3)[:-1]),
    "targets float": lambda b: dict(targets=(b % 3).float()),
    "logits short": lambda b: dict(logits=torch.zeros(len(b) - 1, 3)),
    "logits 1-D": lambda b: dict(logits=torch.zeros(len(b))),
    "logits int": lambda b: dict(logits=torch.zeros(len(b), 3, dtype=torch.int64)),
    "logits a list": lambda b: dict(logits=torch.zeros(len(b), 3).tolist()),
}


@pytest.mark.parametrize("case", sorted(SHAPE_CASES))
def test_the_sampler_and_the_engine_refuse_alike(case):
    """One check (hardmix.inputs) for every layer above the ops: a bad
    type, shape or dtype gets the same exception in the same words from
    ReplaySampler.update and Engine.update."""
    s, it, b = started()
    args = dict(indices=b, losses=loss(b), logits=torch.randn(len(b), 3), targets=b % 3)
    args.update(SHAPE_CASES[case](b))
    before = freeze(s)
    with pytest.raises((TypeError, ValueError)) as by_sampler:
        s.update(**args)
    assert freeze(s) == before
    engine = hardmix.Engine(hardmix.PolicyConfig(num_examples=40, capacity=12, num_classes=3))
    with pytest.raises((TypeError, ValueError)) as by_engine:
        engine.update(**args)
    assert engine.step == 0
    assert (type(by_sampler.value), str(by_sampler.value)) == (type(by_engine.value), str(by_engine.value))
    assert str(by_sampler.value).startswith("update: ")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_losses_raise_or_are_counted(value):
    s, it, b = started(nonfinite="raise")
    bad = loss(b)
    bad[5] = value
    before = freeze(s)
    with pytest.raises(ValueError, match=rf"losses\[5\] = {value} is not finite \(nonfinite='raise'\)"):
        s.update(b, bad)
    assert freeze(s) == before
    s, it, b = started(replay_lag=0)  # default: skip and count
    n0 = s.stats()["nonfinite"]
    s.update(b, bad)
    assert s.stats()["nonfinite"] == n0 + 1


def test_nonfinite_margins_raise():
    s, it, b = started(nonfinite="raise")
    logits = torch.randn(8, 3)
    logits[2, 0] = float("nan")
    before = freeze(s)
    with pytest.raises(ValueError, match=r"margins\[2\] = nan is not finite"):
        s.update(b, loss(b), logits=logits, targets=b % 3)
    assert freeze(s) == before


def test_given_priorities_are_checked():
    s = hardmix.ReplaySampler(40, batch_size=8, capacity=12, replay_lag=0, score="given")
    b = torch.tensor(next(iter(s)))
    before = freeze(s)
    with pytest.raises(ValueError, match="score 'given' needs priorities"):
        s.update(b, loss(b))
    p = loss(b)
    p[4] = -1.0
    with pytest.raises(ValueError, match=r"priorities\[4\] = -1.0 is negative"):
        s.update(b, loss(b), priorities=p)
    assert freeze(s) == before
    s.update(b, loss(b), priorities=p.abs())


def test_margin_score_and_quotas_need_their_inputs():
    for kw, pattern in (({"score": "margin"}, "score 'margin' needs logits and targets"),
                        ({"class_quotas": True, "num_classes": 3}, "class_quotas needs targets")):
        s = hardmix.ReplaySampler(40, batch_size=8, capacity=12, replay_lag=0, **kw)
        b = torch.tensor(next(iter(s)))
        before = freeze(s)
        with pytest.raises(ValueError, match=pattern):
            s.update(b, loss(b))
        assert freeze(s) == before


def test_update_twice_and_update_without_a_batch():
    s = hardmix.ReplaySampler(40, batch_size=8, capacity=12, replay_lag=0)
    before = freeze(s)
    with pytest.raises(ValueError, match="no batch is waiting for an update"):
        s.update(torch.arange(8), torch.zeros(8))
    assert freeze(s) == before
    it = iter(s)
    b = torch.tensor(next(it))
    s.update(b, loss(b))
    before = freeze(s)
    with pytest.raises(ValueError, match=r"update\(\) was already called for this batch \(batch 0\)"):
        s.update(b, loss(b))
    assert freeze(s) == before
    next(it)
    with pytest.raises(ValueError, match=r"update\(\) was already called for this batch \(batch 0\)"):
        s.update(b, loss(b))


def test_weights_of_indices_not_from_the_batch():
    s, it, b = started()
    before = freeze(s)
    with pytest.raises(ValueError, match="not those of batch 3"):
        s.weights(b.flip(0))
    with pytest.raises(TypeError, match="indices must have dtype torch.int64 or"):
        s.weights(b.double())
    assert freeze(s) == before


def test_update_compares_indices_weights_saw_changed_through_numpy():
    """weights() then update() with one tensor whose contents changed in
    between through a numpy view (which no version counter sees): update()
    still compares them with the batch and refuses, changing nothing."""
    s, it, b = started()
    s.weights(b)
    b.numpy()[0] = next(i for i in range(40) if i not in b.tolist())
    before = freeze(s)
    with pytest.raises(ValueError, match="not those of batch 3"):
        s.update(b, loss(b))
    assert freeze(s) == before


CONSTRUCTOR_CASES = {
    "capacity 0": (dict(capacity=0), ValueError, r"capacity must be an int in \[1, num_examples=40\], got 0"),
    "capacity > N": (dict(capacity=41), ValueError, r"capacity must be an int in \[1, num_examples=40\], got 41"),
    "batch size 0": (dict(batch_size=0), ValueError, "batch_size must be an int >= 1, got 0"),
    "batch size float": (dict(batch_size=8.0), ValueError, "batch_size must be an int >= 1, got 8.0"),
    "num_examples 0": (dict(num_examples=0), ValueError, "num_examples must be an int >= 1, got 0"),
    "rho 1": (dict(replay_fraction=1.0), ValueError, r"rho must be a number in \[0, 1\).*got 1.0"),
    "rho negative": (dict(replay_fraction=-0.1), ValueError, r"rho must be a number in \[0, 1\).*got -0.1"),
    "rho nan": (dict(replay_fraction=float("nan")), ValueError, "got nan"),
    "warmup negative": (dict(warmup_steps=-1), ValueError, "warmup_steps must be an int >= 0, got -1"),
    "ramp negative": (dict(ramp_steps=-5), ValueError, "ramp_steps must be an int >= 0, got -5"),
    "ramp with a schedule": (dict(replay_fraction=lambda t: 0.1, ramp_steps=5, epoch_length="pass"), ValueError,
                             "ramp_steps applies"),
    "negative alpha": (dict(alpha=-1.0), ValueError, "alpha must be a finite number >= 0, got -1.0"),
    "negative lam": (dict(lam=-0.5), ValueError, "lam must be a finite number >= 0, got -0.5"),
    "negative gamma": (dict(gamma=-2), ValueError, "gamma must be a finite number >= 0, got -2"),
    "ema_beta 1": (dict(ema_beta=1.0), ValueError, r"ema_beta must be a number in \[0, 1\), got 1.0"),
    "unknown score": (dict(score="entropy"), ValueError, "score must be one of"),
    "replay_mode": (dict(replay_mode="prepend"), ValueError, "replay_mode must be 'mix' or 'append', got 'prepend'"),
    "replay_lag negative": (dict(replay_lag=-1), ValueError, "replay_lag must be None or an int >= 0, got -1"),
    "drop_last not bool": (dict(drop_last=1), ValueError, "drop_last must be a bool, got 1"),
    "epoch_length 0": (dict(epoch_length=0), ValueError, "epoch_length must be 'auto', 'pass' or an int >= 1, got 0"),
    "epoch_length word": (dict(epoch_length="epoch"), ValueError, "epoch_length must be .* got 'epoch'"),
    "callable without peak": (dict(replay_fraction=lambda t: 0.1), ValueError,
                              r"epoch_length='auto' sizes every epoch by the replay schedule's peak.*FromCallable"),
    "unknown knob": (dict(alpah=1.0), TypeError, "alpah"),
    "seed twice": (dict(policy_seed=None), TypeError, "policy_seed"),
    "quotas without classes": (dict(class_quotas=True), ValueError, "num_classes must be >= 1 when class_quotas"),
    "state_device unknown": (dict(state_device="tpu"), ValueError,
                             "state_device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
    "state_device meta": (dict(state_device="meta"), ValueError, "state_device must be .*got 'meta'"),
    "state_device a list": (dict(state_device=[0]), ValueError, r"state_device must be .*got \[0\]"),
    "state_device cuda, sharded": (dict(state_device="cuda", shard_table=True), ValueError,
                                   "state_device='cuda' needs one process without shard_table"),
}


@pytest.mark.parametrize("case", sorted(CONSTRUCTOR_CASES))
def test_constructor_arguments(case):
    kw, exc, pattern = CONSTRUCTOR_CASES[case]
    args = dict(num_examples=40, batch_size=8, capacity=12)
    args.update(kw)
    with pytest.raises(exc, match=pattern):
        hardmix.ReplaySampler(**args)


def test_set_epoch_and_set_fresh_arguments():
    s, it, b = started()
    before = freeze(s)
    for call, pattern in (
        (lambda: s.set_epoch(-1), r"epoch must be an int >= 0, got -1"),
        (lambda: s.set_epoch(1.0), r"epoch must be an int >= 0, got 1.0"),
        (lambda: s.set_fresh(torch.tensor([1, 2, 40])), r"contains 40, out of range \[0, 40\)"),
        (lambda: s.set_fresh(torch.tensor([3, 1, 3])), "contains duplicates"),
        (lambda: s.set_fresh(torch.tensor([], dtype=torch.int64)), "must not be empty"),
        (lambda: s.set_fresh(torch.tensor([[1, 2]])), "1-D integer tensor"),
        (lambda: s.set_fresh(torch.tensor([0.5])), "1-D integer tensor"),
    ):
        with pytest.raises(ValueError, match=pattern):
            call()
        assert freeze(s) == before


def test_a_logged_update_without_what_the_policy_needs_is_refused():
    """A logged update lacking what the policy needs (here classes, with
    class quotas) is refused by load_state_dict with a ValueError naming it,
    not by the op when the update is applied; nothing changes."""
    s, it, b = started(class_quotas=True)
    s.update(b, loss(b), targets=b % 3)
    good = s.state_dict()
    k = next(n for n, u in enumerate(good["updates"]) if u["indices"].numel())
    bad = copy.deepcopy(good)
    bad["updates"][k]["classes"] = None
    t, _, _ = started(class_quotas=True)
    before = freeze(t)
    with pytest.raises(ValueError, match=rf"updates\[{k}\] does not fit the policy: class_quotas needs classes"):
        t.load_state_dict(bad)
    assert freeze(t) == before
    t.load_state_dict(good)


def test_a_state_of_other_arguments_names_them_first():
    """The arguments that differ come first, then the policy knobs, those
    left to their defaults marked: a default that follows from the
    arguments (reweight_every from capacity and batch_size) is not
    mistaken for a setting the user changed."""
    s = hardmix.ReplaySampler(400, batch_size=16, capacity=256, seed=3)
    t = hardmix.ReplaySampler(400, batch_size=8, capacity=256, seed=3, alpha=0.5)
    before = freeze(t)
    with pytest.raises(ValueError, match=r"other arguments: batch_size: saved 16, now 8; alpha: saved 0\.0, now "
                                         r"0\.5; reweight_every \(default\): saved 4, now 8$"):
        t.load_state_dict(s.state_dict())
    assert freeze(t) == before


def test_bad_state_dicts_change_nothing():
    s, it, b = started()
    s.update(b, loss(b))
    good = copy.deepcopy(s.state_dict())
    t, it2, b2 = started()
    before = freeze(t)
    cases = [
        ({}, ValueError, "not a ReplaySampler state_dict"),
        ({**good, "version": 99}, ValueError, "state version 99 is not supported"),
        ({**good, "version": torch.zeros(2)}, ValueError, r"state version tensor\(\[0\., 0\.\]\) is not supported"),
        ({**good, "signature": {**good["signature"], "batch_size": 16}}, ValueError, "batch_size: saved 16, now 8"),
        ({**good, "signature": {**good["signature"], "policy": {**good["signature"]["policy"], "alpha": 2.0}}},
         ValueError, r"alpha \(default\): saved 2.0, now 0.0"),
        ({**good, "signature": {**good["signature"], "shard_table": True}}, ValueError,
         "shard_table: saved True, now None"),
        ({**good, "signature": {**good["signature"], "seed": torch.zeros(3)}}, ValueError,
         r"signature\.seed must be a plain value"),
        ({**good, "signature": {**good["signature"], "policy": {**good["signature"]["policy"], "alpha": [1, {2: 3}]}}},
         ValueError, r"signature\.policy\.alpha\[1\] has a key 2 that is not a string"),
        ({**good, "signature": {**good["signature"], "policy": 5}}, ValueError,
         "signature.policy must be a dict, got int"),
        ({**good, "plan": [1, 2]}, ValueError, "state field plan must be two sequences"),
        ({**good, "engine": {**good["engine"], "table": torch.zeros(3, 8, dtype=torch.float64)}}, ValueError,
         "table"),
        ({**good, "batches": []}, ValueError, "lacks the batches yielded but not updated") if good["batches"] else
        ({**good, "position": {**good["position"], "batch": 99}}, ValueError, "inconsistent position"),
        ({**good, "position": {**good["position"], "batch": 99}}, ValueError, "inconsistent position"),
    ]
    for state, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            t.load_state_dict(state)
        assert freeze(t) == before


def test_a_schedule_that_fails_at_an_epoch_start_changes_nothing():
    s = hardmix.ReplaySampler(40, batch_size=8, capacity=12, replay_lag=0,
                              replay_fraction=schedules.FromCallable(lambda t: 0.25 if t < 7 else 1.5, peak=0.25))
    assert len(s) == 7  # batches 0..6
    for b in s:
        b = torch.tensor(b)
        s.update(b, loss(b))
    before = freeze(s)
    with pytest.raises(ValueError, match=r"schedule's value at step 7 must be a number in \[0, 1\).*got 1.5"):
        s.set_epoch(1)
    assert freeze(s) == before
    with pytest.raises(ValueError, match="got 1.5"):
        iter(s)  # the finished epoch would start the next one
    assert freeze(s) == before


def test_len_of_a_held_epoch_is_zero():
    s = hardmix.ReplaySampler(40, batch_size=8, capacity=12, replay_lag=0, replay_fraction=0.25)
    for b in s:
        b = torch.tensor(b)
        s.update(b, loss(b))
    s.set_epoch(0)  # the epoch just finished: nothing more to yield
    assert len(s) == 0 and list(iter(s)) == []
    s.set_epoch(1)
    assert len(s) == 7
    s.set_epoch(1)
    n = 0
    for b in s:
        b = torch.tensor(b)
        s.update(b, loss(b))
        n += 1
    assert n == 7 and s.epoch == 1


class FakeCopy:
    """Stands in for the CUDA event of an update's copy to the host."""

    def __init__(self):
        self.done, self.waits = False, 0

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.waits += not self.done
        self.done = True


def deferring(s: hardmix.ReplaySampler, monkeypatch, done: bool = False, on_device: bool = False) -> list[FakeCopy]:
    """Makes ``s`` treat CPU inputs as it treats GPU ones with the state on
    the host: values unchecked in update(), copied (here: cloned, the copy's
    completion faked: ``done`` at once or when waited for), checked when the
    update is applied. ``on_device``: the entry's own tensors become meta
    tensors, as unusable on the host as GPU memory would be there."""
    copies = []

    def to_host(entry):
        copies.append(FakeCopy())
        copies[-1].done = done
        host = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in entry.items()}
        if on_device:
            entry.update({k: v.to("meta") for k, v in entry.items() if isinstance(v, torch.Tensor)})
        return copies[-1], host

    monkeypatch.setattr(hardmix.intake, "defers", lambda devices, allowed: True)
    monkeypatch.setattr(hardmix.intake, "to_host", to_host)
    return copies


DEFERRED_CASES = {
    # name: (sampler arguments, the bad arguments of update, message pattern)
    # (targets out of the logits' range: the CPU margin op refuses them at once; tests/test_sampler.py
    # checks the deferred case on a GPU)
    "nan loss": (dict(nonfinite="raise"), lambda b: dict(losses=loss(b).index_fill(0, torch.tensor([2]), math.nan)),
                 r"losses\[2\] = nan is not finite \(nonfinite='raise'\)"),
    "targets out of num_classes": (dict(), lambda b: dict(targets=torch.full((8,), 3)),
                                   r"targets\[0\] = 3 is out of range \[0, num_classes=3\)"),
    "negative priorities": (dict(score="given"), lambda b: dict(priorities=-torch.ones(8)),
                            r"priorities\[0\] = -1.0 is negative"),
}


@pytest.mark.parametrize("lag", [0, 2])
@pytest.mark.parametrize("case", sorted(DEFERRED_CASES))
def test_values_checked_when_applied(case, lag, monkeypatch):
    """Inputs on a GPU are checked when their update is applied (checking
    them in update() would wait for the GPU): the bad update runs as one with
    no examples, the next batch raises (once) and the run goes on from
    exactly that state. update() applies only updates whose copy is done;
    a batch waits for the copies it needs. Faked on the CPU here; on a GPU
    in test_sampler.py."""
    kw, bad, pattern = DEFERRED_CASES[case]
    s = hardmix.ReplaySampler(80, batch_size=8, capacity=12, replay_fraction=0.25, replay_lag=lag, seed=3,
                              num_classes=3, class_quotas=False, **kw)
    copies = deferring(s, monkeypatch)
    given = s.config.score == "given"
    expected, updates = hardmix.Engine(s.config), []

    def same_state():
        while expected.step < s.engine.step:
            expected.update(*updates[expected.step][:2], **updates[expected.step][2])
        for k in STATE_TENSORS:
            assert torch.equal(getattr(s.engine, k), getattr(expected, k)), k

    it = iter(s)
    for g in range(8):
        if g == 3 + lag:  # the first batch that needs update 2
            before = freeze(s)
            with pytest.raises(ValueError, match="update of batch 2 had bad input.*" + pattern):
                next(it)
            assert copies[2].waits == 1  # waited for by the batch that needs it, not by update()
            assert freeze(s) != before and s.engine.step == 3
            same_state()  # update 2 ran with no examples
            it = iter(s)  # (the error ended that iterator; the next one goes on)
        b = torch.tensor(next(it))
        replayed = s.replayed(b)
        assert s.engine.step == max(0, g - lag)
        args = dict(losses=loss(b), targets=b % 3, **({"priorities": loss(b) + 1} if given else {}))
        if g == 6 and lag:
            copies[g - lag].done = True  # this copy is done: update() applies it, without waiting
        s.update(b, **({**args, **bad(b)} if g == 2 else args))  # accepted: checked when applied
        assert s.engine.step == max(0, g - lag) + (g == 6 and lag > 0)
        if g == 2:
            updates.append((b[:0], loss(b)[:0], dict(priorities=loss(b)[:0] if given else None)))
        else:
            updates.append((b, args["losses"], dict(classes=args["targets"], priorities=args.get("priorities"),
                                                     replayed=replayed)))
    assert s.stats()["updates_applied"] == 8 - lag and not s._errors  # (stats waits for the copies)
    assert all(c.done for c in copies[: 8 - lag])
    same_state()
    assert all(c.waits <= 1 for c in copies) and copies[6 - lag].waits == (lag == 0)


def bad_update_1(monkeypatch, lag: int, value: float = math.inf):
    """A sampler fed GPU-like (deferred) updates for batches 0..2, update 1
    non-finite under nonfinite='raise'; returns it, its iterator and its
    arguments."""
    args = dict(batch_size=8, capacity=12, replay_lag=lag, seed=3, nonfinite="raise")
    s = hardmix.ReplaySampler(80, **args)
    deferring(s, monkeypatch)
    it = iter(s)
    for g in range(3):
        b = torch.tensor(next(it))
        s.update(b, torch.full((8,), value) if g == 1 else loss(b))
    return s, it, args


def test_a_restore_checks_what_was_not_checked_and_only_that(monkeypatch):
    """Updates with GPU tensors still unchecked when a checkpoint is taken are
    checked when the restored sampler applies them (the error comes with the
    same batch as in the run that saved it); one checked (or reported) before
    the checkpoint is not checked or reported again."""
    s, it, args = bad_update_1(monkeypatch, lag=2)
    early = copy.deepcopy(s.state_dict())  # update 1 (bad) not applied yet: unchecked

    def go_on(smp, it, n):
        out = []
        for _ in range(n):
            b = torch.tensor(next(it))
            out.append(b)
            smp.update(b, loss(b))
        return out

    go_on(s, it, 1)  # batch 3 (needs update 0)
    with pytest.raises(ValueError, match=r"update of batch 1 had bad input.*losses\[0\] = inf"):
        next(it)  # batch 4 needs update 1
    late = copy.deepcopy(s.state_dict())  # update 1 reported: logged as the empty update it ran as
    tail = go_on(s, iter(s), 4)

    r = hardmix.ReplaySampler(80, **args)
    r.load_state_dict(early)
    it = iter(r)
    go_on(r, it, 1)
    with pytest.raises(ValueError, match=r"update of batch 1 had bad input.*losses\[0\] = inf"):
        next(it)
    assert all(torch.equal(x, y) for x, y in zip(go_on(r, iter(r), 4), tail))
    r = hardmix.ReplaySampler(80, **args)
    r.load_state_dict(late)
    assert all(torch.equal(x, y) for x, y in zip(go_on(r, iter(r), 4), tail))  # no error again
    assert torch.equal(r.reservoir()["index"], s.reservoir()["index"])


def test_a_restore_does_not_change_the_checkpoint(monkeypatch):
    s, it, args = bad_update_1(monkeypatch, lag=2)
    state = copy.deepcopy(s.state_dict())
    before = plain(state)
    for _ in range(2):  # the same checkpoint, twice: the same error both times
        r = hardmix.ReplaySampler(80, **args)
        r.load_state_dict(state)
        it = iter(r)
        b = torch.tensor(next(it))
        r.update(b, loss(b))
        with pytest.raises(ValueError, match=r"update of batch 1 had bad input"):
            next(it)
    assert plain(state) == before


def test_checkpoints_hold_host_copies_of_applied_updates(monkeypatch):
    """Once applied, a logged update holds its host copies, not its GPU
    tensors (stood in for by meta tensors here): any later checkpoint, in
    memory or saved, restores on the host."""
    args = dict(batch_size=8, capacity=12, replay_lag=0, seed=3, num_classes=3, class_quotas=False)
    s = hardmix.ReplaySampler(80, **args)
    deferring(s, monkeypatch, done=True, on_device=True)
    it = iter(s)
    states = []
    for g in range(6):
        b = torch.tensor(next(it))
        s.update(b, loss(b), targets=b % 3)  # applied at once (lag 0, copy done)
        states.append(s.state_dict())  # (the second and later share the first's log)
    tail = []
    for _ in range(3):
        b = torch.tensor(next(it))
        tail.append(b)
        s.update(b, loss(b), targets=b % 3)
    r = hardmix.ReplaySampler(80, **args)
    r.load_state_dict(states[-1])
    it = iter(r)
    for want in tail:
        b = torch.tensor(next(it))
        assert torch.equal(b, want)
        r.update(b, loss(b), targets=b % 3)
    assert torch.equal(r.reservoir()["index"], s.reservoir()["index"])


def test_update_changes_nothing_when_the_copy_fails_to_start(monkeypatch):
    s, it, b = started()
    deferring(s, monkeypatch)

    def failing(entry):
        raise RuntimeError("CUDA error: out of memory (pinned)")

    monkeypatch.setattr(hardmix.intake, "to_host", failing)
    before = freeze(s)
    with pytest.raises(RuntimeError, match="out of memory"):
        s.update(b, loss(b))
    assert freeze(s) == before
    monkeypatch.undo()
    s.update(b, loss(b))  # and the batch can still be updated


def test_an_error_found_by_stats_is_reported_after_a_restore_too(monkeypatch):
    s, it, args = bad_update_1(monkeypatch, lag=1, value=math.nan)
    s.stats()  # applies update 1: its error waits for the next batch
    state = copy.deepcopy(s.state_dict())
    with pytest.raises(ValueError, match=r"update of batch 1 had bad input"):
        next(it)
    r = hardmix.ReplaySampler(80, **args)
    r.load_state_dict(state)
    with pytest.raises(ValueError, match=r"update of batch 1 had bad input"):
        next(iter(r))
    assert torch.equal(torch.tensor(next(iter(r))), torch.tensor(next(iter(s))))


def test_an_error_reported_after_a_live_checkpoint_is_reported_by_its_restore(monkeypatch):
    """StatefulDataLoader's state_dict() stays live until serialised: an
    error found and reported after the call (its update logged there) must
    still be reported by the restore, which makes that batch again."""
    s, it, args = bad_update_1(monkeypatch, lag=1, value=math.nan)
    live = s.state_dict()  # logs updates 1 (not applied yet) and 2
    s.stats()  # applies update 1: bad
    with pytest.raises(ValueError, match=r"update of batch 1 had bad input"):
        next(it)
    state = copy.deepcopy(live)  # serialised after the report
    r = hardmix.ReplaySampler(80, **args)
    r.load_state_dict(state)
    with pytest.raises(ValueError, match=r"update of batch 1 had bad input"):
        next(iter(r))
    assert torch.equal(torch.tensor(next(iter(r))), torch.tensor(next(iter(s))))
    again = hardmix.ReplaySampler(80, **args)
    again.load_state_dict(copy.deepcopy(r.state_dict()))  # taken after r reported it: not again
    assert torch.equal(torch.tensor(next(iter(again))), torch.tensor(next(iter(s))))


# --- misuse named -------------------------------------------------------------


class BatchSamplerShard:
    """Named as accelerate's wrapper that hands each process a share of the batches."""

    def __init__(self, inner):
        self.inner = inner

    def __iter__(self):
        for k, b in enumerate(self.inner):
            if k % 2 == 0:
                yield b


class SkipBatchSampler(BatchSamplerShard):
    """Named as the wrapper of a resume that drops an epoch's first batches."""


@pytest.mark.parametrize("wrapper, message", [
    (BatchSamplerShard, "wrapped in a BatchSamplerShard.*leave its DataLoader out of prepare"),
    (SkipBatchSampler, "iterated by a SkipBatchSampler.*restore that and skip no batches"),
])
def test_a_framework_wrapper_that_shards_or_skips_batches_is_refused(wrapper, message):
    s = hardmix.ReplaySampler(40, batch_size=8, capacity=12)
    before = freeze(s)
    with pytest.raises(RuntimeError, match=message):
        next(iter(wrapper(s)))
    assert freeze(s) == before


def test_a_process_group_the_sampler_was_not_built_for_is_refused(monkeypatch):
    import torch.distributed as dist

    s = hardmix.ReplaySampler(40, batch_size=8, capacity=12)  # no process group yet: one process
    t = hardmix.ReplaySampler(40, batch_size=8, capacity=12, num_replicas=1, rank=0)  # one, by name
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    before = freeze(s)
    with pytest.raises(RuntimeError, match="built for one process .* now has 2 ranks.*after init_process_group"):
        iter(s)
    assert freeze(s) == before
    assert len(next(iter(t))) == 8


def test_batches_consumed_without_updates_are_told_from_a_short_lag():
    s = hardmix.ReplaySampler(40, batch_size=8, capacity=12, replay_lag=1)
    it = iter(s)
    next(it), next(it)
    with pytest.raises(RuntimeError, match=r"No update\(\) has arrived since this iteration began.*restore"):
        next(it)  # (a skipping resume)
    s = hardmix.ReplaySampler(40, batch_size=8, capacity=12, replay_lag=1)
    it = iter(s)
    b = torch.tensor(next(it))
    next(it)
    s.update(b, loss(b))
    next(it)
    with pytest.raises(RuntimeError, match=r"replay_lag \(now 1\) must be at least[^N]*$"):
        next(it)  # (updates arrive, too late for the lag)


def test_weights_after_update_says_the_order_is_wrong():
    s = hardmix.ReplaySampler(40, batch_size=8, capacity=12, replay_lag=0)
    b = torch.tensor(next(iter(s)))
    s.update(b, loss(b))
    for name in ("weights", "replayed"):
        with pytest.raises(ValueError, match=rf"{name}: this batch \(batch 0\) was already updated: {name}\(\) "
                                             rf"describes the batch about to be updated, so call it before update"):
            getattr(s, name)(b)


def test_each_call_breaks_a_compiled_graph_once():
    torch._dynamo.reset()
    s = hardmix.ReplaySampler(40, batch_size=8, capacity=12, replay_lag=0)
    it = iter(s)
    for _ in range(3):
        b = torch.tensor(next(it))
        s.update(b, loss(b))
    b = torch.tensor(next(it))

    def step(idx, x):
        losses = x * 2
        w = s.weights(idx)
        total = (losses * w).mean()
        total = total + s.replayed(idx).sum()
        s.update(idx, losses.detach())
        return total * 3

    explained = torch._dynamo.explain(step)(b, loss(b))
    assert explained.graph_break_count == 3, [str(r.reason)[:200] for r in explained.break_reasons]
    assert s.step == 4 and s._received == 4


@pytest.mark.parametrize("target", [10**12, 2**20, -7])
def test_targets_without_a_class_count_are_range_checked(target):
    """Without logits and num_classes, targets index per-class tables too
    (stats() holds a histogram): outside [0, CLASS_LIMIT) they are refused."""
    s, it, b = started(num_classes=0, class_quotas=False, balance_replay=False)
    s2 = hardmix.ReplaySampler(40, batch_size=8, capacity=12, replay_lag=0)
    b2 = torch.tensor(next(iter(s2)))
    for sampler, batch in ((s, b), (s2, b2)):
        before = freeze(sampler)
        with pytest.raises(ValueError, match=rf"targets\[0\] = {target} is out of range \[0, 1048576\).*num_classes"):
            sampler.update(batch, loss(batch), targets=torch.full((8,), target))
        assert freeze(sampler) == before
    s2.update(b2, loss(b2), targets=torch.full((8,), 2**20 - 1))  # the largest class allowed
    assert s2.stats()["class_histogram"].numel() <= 2**20


def test_a_second_iterator_ends_the_first_with_an_error():
    s = hardmix.ReplaySampler(40, batch_size=8, capacity=12, replay_lag=0)
    first = iter(s)
    b = torch.tensor(next(first))
    s.update(b, loss(b))
    second = iter(s)
    with pytest.raises(RuntimeError, match="superseded by a newer iter"):
        next(first)
    assert len(next(second)) == 8  # the newer one goes on


def test_calls_from_another_thread_are_refused():
    import threading

    s = hardmix.ReplaySampler(40, batch_size=8, capacity=12, replay_lag=0)
    it = iter(s)
    b = torch.tensor(next(it))
    before = freeze(s)
    errors = []

    def other():
        for call in (lambda: s.update(b, loss(b)), lambda: s.weights(b), lambda: s.replayed(b),
                     s.batch_to_update):
            try:
                call()
            except RuntimeError as e:
                errors.append(str(e))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 4 and all("from another thread than the one iterating" in e for e in errors), errors
    assert freeze(s) == before
    s.update(b, loss(b))  # the training thread goes on
    next(it)


def test_a_loader_with_in_order_false_is_refused():
    from torch.utils.data import DataLoader, TensorDataset

    ds = hardmix.WithIndex(TensorDataset(torch.arange(40.0)))
    s = hardmix.ReplaySampler(40, batch_size=8, capacity=12)
    with pytest.raises(RuntimeError, match="in_order=False.*pair losses with the wrong examples"):
        next(iter(DataLoader(ds, batch_sampler=s, num_workers=1, in_order=False)))
    # without workers batches cannot come out of order: accepted
    idx, _ = next(iter(DataLoader(ds, batch_sampler=s, num_workers=0, in_order=False)))
    assert torch.equal(idx, s.batch_to_update())


def _mutated(good: dict, path: str, value):
    """A deep copy of ``good`` with the field at ``path`` (dots; ``[i]`` for
    list items) set to ``value``, or removed when value is ``...``."""
    import re

    state = copy.deepcopy(good)
    keys = [int(k[1:-1]) if k.startswith("[") else k for k in re.findall(r"\[\d+\]|[^.\[\]]+", path)]
    d = state
    for k in keys[:-1]:
        d = d[k]
    if value is ...:
        del d[keys[-1]]
    else:
        d[keys[-1]] = value
    return state


SAMPLER_STATE_CASES = [
    # (path, value, message pattern): each is refused by name, nothing changes
    ("updates_start", ..., r"state field \(the state\) lacks 'updates_start'"),
    ("position.yielded", ..., r"state field position lacks 'yielded'"),
    ("position.epoch", -1, r"position.epoch = -1 is out of range"),
    ("position.epoch", 10**19, r"position.epoch = 10000000000000000000 is out of range"),
    ("position.batch", "3", r"position.batch must be an int, got str"),
    ("position.yielded", 10**12, r"inconsistent position.*reach up to"),
    ("position.cursor", [0, "x"], r"position.cursor\[1\] must be an int"),
    ("prev_totals", torch.zeros(4, dtype=torch.int64), r"prev_totals must have shape \[5\]"),
    ("prev_totals", torch.full((5,), -1), r"prev_totals holds a negative total"),
    ("replay_lag", -2, r"replay_lag = -2 is out of range"),
    ("classes", 10**12, r"classes = 1000000000000 is out of range"),
    ("updates[0].losses", torch.zeros(8, dtype=torch.int64), r"updates\[0\].losses must have dtype"),
    ("updates[0].indices", torch.tensor([0, 1, 2, 3, 4, 5, 6, 40]), r"updates\[0\].indices\[7\] = 40 is out of range"),
    ("batches[0].indices", torch.tensor([0, 1, 2, 3, 4, 5, 6, 6]), r"batches\[0\].indices holds an index twice"),
    ("updates[0].classes", torch.full((8,), 7), r"updates\[0\].classes\[0\] = 7 is out of range \[0, 3\)"),
    ("updates[0].margins", torch.zeros(7), r"updates\[0\].margins must have shape \[8\]"),
    ("updates[0]", "junk", r"updates\[0\] must be a dict, got str"),
    ("batches[0].indices", torch.arange(8, dtype=torch.int32), r"batches\[0\].indices must have dtype torch.int64"),
    ("batches[0].fresh", 9, r"batches\[0\].fresh = 9 is out of range \[0, 9\)|fresh \+ replay \+ fill"),
    ("batches[0].w", torch.full((8,), float("nan")), r"batches\[0\] holds replay weights that are negative or not"),
    ("batches[0].g", -5, r"batches\[0\].g = -5 is out of range"),
    ("fresh", torch.tensor([0, 99]), r"fresh\[1\] = 99 is out of range \[0, 40\)"),
    ("engine", None, r"engine must be a dict, got NoneType"),
]


@pytest.mark.parametrize("path, value, pattern", SAMPLER_STATE_CASES, ids=[c[0] + ":" + repr(c[1])[:20]
                                                                         for c in SAMPLER_STATE_CASES])
def test_a_corrupted_sampler_state_is_refused_by_name(path, value, pattern):
    """Fields the sampler reads itself (the engine's are tests/test_engine_state.py's)."""
    s = hardmix.ReplaySampler(40, batch_size=8, capacity=12, replay_fraction=0.25, replay_lag=2, seed=3,
                              num_classes=3)
    it = iter(s)
    for _ in range(3):
        b = torch.tensor(next(it))
        s.update(b, loss(b), logits=torch.randn(len(b), 3), targets=b % 3)
    s.state_dict()  # the log starts here: the next updates are logged
    for _ in range(2):
        b = torch.tensor(next(it))
        s.update(b, loss(b), logits=torch.randn(len(b), 3), targets=b % 3)
    next(it)
    good = copy.deepcopy(s.state_dict())
    assert good["updates"] and good["batches"]
    t = hardmix.ReplaySampler(40, batch_size=8, capacity=12, replay_fraction=0.25, replay_lag=2, seed=3,
                              num_classes=3)
    before = freeze(t)
    with pytest.raises(ValueError, match=pattern):
        t.load_state_dict(_mutated(good, path, value))
    assert freeze(t) == before
    t.load_state_dict(good)  # the genuine state still loads


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.float32,
                                   torch.bool])
def test_the_sampler_and_the_engine_take_the_same_index_dtypes(dtype):
    """Indices of every integer dtype (hardmix.inputs.INDEX_DTYPES) go through
    the sampler's update, the engine's update and its draw's exclude alike;
    other dtypes are refused by each."""
    ok = dtype in INDEX_DTYPES
    s, it, b = started()
    e = hardmix.Engine(hardmix.PolicyConfig(num_examples=40, capacity=12))
    calls = [lambda: s.update(b.to(dtype), loss(b)), lambda: e.update(b.to(dtype), loss(b)),
             lambda: e.draw(2, exclude=b.to(dtype))]
    for call in calls:
        if ok:
            call()
        else:
            with pytest.raises(TypeError, match="dtype"):
                call()
