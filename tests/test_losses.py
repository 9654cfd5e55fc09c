"""The loss helpers and what the sampler tells them: which rows are replayed
and the logits each replayed member had when it was admitted."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

import hardmix
from hardmix.losses import ace_cross_entropy, logit_replay


def test_ace_masks_absent_classes_for_fresh_rows_only():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g, requires_grad=True)
    targets = torch.tensor([0, 1, 1, 0, 3, 4])
    replayed = torch.tensor([False, False, False, False, True, True])
    out = ace_cross_entropy(logits, targets, replayed)
    want_fresh = F.cross_entropy(logits[:4, :2], targets[:4], reduction="none")  # classes 0, 1 present
    want_replay = F.cross_entropy(logits[4:], targets[4:], reduction="none")
    torch.testing.assert_close(out, torch.cat([want_fresh, want_replay]))
    out.sum().backward()
    assert torch.all(logits.grad[:4, 2:] == 0) and torch.all(logits.grad[4:] != 0)


def test_ace_without_replay_is_cross_entropy_over_the_present_classes():
    logits = torch.randn(4, 3)
    targets = torch.tensor([0, 1, 2, 2])
    torch.testing.assert_close(ace_cross_entropy(logits, targets, torch.zeros(4, dtype=torch.bool)),
                               F.cross_entropy(logits, targets, reduction="none"))


def test_logit_replay_is_the_mean_squared_difference_over_the_kept_rows():
    logits = torch.randn(5, 3, requires_grad=True)
    stored = torch.randn(5, 3)
    has = torch.tensor([False, True, False, True, False])
    got = logit_replay(logits, stored, has)
    torch.testing.assert_close(got, ((logits[has] - stored[has]) ** 2).mean())
    assert logit_replay(logits, torch.zeros(5, 0), torch.zeros(5, dtype=torch.bool)).item() == 0.0
    with pytest.raises(ValueError, match="stored must have the logits' shape"):
        logit_replay(logits, torch.zeros(5, 2), has)
    with pytest.raises(TypeError, match="has must be bool"):
        logit_replay(logits, stored, has.long())
    with pytest.raises(ValueError, match="ace_cross_entropy: want logits"):
        ace_cross_entropy(logits, torch.zeros(4, dtype=torch.int64), has)


def _loop(sampler, steps, C=4, start=0, log=None, stop=None, admitted_with=None):
    """Feeds `steps` batches with logits that depend on (index, step); records
    per batch the replayed mask, the stored logits and what they should be."""
    N = sampler.num_examples
    admitted_with = {} if admitted_with is None else admitted_with  # (index, step) -> logits passed then
    step = start
    epoch = sampler.epoch
    while step < start + steps:
        sampler.set_epoch(epoch)
        for b in sampler:
            idx = torch.tensor(b)
            rec = sampler._outstanding[0]
            mask = sampler.replayed(idx)
            stored, has = sampler.stored_logits(idx)
            members = sampler.reservoir()
            adm = dict(zip(members["index"].tolist(), members["admitted"].tolist()))
            if log is not None:
                log.append((mask.clone(), stored.clone(), has.clone(), {i: adm.get(i) for i in b}))
            assert torch.equal(mask, torch.arange(len(b)).ge(rec.fresh) & torch.arange(len(b)).lt(
                rec.fresh + rec.replay))
            assert not bool((has & ~mask).any())
            logits = torch.sin(idx[:, None] * 0.37 + step * 0.11 + torch.arange(C)[None, :]).float()
            for k in has.nonzero().squeeze(1).tolist():
                assert torch.equal(stored[k], admitted_with[(b[k], adm[b[k]])]), (step, b[k])
            for k, i in enumerate(b):
                admitted_with[(i, step)] = logits[k]
            sampler.update(idx, torch.rand(len(b)), logits=logits, targets=idx % C)
            step += 1
            if step == start + steps or step == stop:
                return step
        epoch += 1
    return step


def test_stored_logits_are_the_logits_at_admission():
    s = hardmix.ReplaySampler(120, batch_size=12, capacity=30, replay_fraction=0.5, seed=1, store_logits=True,
                              replay_lag=0)
    log = []
    _loop(s, 60, log=log)
    assert sum(int(has.sum()) for _, _, has, _ in log) > 100  # replayed rows had their logits


def test_stored_logits_resume_exactly():
    def make():
        return hardmix.ReplaySampler(120, batch_size=12, capacity=30, replay_fraction=0.5, seed=1,
                                     store_logits=True, replay_lag=0)

    full = []
    _loop(make(), 50, log=full)
    first, rest, seen = [], [], {}
    a = make()
    _loop(a, 20, log=first, admitted_with=seen)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = make()
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    _loop(b, 30, start=20, log=rest, admitted_with=seen)
    for (m1, s1, h1, _), (m2, s2, h2, _) in zip(full, first + rest):
        assert torch.equal(m1, m2) and torch.equal(s1, s2) and torch.equal(h1, h2)


def test_store_logits_needs_logits_and_one_width():
    s = hardmix.ReplaySampler(40, batch_size=8, capacity=8, store_logits=True)
    idx = torch.tensor(next(iter(s)))
    with pytest.raises(ValueError, match="store_logits needs logits"):
        s.update(idx, torch.rand(8), targets=idx % 3)
    s.update(idx, torch.rand(8), logits=torch.randn(8, 3), targets=idx % 3)
    idx = torch.tensor(next(iter(s)))
    with pytest.raises(ValueError, match="logits must have 3 columns"):
        s.update(idx, torch.rand(8), logits=torch.randn(8, 4), targets=idx % 3)
    with pytest.raises(ValueError, match="keeps no logits"):
        hardmix.ReplaySampler(40, batch_size=8, capacity=8).stored_logits(idx)
