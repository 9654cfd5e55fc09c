"""ReplaySampler: the DataLoader protocol, epochs and len(), the replay lag,
determinism across worker counts, weights, stats, and the quickstart loop."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import BatchSampler, DataLoader, TensorDataset

import hardmix
from hardmix import schedules
from hardmix.batch_record import BatchRecord
from hardmix.schedules import replay_count

from doc_blocks import named
import sampler_loop


def feed(sampler: hardmix.ReplaySampler, idx, loss_of=None, classes=None) -> None:
    """Update with a fixed loss per example (default: the index mod 7)."""
    idx = torch.as_tensor(idx, dtype=torch.int64)
    losses = (idx % 7).double() if loss_of is None else loss_of[idx]
    sampler.update(idx, losses, targets=None if classes is None else classes[idx])


def run_epochs(sampler, epochs, loss_of=None, classes=None, records=None):
    """Iterate epochs with updates; return the batches of each epoch and len() seen at its start."""
    out = []
    for e in range(epochs):
        sampler.set_epoch(e)
        n = len(sampler)
        batches = []
        for b in sampler:
            if records is not None:
                records.append(sampler._outstanding[-1].state())
            batches.append(b)
            feed(sampler, b, loss_of, classes)
        out.append((n, batches))
    return out


# --- the protocol ------------------------------------------------------------


def test_is_a_batch_sampler_with_the_attributes_libraries_read():
    s = hardmix.ReplaySampler(100, batch_size=10, capacity=20, drop_last=True)
    assert isinstance(s, BatchSampler)
    assert s.batch_size == 10 and s.drop_last is True
    assert isinstance(s.sampler, torch.utils.data.Sampler)
    assert sorted(s.sampler) == list(range(100)) and len(s.sampler) == 100
    s.sampler.set_epoch(3)
    assert s.epoch == 3


SCHEDULES = {
    "constant": lambda: 0.3,
    "ramp": lambda: schedules.LinearRamp(0.4, warmup_steps=3, ramp_steps=5),
    "cosine": lambda: schedules.Cosine(0.5, warmup_steps=2, ramp_steps=7),
    "anneal": lambda: schedules.Anneal(0.45, total_steps=25, anneal_steps=10),
    "callable": lambda: (lambda t: 0.1 * (t % 5)),
    "zero": lambda: 0.0,
}


def _passes(records: list[dict], N: int, drop_last: bool) -> list[list[int]]:
    """The fresh stream cut into passes: a pass ends where a batch's fresh part
    repeats one of its examples (or, without drop_last, when it holds N)."""
    passes: list[list[int]] = [[]]
    for r in records:
        fresh = r["indices"][: r["fresh"]].tolist()
        if set(fresh) & set(passes[-1]) or (not drop_last and len(passes[-1]) == N):
            passes.append([])
        passes[-1] += fresh
    return passes


def _check_batch(r: dict, b: list[int], s, B: int, mode: str, drop_last: bool) -> None:
    rho = s.schedule(r["g"])
    m = r["replay"] + r["fill"]
    assert len(b) == len(set(b))
    full = r["fresh"] == (B if mode == "append" else B - replay_count(rho, B))
    if full:
        assert m == replay_count(rho, B)
        assert len(b) == (B + m if mode == "append" else B)
    else:  # the short last batch of a pass: replay share at most rho
        assert m <= max(rho / (1 - rho) * r["fresh"] + 0.5, replay_count(rho, r["fresh"]))


@pytest.mark.parametrize("mode", ["mix", "append"])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_one_pass_per_epoch_by_name(schedule, drop_last, mode):
    N, B = 103, 8
    s = hardmix.ReplaySampler(N, batch_size=B, capacity=30, replay_fraction=SCHEDULES[schedule](),
                              drop_last=drop_last, replay_mode=mode, replay_lag=2, seed=1, epoch_length="pass")
    records: list[dict] = []
    epochs = run_epochs(s, 4, records=records)
    g = 0
    for n, batches in epochs:
        assert n == len(batches) > 0
        fresh = [i for r in records[g : g + n] for i in r["indices"][: r["fresh"]].tolist()]
        if drop_last:
            assert len(fresh) == len(set(fresh)) and N - len(fresh) < B
        else:
            assert sorted(fresh) == list(range(N))  # each example once per epoch
        for r, b in zip(records[g : g + n], batches):
            _check_batch(r, b, s, B, mode, drop_last)
        g += n


@pytest.mark.parametrize("mode", ["mix", "append"])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_every_epoch_has_the_same_length_and_passes_cover_the_data(schedule, drop_last, mode):
    N, B = 103, 8
    rho = SCHEDULES[schedule]()
    if callable(rho) and not isinstance(rho, schedules.Schedule):
        rho = schedules.FromCallable(rho, peak=0.4)
    s = hardmix.ReplaySampler(N, batch_size=B, capacity=30, replay_fraction=rho, drop_last=drop_last,
                              replay_mode=mode, replay_lag=2, seed=1)
    f = B if mode == "append" else B - replay_count(s.schedule.peak, B)
    K = N // f if drop_last else -(-N // f)  # one pass at the peak replay fraction
    assert len(s) == K  # before the first batch
    records: list[dict] = []
    epochs = run_epochs(s, 5, records=records)
    assert [(n, len(batches)) for n, batches in epochs] == [(K, K)] * 5
    for r, b in zip(records, [b for _, batches in epochs for b in batches]):
        _check_batch(r, b, s, B, mode, drop_last)
    passes = _passes(records, N, drop_last)
    for p in passes[:-1]:  # every finished pass: each example once (drop_last: but a tail shorter than B)
        assert len(p) == len(set(p)) and set(p) <= set(range(N))
        assert len(p) == N if not drop_last else N - len(p) < B
    assert len(passes[-1]) == len(set(passes[-1]))


def test_an_epoch_holds_one_pass_at_the_peak_and_passes_run_ahead_in_warm_up():
    N, B = 64, 8
    s = hardmix.ReplaySampler(N, batch_size=B, capacity=16, replay_fraction=0.5, warmup_steps=4, replay_lag=0)
    assert len(s) == 16  # 64 fresh, 4 per batch at rho 0.5
    records: list[dict] = []
    run_epochs(s, 2, records=records)
    fresh = [r["fresh"] for r in records]
    assert fresh[:4] == [8] * 4 and fresh[4:] == [4] * 28
    # 4 * 8 + 12 * 4 = 80 fresh in epoch 0: a pass and 16 of the next
    passes = _passes(records, N, False)
    assert [len(p) for p in passes] == [64, 64, 16]
    assert all(sorted(p) == list(range(N)) for p in passes[:2])


@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 60), B=st.integers(1, 17), rho=st.floats(0, 0.95), mode=st.sampled_from(["mix", "append"]),
       drop_last=st.booleans(), warmup=st.integers(0, 6), lag=st.integers(0, 3),
       length=st.sampled_from(["pass", "auto", 3]))
def test_len_and_coverage_hypothesis(N, B, rho, mode, drop_last, warmup, lag, length):
    s = hardmix.ReplaySampler(N, batch_size=B, capacity=max(1, N // 3), replay_fraction=rho, warmup_steps=warmup,
                              drop_last=drop_last, replay_mode=mode, replay_lag=lag, seed=N, epoch_length=length)
    records: list[dict] = []
    g = 0
    lens = []
    for n, batches in run_epochs(s, 3, records=records):
        assert n == len(batches)
        lens.append(n)
        fresh = [i for r in records[g : g + n] for i in r["indices"][: r["fresh"]].tolist()]
        if length == "pass":
            assert len(fresh) == len(set(fresh)) and set(fresh) <= set(range(N))
            assert len(fresh) == N or (drop_last and N - len(fresh) < B)
        for b in batches:
            assert 1 <= len(b) == len(set(b)) and all(0 <= i < N for i in b)
        g += n
    if length != "pass":
        assert len(set(lens)) == 1 and (length == "auto" or lens[0] == length)
        if not drop_last:  # the stream: whole passes, each a permutation
            passes = _passes(records, N, False)
            assert all(sorted(p) == list(range(N)) for p in passes[:-1])


def test_len_is_fixed_within_an_epoch_and_iterating_on_starts_the_next():
    s = hardmix.ReplaySampler(50, batch_size=8, capacity=10, replay_fraction=0.25, replay_lag=0)
    n0 = len(s)
    it = iter(s)
    for _ in range(3):
        feed(s, next(it))
        assert len(s) == n0
    for b in it:
        feed(s, b)
    assert s.epoch == 0
    second = next(iter(s))  # no set_epoch: the next epoch starts
    assert s.epoch == 1 and second


def test_sampler_defaults_and_overrides():
    s = hardmix.ReplaySampler(100, batch_size=10, capacity=20)
    c = s.config
    assert (c.alpha, c.lam, c.gamma, c.max_wrong, c.quarantine_steps) == (0.0, 0.0, 0.0, 2, 2**31 - 1)
    assert (c.class_quotas, c.balance_replay, s.replay_lag) == (False, False, None)  # until the first update
    assert s.schedule(0) == 0.5
    assert c.reweight_every == 1 and hardmix.ReplaySampler(4000, batch_size=10, capacity=4000).config.reweight_every == 100
    c = hardmix.ReplaySampler(100, batch_size=10, capacity=20, num_classes=4).config
    assert c.class_quotas and c.balance_replay and c.num_classes == 4
    c = hardmix.ReplaySampler(100, batch_size=10, capacity=20, num_classes=4, class_quotas=False,
                              max_wrong=0).config
    assert (c.class_quotas, c.balance_replay, c.max_wrong, c.num_classes) == (False, False, 0, 4)


def _first_update(s, logits=True, C=7):
    idx = torch.tensor(next(iter(s)))
    y = idx % C
    s.update(idx, torch.rand(len(idx)), logits=torch.randn(len(idx), C) if logits else None, targets=y)


def test_class_balance_follows_the_logits_width_at_the_first_update():
    s = hardmix.ReplaySampler(100, batch_size=10, capacity=20)
    _first_update(s)
    assert (s.config.class_quotas, s.config.balance_replay, s.config.num_classes) == (True, True, 7)
    assert s.engine.classes.shape[0] == 7 and s.stats()["class_histogram"].numel() == 7
    s = hardmix.ReplaySampler(100, batch_size=10, capacity=20)
    _first_update(s, logits=False)  # targets alone: the class count is unknown, balance stays off
    assert not s.config.class_quotas and not s.config.balance_replay
    s = hardmix.ReplaySampler(100, batch_size=10, capacity=20, balance_replay=False)
    _first_update(s)
    assert s.config.class_quotas and not s.config.balance_replay
    s = hardmix.ReplaySampler(100, batch_size=10, capacity=20, class_quotas=False)
    _first_update(s)
    assert not s.config.class_quotas and not s.config.balance_replay


def test_class_balance_is_decided_by_the_first_update_after_dropped_batches():
    """Batches yielded and dropped by a new epoch before any update count as
    updates with no examples; the first real update still decides the class
    count, and the rebuilt engine has applied as many empty updates."""
    s = hardmix.ReplaySampler(200, batch_size=10, capacity=40, replay_fraction=0.3, seed=0, store_logits=True,
                              replay_lag=3)
    s.set_epoch(0)
    it = iter(s)
    next(it), next(it), next(it)  # a loop that breaks before training: 3 updates with no examples
    s.set_epoch(1)
    it = iter(s)
    queue = [next(it), next(it)]  # the second applies the first empty update
    assert s.engine.step == 1 and not s.config.class_quotas
    for _ in range(6):
        idx = torch.tensor(queue.pop(0))
        s.update(idx, torch.rand(len(idx)), logits=torch.randn(len(idx), 4), targets=idx % 4)
        queue.append(next(it))
    assert (s.config.class_quotas, s.config.balance_replay, s.config.num_classes) == (True, True, 4)
    assert s.engine.step == s.step - 4 and s.stored_logits(torch.tensor(queue[0]))[0].shape[1] == 4


def test_balance_replay_may_be_asked_for_before_the_class_count_is_known():
    s = hardmix.ReplaySampler(100, batch_size=10, capacity=20, balance_replay=True)
    assert not s.config.balance_replay
    _first_update(s)
    assert s.config.class_quotas and s.config.balance_replay
    s = hardmix.ReplaySampler(100, batch_size=10, capacity=20, balance_replay=True)
    _first_update(s, logits=False)
    assert not s.config.class_quotas and not s.config.balance_replay


def test_a_lag_measured_in_a_finished_epoch_is_reported():
    s = hardmix.ReplaySampler(200, batch_size=10, capacity=20, replay_fraction=0.2, seed=0)
    s.set_fresh(torch.arange(16))  # a first task of two batches, both fetched before the first update
    s.set_epoch(0)
    batches = list(s)
    with pytest.warns(UserWarning, match="replay_lag measured as 1 in an epoch of 2 batches"):
        s.update(torch.tensor(batches[0]), torch.rand(len(batches[0])))
    assert s.replay_lag == 1


@pytest.mark.parametrize("ahead", [0, 1, 4])
def test_replay_lag_is_measured_at_the_first_update(ahead):
    """By default the lag is the batches yielded before the first update, minus
    one: a loader that fetches `ahead` batches beyond the one it trains on."""
    s = hardmix.ReplaySampler(200, batch_size=10, capacity=20, replay_fraction=0.3)
    it = iter(s)
    queue = [next(it) for _ in range(ahead + 1)]
    assert s.replay_lag is None
    for _ in range(12):
        idx = torch.tensor(queue.pop(0))
        s.update(idx, torch.rand(len(idx)))
        assert s.replay_lag == ahead
        queue.append(next(it))  # never raises: the lag covers the loader's depth
    fixed = hardmix.ReplaySampler(200, batch_size=10, capacity=20, replay_fraction=0.3, replay_lag=ahead)
    again = []
    for b in fixed:
        again.append(b)
        if len(again) > ahead:
            fixed.update(torch.tensor(again[-ahead - 1]), torch.rand(len(again[-ahead - 1])))
        if len(again) == 3:
            break
    assert fixed.replay_lag == ahead


def test_fresh_order_is_a_seeded_permutation_per_epoch():
    def order(seed, epoch):
        s = hardmix.ReplaySampler(40, batch_size=40, capacity=5, replay_fraction=0.0, seed=seed)
        s.set_epoch(epoch)
        return next(iter(s))

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert sorted(order(0, 1)) == list(range(40))
    s = hardmix.ReplaySampler(40, batch_size=40, capacity=5, replay_fraction=0.0, shuffle=False)
    assert next(iter(s)) == list(range(40))


def test_never_touches_the_global_rng():
    state = torch.get_rng_state()
    s = hardmix.ReplaySampler(200, batch_size=16, capacity=40, replay_fraction=0.3, replay_lag=0)
    run_epochs(s, 2)
    assert torch.equal(state, torch.get_rng_state())


# --- the replay lag ------------------------------------------------------------


@pytest.mark.parametrize("lag", [0, 1, 5])
def test_replay_of_batch_g_comes_from_the_reservoir_after_g_minus_lag_updates(lag):
    """Against an Engine fed the same updates: batch g's replay part is
    engine.draw(m, exclude=fresh) with the engine at update g - L."""
    N, B = 300, 20
    s = hardmix.ReplaySampler(N, batch_size=B, capacity=40, replay_fraction=0.3, replay_lag=lag, seed=5, lam=0.02)
    eng = hardmix.Engine(s.config)
    loss_of = torch.rand(N, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    history = []
    checked = 0
    for e in range(3):
        s.set_epoch(e)
        for b in s:
            r = s._outstanding[-1].state()
            g = r["g"]
            while eng.step < max(0, g - lag):
                eng.update(**history[eng.step])
            fresh = r["indices"][: r["fresh"]]
            m = replay_count(s.schedule(g), B) if r["fresh"] == B - replay_count(s.schedule(g), B) else \
                r["replay"] + r["fill"]
            want = eng.draw(m, exclude=fresh)
            assert torch.equal(r["indices"][r["fresh"] : r["fresh"] + r["replay"]], want)
            checked += int(want.numel() > 0)
            idx = torch.tensor(b)
            replayed = torch.zeros(len(b), dtype=torch.bool)
            replayed[r["fresh"] : r["fresh"] + r["replay"]] = True
            history.append(dict(indices=idx, losses=loss_of[idx], replayed=replayed))
            feed(s, b, loss_of)
    assert checked > 20


def test_a_missing_update_is_a_clear_error():
    s = hardmix.ReplaySampler(100, batch_size=10, capacity=20, replay_lag=2)
    it = iter(s)
    next(it), next(it), next(it)  # batches 0..2 need no update
    with pytest.raises(RuntimeError, match=r"batch 3 .*update of batch 0.*replay_lag \(now 2\)"):
        next(it)


def test_too_small_a_lag_for_the_workers_says_so():
    data = hardmix.WithIndex(TensorDataset(torch.arange(200.0)))
    s = hardmix.ReplaySampler(200, batch_size=10, capacity=20, replay_lag=1)
    loader = DataLoader(data, batch_sampler=s, num_workers=2)  # 4 batches in flight
    with pytest.raises(RuntimeError, match="num_workers \\* prefetch_factor"):
        for idx, x in loader:
            s.update(idx, x)


def _batches_and_reservoir(workers: int, loader: str = "plain", epochs: int = 3):
    res = sampler_loop.run(epochs, workers, loader)
    return res["batches"], res["members"]["index"]


@pytest.mark.parametrize("workers", [2])
def test_same_batches_whatever_the_worker_count(workers):
    b0, m0 = _batches_and_reservoir(0)
    b2, m2 = _batches_and_reservoir(workers)
    assert b0 == b2 and torch.equal(m0, m2)
    other = sampler_loop.run(3, 0, sampler_kw={"seed": 8})["batches"]
    assert other != b0


def _trace(background: bool, lag, workers: int = 0, resume_at: int | None = None) -> dict:
    """Three epochs of a loop with weights, logits and a rewind (a loop that
    breaks with batches in flight), optionally restored from a state_dict
    into a new sampler at batch ``resume_at``: every batch, weight vector
    and stats, and the final reservoir."""
    data = hardmix.WithIndex(TensorDataset(torch.arange(240.0)))

    def make():
        return hardmix.ReplaySampler(240, batch_size=12, capacity=30, replay_fraction=0.5, warmup_steps=3, seed=4,
                                     replay_lag=lag, lam=0.05, gamma=1.0, max_wrong=3, background=background)

    s, out, k = make(), {"batches": [], "weights": [], "stats": []}, 0
    for epoch in range(3):
        s.set_epoch(epoch)
        for rewind in (True, False):
            for idx, x in DataLoader(data, batch_sampler=s, num_workers=workers):
                logits = torch.stack([x.sin(), x.cos(), (x * 0.1).tanh()], 1) * (1 + k % 5)
                y = (idx * 7 + k) % 3
                losses = torch.nn.functional.cross_entropy(logits, y, reduction="none")
                out["batches"].append(idx.tolist())
                out["weights"].append(s.weights(idx))
                s.update(idx, losses, logits=logits, targets=y)
                out["stats"].append({k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in s.stats().items()})
                k += 1
                if k == resume_at:
                    state = s.state_dict()
                    s = make()
                    s.load_state_dict(state)
                    break
                if rewind and k % 7 == 0:
                    break
    out["members"] = s.reservoir()
    return out


@pytest.fixture
def always_hand_over(monkeypatch):
    """Every possible hand-over made, whatever the timing (it is adaptive)."""
    monkeypatch.setattr(hardmix.ReplaySampler, "_handover_pays", lambda self: True)


@pytest.mark.parametrize("lag,workers,resume_at,hand_over", [(0, 0, None, "always"), (1, 0, None, "always"),
                                                             (3, 0, 10, "always"), (None, 2, 17, "always"),
                                                             (1, 0, 10, "at random")])
def test_background_work_gives_the_same_run(lag, workers, resume_at, hand_over, monkeypatch):
    """background=True (the engine's work on a worker thread between the
    sampler's calls) and background=False give the same batches, weights,
    stats and reservoir, bit for bit, with rewinds, DataLoader workers and a
    restore; also when hand-overs come and go (they are adaptive)."""
    import random
    import threading

    inline = _trace(False, lag, workers, resume_at)
    made = []
    make = hardmix.ReplaySampler._make_batch

    def counted(self):
        made.append(threading.current_thread().name)
        return make(self)

    weighed = []
    weigh = BatchRecord.importance_weights

    def weighed_on(self, *args, **kwargs):
        weighed.append(threading.current_thread().name)
        return weigh(self, *args, **kwargs)

    coin = random.Random(5)
    monkeypatch.setattr(hardmix.ReplaySampler, "_handover_pays",
                        (lambda self: True) if hand_over == "always" else (lambda self: coin.random() < 0.5))
    monkeypatch.setattr(hardmix.ReplaySampler, "_make_batch", counted)
    monkeypatch.setattr(BatchRecord, "importance_weights", weighed_on)
    piped = _trace(True, lag, workers, resume_at)
    on_worker = made.count("hardmix-worker")
    # (weights() is called for every batch: the worker computes them with the batches it draws)
    assert weighed.count("hardmix-worker") > (len(made) // 2 if hand_over == "always" else 0)
    if hand_over == "always":
        assert on_worker > len(made) // 2  # (most batches were made on the worker)
    else:
        assert len(made) // 8 < on_worker < len(made) - len(made) // 8  # (some on each thread)
    assert inline["batches"] == piped["batches"] and len(inline["batches"]) > 40
    assert all(torch.equal(a, b) for a, b in zip(inline["weights"], piped["weights"]))
    assert inline["stats"] == piped["stats"]
    assert all(torch.equal(inline["members"][k], piped["members"][k]) for k in inline["members"])
    assert any(float(w.max()) != 1.0 for w in piped["weights"])  # (replay weights were in play)


def test_a_batch_made_ahead_is_yielded_as_the_callers_own_list(always_hand_over):
    """The worker makes the list of the batch it prepares; next() gives it
    away once: changing it changes nothing in the sampler, and the batch
    yielded again after a rewind is an equal, new list."""
    s = hardmix.ReplaySampler(200, batch_size=10, capacity=30, replay_fraction=0.3, replay_lag=1, seed=2)
    it = iter(s)
    for _ in range(6):
        feed(s, next(it))
    s._worker.wait()
    assert s._prepared is not None and s._prepared[1].listed is not None  # (made on the worker)
    b = next(it)
    s._worker.wait()
    orig = list(b)
    assert s._outstanding[-1].listed is None and b == s._outstanding[-1].indices.tolist()
    b[0] = -1
    b.append(0)
    assert s.batch_to_update().tolist() == orig
    again = next(iter(s))  # (a new iterator rewinds to the batch not updated)
    assert again == orig and again is not b


def test_hand_over_stops_while_it_only_makes_the_next_call_wait():
    """The worker gets the engine's work only while the last hand-over did not
    make the training thread wait more than half the job's CPU time; it is
    tried again every 64 updates."""
    s = hardmix.ReplaySampler(1000, batch_size=10, capacity=20, replay_fraction=0.3, replay_lag=1, seed=1)
    it = iter(s)
    while s._received % 64 != 63:
        feed(s, next(it))
    w = s._worker
    w.wait()
    w.job_seconds, w.waited_seconds = 1e-3, 6e-4  # (as if the caller waited 0.6 ms for a 1 ms job)
    assert not s._handover_pays() and not s._kick()
    w.waited_seconds = 4e-4
    assert s._handover_pays()
    w.waited_seconds = 6e-4
    feed(s, next(it))  # the 64th update: tried again whatever the last wait
    w.wait()
    assert s._received % 64 == 0
    w.job_seconds, w.waited_seconds = 1e-3, 6e-4
    assert s._handover_pays()


@pytest.mark.parametrize("on_faster", [True, False])
def test_the_step_clock_keeps_the_faster_way(on_faster):
    """StepClock: hand-overs on until the first probe; in a probe, blocks of
    BLOCK steps alternate on and off; after it, the way whose steps had the
    lower median is kept until the next probe, PERIOD steps later; a paused
    step is not timed."""
    import random

    from hardmix import handover as H

    t = [0.0]
    clock = H.StepClock(now=lambda: t[0])
    rng = random.Random(3)
    ways, probing = [], []
    for step in range(H.FIRST + H.PERIOD + H.BLOCK + 1):  # (step 0 ends at the first tick: not timed)
        way = clock.hand_over()
        ways.append(way)
        probing.append(clock.probing())
        t[0] += (1.0 if way == on_faster else 1.1) + rng.uniform(-0.04, 0.04)  # as long as its way makes it
        if rng.random() < 0.05:
            t[0] += 50.0  # (an evaluation or a checkpoint between steps: outliers the medians ignore)
        clock.tick()
    end = H.FIRST + H.BLOCK * H.BLOCKS
    assert all(ways[: H.FIRST]) and not any(probing[: H.FIRST])  # (on before the first probe)
    assert all(probing[H.FIRST : end]) and not any(probing[end : H.FIRST + H.PERIOD])
    assert ways[H.FIRST : end] == [(k // H.BLOCK) % 2 == 0 for k in range(end - H.FIRST)]
    assert all(w == on_faster for w in ways[end : H.FIRST + H.PERIOD])
    assert ways[H.FIRST + H.PERIOD] and not ways[H.FIRST + H.PERIOD + H.BLOCK]  # the next probe
    assert clock.choice == on_faster

    seen = []
    clock = H.StepClock(now=lambda: t[0])
    for step in range(H.FIRST + H.BLOCK + 3):
        t[0] += 1.0
        if step == H.FIRST + 1:
            clock.pause()  # the step that ends at the next tick: not timed
            t[0] += 100.0
        clock.tick()
        seen.append(list(clock._times[True]))
    assert seen[-1] == [1.0] * (H.BLOCK - 2)  # (the block's first step and the paused one left out)
    assert copy.deepcopy(clock)._last is None and clock._last is not None


def test_hand_overs_follow_the_step_clock(monkeypatch):
    """The sampler times each step for its clock, step by step as it ran, and
    hands work over as the clock says: in a probe's on-blocks whatever the
    last wait was, not at all once steps without hand-overs were found faster."""
    from hardmix import handover as H
    from hardmix.bench import batches_forever

    s = hardmix.ReplaySampler(1000, batch_size=10, capacity=20, replay_fraction=0.3, replay_lag=1, seed=1)
    t = [0.0]
    clock = s._clock = H.StepClock(now=lambda: t[0])
    submitted, timed = [], {True: [], False: []}
    submit, tick = s._worker.submit, clock.tick

    def counted(job):
        submitted.append((clock._ticks, clock.hand_over()))
        return submit(job)

    def watched():  # (what this tick timed: a decision starts new lists, the old ones keep the last)
        lists = dict(clock._times)
        sizes = {way: len(v) for way, v in lists.items()}
        tick()
        for way, v in lists.items():
            timed[way] += v[sizes[way]:]

    monkeypatch.setattr(s._worker, "submit", counted)
    monkeypatch.setattr(clock, "tick", watched)
    it = batches_forever(s)
    end = H.FIRST + H.BLOCK * H.BLOCKS
    last_way = True
    for _ in range(end + 40):
        idx = next(it)
        way = clock.hand_over()
        t[0] += (2.0 if way else 1.0) + (3.0 if way != last_way else 0.0)  # longer with hand-overs; a switch: more
        last_way = way
        feed(s, idx)
        s._worker.wait()
        s._worker.job_seconds, s._worker.waited_seconds = 1e-3, 1e-3  # (the wait rule alone would refuse)
    assert clock.choice is False
    assert set(timed[True]) == {2.0} and set(timed[False]) == {1.0}  # each step for its way, no switch timed
    assert len(timed[True]) == len(timed[False]) == (H.BLOCK - 1) * H.BLOCKS // 2  # (each block's first: not)
    in_probe = [n for n, _ in submitted if H.FIRST <= n < end]
    on_steps = [n for n in range(H.FIRST, end) if (n - H.FIRST) // H.BLOCK % 2 == 0]
    assert set(on_steps) <= set(in_probe) <= set(on_steps)  # (every on-block step, no off-block step)
    assert all(way for _, way in submitted) and not [n for n, _ in submitted if n >= end]


@pytest.mark.parametrize("background", [False, True])
def test_an_error_found_in_an_applied_update_reaches_the_next_batch(background, always_hand_over):
    """Bad input found when an update was applied (here: restored with the
    state) is raised by the next batch whether or not the worker applied it
    and would have drawn that batch."""
    def make():
        return hardmix.ReplaySampler(100, batch_size=10, capacity=20, replay_fraction=0.3, replay_lag=1, seed=1,
                                     background=background)

    s = make()
    it = iter(s)
    for _ in range(3):
        feed(s, next(it))
    held = next(it)  # (saved while the loop holds a batch: its update comes after the restore)
    state = s.state_dict()
    state["errors"] = ["boom"]
    s = make()
    s.load_state_dict(state)
    feed(s, held)  # (the worker may now apply updates and draw the next batch)
    with pytest.raises(ValueError, match="boom"):
        next(iter(s))


def test_copies_go_on_alike_and_background_threads_end_with_their_samplers(always_hand_over):
    """pickle and deepcopy take the state as the next call sees it (after the
    background work), copies go on alike, and no worker thread outlives its
    sampler."""
    import gc
    import pickle
    import threading

    def workers():
        return [t for t in threading.enumerate() if t.name == "hardmix-worker"]

    before = set(workers())

    def run():
        s = hardmix.ReplaySampler(100, batch_size=10, capacity=20, replay_fraction=0.3, replay_lag=2, seed=1)
        it = iter(s)
        for _ in range(5):
            feed(s, next(it))  # (the work after each call runs in the background)
        assert set(workers()) - before
        copies = [s, copy.deepcopy(s), pickle.loads(pickle.dumps(s))]
        return [run_epochs(c, 2) for c in copies], set(workers()) - before

    (first, *others), mine = run()
    assert all(o == first for o in others) and len(first[0][1]) > 5
    gc.collect()
    for t in mine:  # (this test's threads: the samplers and copies are gone)
        t.join(timeout=10)
        assert not t.is_alive()


_BUSY_SAMPLER = """
import gc, sys, threading, torch, hardmix
hardmix.ReplaySampler._handover_pays = lambda self: True  # (hand every job over)


def busy(N, B, R):
    \"\"\"A sampler after 5 steps, the next batch's work handed to its thread.\"\"\"
    s = hardmix.ReplaySampler(N, batch_size=B, capacity=R, replay_fraction=0.5, seed=0, replay_lag=1)
    it = iter(s)
    held = torch.tensor(next(it))
    for _ in range(5):
        s.update(held, torch.rand(len(held)))
        held = torch.tensor(next(it))
    return s
"""


def _run_script(code: str, *args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", _BUSY_SAMPLER + code, *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("end", ["returns", "raises", "closed first"])
def test_a_script_may_end_while_the_background_thread_is_in_an_op(end):
    """A script that ends right after a batch, while the next batch's work
    still runs in an op on the sampler's thread, exits as it would without
    the sampler: the thread is joined at exit (a daemon thread leaving an op
    as the interpreter ends would abort the process). Also when the script
    ends by an exception, or when the sampler's own finalizer closed the
    thread first (it does not wait for the job)."""
    p = _run_script("""
s = busy(200_000, 4096, 65536)
print("in flight", s._worker.busy, flush=True)
if sys.argv[1] == "raises":
    raise SystemExit(3)
if sys.argv[1] == "closed first":
    s._finalizer()
""", end)
    assert p.returncode == (3 if end == "raises" else 0) and "terminate" not in p.stderr, p.stderr
    assert "in flight True" in p.stdout  # (the job was still running as the script ended)


def test_a_sampler_collected_under_the_threads_lock_does_not_wait_for_its_thread():
    """The cyclic garbage collector may free a sampler on any thread, also
    one that holds the threading module's lock of running threads (as
    threading.enumerate() does): the sampler's thread is then closed without
    waiting for it to end, since ending needs that lock."""
    import threading

    if not hasattr(threading, "_active_limbo_lock"):  # pragma: no cover - another Python
        pytest.skip("this Python's threading has no _active_limbo_lock")
    p = _run_script("""
def thread():
    s = busy(1000, 10, 50)
    s._worker.wait()
    return s._worker._thread  # (the sampler, in a reference cycle, waits for the collector)


t = thread()
with threading._active_limbo_lock:
    gc.collect()
t.join(timeout=60)
print("ended", not t.is_alive(), flush=True)
""")
    assert p.returncode == 0 and "ended True" in p.stdout, p.stderr


def test_no_background_thread_runs_when_iter_returns(always_hand_over):
    """A DataLoader forks its workers right after iter() of the sampler: the
    sampler's thread has ended by then (the next batch starts it again)."""
    s = hardmix.ReplaySampler(100, batch_size=10, capacity=20, replay_fraction=0.3, replay_lag=2, seed=1)
    it = iter(s)
    for _ in range(4):
        feed(s, next(it))
    thread = s._worker._thread
    assert thread.is_alive()
    it = iter(s)
    assert not thread.is_alive()
    feed(s, next(it))
    feed(s, next(it))
    assert s._worker._thread.is_alive()


def test_breaking_out_with_batches_in_flight_yields_them_again():
    """A loop that breaks while workers hold prefetched batches sees, on the
    next iter() of the epoch, exactly what num_workers=0 would have yielded."""

    def run(workers):
        data = hardmix.WithIndex(TensorDataset(torch.arange(300.0)))
        s = hardmix.ReplaySampler(300, batch_size=10, capacity=30, replay_fraction=0.3, replay_lag=4, seed=2)
        loader = DataLoader(data, batch_sampler=s, num_workers=workers)
        seen = []
        for round_ in range(3):
            for k, (idx, x) in enumerate(loader):
                s.update(idx, x.double().sin())
                seen.append(idx.tolist())
                if k == 4:
                    break
        return seen

    assert run(0) == run(2)


def test_batch_to_update_replaces_with_index_for_unwrapped_datasets():
    """A dataset that cannot be wrapped: the loop asks the sampler for the
    indices of the batch it holds; with 2 workers and prefetching the batches
    equal those of the WithIndex loop."""

    def run(wrapped: bool):
        ds = TensorDataset(torch.arange(300.0))
        s = hardmix.ReplaySampler(300, batch_size=10, capacity=30, replay_fraction=0.3, replay_lag=4, seed=2)
        loader = DataLoader(hardmix.WithIndex(ds) if wrapped else ds, batch_sampler=s, num_workers=2)
        seen = []
        for e in range(2):
            s.set_epoch(e)
            for batch in loader:
                if wrapped:
                    idx, x = batch
                else:
                    (x,), idx = batch, s.batch_to_update()
                    assert torch.equal(x.long(), idx)  # the items are their own indices here
                s.update(idx, x.double().cos())
                seen.append(idx.tolist())
        with pytest.raises(ValueError, match="no batch is waiting"):
            s.batch_to_update()
        return seen

    assert run(False) == run(True)


def test_a_new_epoch_drops_batches_never_updated_and_keeps_their_numbers():
    s = hardmix.ReplaySampler(100, batch_size=10, capacity=20, replay_fraction=0.3, replay_lag=1)
    it = iter(s)
    for _ in range(3):
        feed(s, next(it))
    next(it), next(it)  # batches 3 and 4 in flight, never updated
    iter(s)  # a new iteration takes them back to yield again ...
    s.set_epoch(1)  # ... but a new epoch drops them
    assert s.step == 5 and not s._again and not s._outstanding
    for _ in range(4):
        feed(s, next(iter(s)))  # draws from the engine at update g - 1: no gap, no overlap
    assert s.step == 9 and s.engine.step == 8 and s.stats()["updates_pending"] == 1


# --- weights -------------------------------------------------------------------


def _weighted_and_plain_means(alpha: float, epochs: int = 30):
    """Fixed per-example losses: 20% of examples are hard (high loss) and the
    reservoir (capacity 10%) keeps them, so replay over-represents them.
    Returns per-epoch means of v = [hard] over batches, weighted and plain,
    and the dataset mean of v."""
    N, B = 2000, 50
    gen = torch.Generator().manual_seed(3)
    hard = torch.rand(N, generator=gen) < 0.2
    v = hard.double()
    loss_of = torch.where(hard, 2.0 + torch.rand(N, generator=gen), 0.05 * torch.rand(N, generator=gen)).double()
    s = hardmix.ReplaySampler(N, batch_size=B, capacity=200, replay_fraction=0.4, warmup_steps=40, seed=11,
                              replay_lag=0, alpha=alpha, gamma=1.0)
    plain, weighted = [], []
    for e in range(epochs):
        s.set_epoch(e)
        pe, we = [], []
        for b in s:
            idx = torch.tensor(b)
            w = s.weights(idx).double()
            pe.append(float(v[idx].mean()))
            we.append(float((w * v[idx]).mean()))
            feed(s, b, loss_of)
        if e >= 2:  # replay in force
            plain.append(sum(pe) / len(pe))
            weighted.append(sum(we) / len(we))
    return torch.tensor(weighted), torch.tensor(plain), float(v.mean())


def test_weights_make_the_weighted_mean_match_the_data_mean():
    """A settled reservoir (alpha = 50: the hardest examples stay members):
    the weighted batch mean of v lands within 0.01 (5%) of its dataset mean,
    the unweighted one is off by more than 0.2. The tolerance is not a few
    standard errors (0.0004): the replay inclusion probabilities are a Poisson
    approximation of successive sampling's; measured: 0.1979 for 0.2020."""
    w, p, mu = _weighted_and_plain_means(alpha=50.0)
    assert float(p.mean()) - mu > 0.2  # replay over-represents the hard examples
    assert abs(float(w.mean()) - mu) < 0.01, (float(w.mean()), mu)


def test_weights_with_a_churning_reservoir_remove_most_of_the_bias():
    """alpha = 1: members come and go (an example is most often admitted right
    after its fresh appearance, which weights taken per batch cannot foresee).
    Measured: dataset mean 0.202, unweighted 0.521, weighted 0.198 (0.231 while
    admission noise was drawn anew at each appearance). What must hold: the
    weighted bias is under a seventh of the unweighted one."""
    w, p, mu = _weighted_and_plain_means(alpha=1.0)
    assert abs(float(w.mean()) - mu) < (float(p.mean()) - mu) / 7


def test_weights_before_replay_starts_are_one_and_fill_ins_zero():
    s = hardmix.ReplaySampler(100, batch_size=10, capacity=20, replay_fraction=0.3, warmup_steps=2, replay_lag=0)
    it = iter(s)
    b = next(it)
    assert torch.equal(s.weights(torch.tensor(b)), torch.ones(10))
    feed(s, b)
    b = next(it)
    feed(s, b)
    b = next(it)  # replay starts: 3 of 10, the reservoir holds 20 non-zero-loss members
    w = s.weights(torch.tensor(b))
    assert w.shape == (10,) and bool((w > 0).all())
    s2 = hardmix.ReplaySampler(100, batch_size=10, capacity=20, replay_fraction=0.3, replay_lag=0)
    b = next(iter(s2))  # reservoir empty: the replay share is filled with fresh examples, weight 0
    r = s2._outstanding[-1].state()
    assert r["fill"] == 3 and r["replay"] == 0
    assert torch.equal(s2.weights(torch.tensor(b))[7:], torch.zeros(3))


# --- stats, reservoir ------------------------------------------------------------


def test_stats_and_reservoir_describe_the_engine():
    N = 400
    classes = torch.arange(N) % 4
    s = hardmix.ReplaySampler(N, batch_size=20, capacity=40, replay_fraction=0.25, replay_lag=3, class_quotas=True,
                              num_classes=4, graduation=0.5, nonfinite="skip")
    loss_of = (torch.arange(N) % 9).double()
    loss_of[::37] = float("nan")
    before = s.engine.totals()
    for e in range(2):
        s.set_epoch(e)
        for b in s:
            prev = s.engine.totals()
            feed(s, b, loss_of, classes)
            st_ = s.stats()
            now = s.engine.totals()
            if now != prev:
                assert st_["admitted"] == st_["total_admitted"] - prev["admitted"]
    res = s.reservoir()
    st_ = s.stats()
    assert st_["size"] == res["index"].numel() == 40
    assert torch.equal(st_["class_histogram"], torch.bincount(res["cls"], minlength=4))
    assert torch.equal(res["cls"], classes[res["index"]])
    assert bool((res["priority"] >= 0.5).all())  # graduation: learned examples left
    assert st_["nonfinite"] == int(loss_of.isnan().sum()) * 2 - before["nonfinite"]
    assert st_["updates_pending"] == 3 and st_["updates_applied"] == st_["step"] - 3
    assert 0 <= st_["mean_age"] <= st_["updates_applied"]
    assert st_["replay_fraction"] == 0.25
    light = s.stats(full=False)
    assert "class_histogram" not in light and {k: v for k, v in st_.items() if k in light} == light


@pytest.mark.parametrize("quotas", [True, False])
def test_full_stats_count_the_members_alone(quotas):
    """stats()'s class histogram and mean age are those of the members
    reservoir() lists, also while slots are free (learned examples leave by
    graduation; free slots keep stale columns)."""
    N = 300
    classes = torch.arange(N) % 3
    s = hardmix.ReplaySampler(N, batch_size=20, capacity=60, replay_fraction=0.25, replay_lag=1, class_quotas=quotas,
                              num_classes=3, graduation=0.5, seed=4)
    loss_of = torch.rand(N, generator=torch.Generator().manual_seed(1)) * 0.6
    partial = 0
    for e in range(3):
        s.set_epoch(e)
        for b in s:
            feed(s, b, loss_of, classes)
            st_, res = s.stats(), s.reservoir()
            size = res["index"].numel()
            partial += 0 < size < 60
            assert st_["size"] == size
            assert torch.equal(st_["class_histogram"], torch.bincount(res["cls"], minlength=3))
            want = st_["updates_applied"] - float(res["admitted"].double().mean()) if size else 0.0
            assert st_["mean_age"] == pytest.approx(want, rel=1e-12, abs=1e-9)
    assert partial > 10  # (free slots with stale columns were in play)


def test_full_stats_hand_out_copies():
    """The class histogram is the caller's (with class quotas and one class
    too, where the heap's count is a single number): later steps leave it as it was."""
    s = hardmix.ReplaySampler(100, batch_size=10, capacity=50, replay_fraction=0.2, class_quotas=True, num_classes=1,
                              seed=0)
    it = iter(s)
    feed(s, next(it), classes=torch.zeros(100, dtype=torch.int64))
    hist = s.stats()["class_histogram"]
    first = hist.tolist()
    for _ in range(3):
        feed(s, next(it), classes=torch.zeros(100, dtype=torch.int64))
    assert s.stats()["class_histogram"].tolist() != first and hist.tolist() == first


def test_set_fresh_streams_tasks_and_the_reservoir_keeps_old_ones():
    N = 400
    classes = torch.arange(N) % 4
    s = hardmix.ReplaySampler(N, batch_size=20, capacity=40, replay_fraction=0.25, replay_lag=0, class_quotas=True,
                              num_classes=4)
    seen_fresh = []
    for task in range(2):
        task_idx = (classes // 2 == task).nonzero().squeeze(1)
        s.set_fresh(task_idx)
        for e in range(2):
            s.set_epoch(e)
            n = len(s)
            count = 0
            for b in s:
                r = s._outstanding[-1].state()
                seen_fresh.append((task, r["indices"][: r["fresh"]]))
                feed(s, b, None, classes)
                count += 1
            assert count == n == math.ceil(200 / 15)
    for task, fresh in seen_fresh:
        assert bool((classes[fresh] // 2 == task).all())
    cls = s.reservoir()["cls"]
    assert set(cls.tolist()) == {0, 1, 2, 3}  # earlier task's classes are still held


# --- the quickstart loop ------------------------------------------------------


def _readme_quickstart() -> str:
    return named("README.md", "quickstart")


@pytest.mark.parametrize("workers", [0, 2])
def test_readme_quickstart_runs_as_written(workers):
    code = _readme_quickstart()
    assert "hardmix.ReplaySampler(len(train_set), batch_size=256, capacity=8192" in code
    code = code.replace("num_workers=4", f"num_workers={workers}").replace("warmup_steps=500", "warmup_steps=5")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9000, 10, generator=gen)
    y = (x[:, 0] > 0).long()
    model = torch.nn.Linear(10, 2)
    env = {"train_set": TensorDataset(x, y), "model": model, "epochs": 2,
           "opt": torch.optim.SGD(model.parameters(), lr=0.1), "F": torch.nn.functional}
    exec(compile(code, "README.md quickstart", "exec"), env)
    sampler = env["sampler"]
    st_ = sampler.stats()
    assert st_["updates_applied"] + sampler.replay_lag == sampler.step > 80
    assert st_["size"] == 8192 and st_["replay_fraction"] == 0.25


def test_update_under_no_grad_and_compile():
    """update() inside a torch.compile'd step (it runs eagerly there) under
    no_grad gives the same batches and reservoir as the eager loop."""

    def run(compiled: bool):
        torch.manual_seed(0)
        s = hardmix.ReplaySampler(64, batch_size=8, capacity=16, replay_lag=0, replay_fraction=0.25)
        model = torch.nn.Linear(3, 2)
        x = torch.randn(64, 3)
        y = torch.arange(64) % 2

        def step(idx):
            logits = model(x[idx])
            losses = torch.nn.functional.cross_entropy(logits, y[idx], reduction="none")
            s.update(idx, losses.detach(), logits=logits.detach(), targets=y[idx])
            return losses.mean()

        if compiled:
            step = torch.compile(step, backend="eager")
        seen = []
        for e in range(2):
            s.set_epoch(e)
            n = len(s)
            for b in s:
                with torch.no_grad():
                    step(torch.tensor(b))
                seen.append(b)
            assert s.step == len(seen) and n == 11
        return seen, s.reservoir()["index"]

    (b1, r1), (b2, r2) = run(False), run(True)
    assert b1 == b2 and torch.equal(r1, r2)


def _tensors(obj):
    """Every tensor in nested dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def test_inputs_that_require_grad_give_what_detached_ones_give():
    """update() with the losses and logits straight from the model (not
    detached) runs as with detached copies, keeps no graph, and leaves their
    gradients to the caller."""

    def run(detach: bool):
        torch.manual_seed(0)
        s = hardmix.ReplaySampler(64, batch_size=8, capacity=16, replay_lag=0, replay_fraction=0.25,
                                  store_logits=True)
        model = torch.nn.Linear(3, 4)
        x, y = torch.randn(64, 3), torch.arange(64) % 4
        for b in (b for e in range(2) for b in s):
            idx = torch.tensor(b)
            logits = model(x[idx])
            losses = torch.nn.functional.cross_entropy(logits, y[idx], reduction="none")
            if detach:
                s.update(idx, losses.detach(), logits=logits.detach(), targets=y[idx])
            else:
                s.update(idx, losses, logits=logits, targets=y[idx])
            losses.mean().backward()  # (the graph is the caller's, whole)
            if not detach:  # what the sampler holds (its checkpoint: queued updates, logits) has no graph
                assert not any(t.requires_grad for t in _tensors(s.state_dict()))
        return s.reservoir(), model.weight.grad

    (r1, g1), (r2, g2) = run(True), run(False)
    assert all(torch.equal(r1[k], r2[k]) for k in r1) and torch.equal(g1, g2)


def test_compiled_steps_compile_no_more_frames_than_with_compiler_disable(monkeypatch):
    """The sampler's methods run eagerly in a torch.compile'd step, each
    call a graph break, and Dynamo compiles no frame of theirs: as many
    frames as when they are wrapped by torch.compiler.disable itself (their
    wrapper skips that one's cost outside compiled code), with indices and
    targets of changing dtypes."""
    from torch._dynamo.utils import counters

    def frames(wrap):
        torch._dynamo.reset()
        counters.clear()
        with monkeypatch.context() as m:
            for name in ("update", "weights", "replayed", "stored_logits", "batch_to_update"):
                m.setattr(hardmix.ReplaySampler, name, wrap(getattr(hardmix.ReplaySampler, name).__wrapped__))
            torch.manual_seed(0)
            s = hardmix.ReplaySampler(64, batch_size=8, capacity=16, replay_lag=0, replay_fraction=0.25,
                                      store_logits=True)
            model = torch.nn.Linear(3, 2)
            x, y = torch.randn(64, 3), torch.arange(64) % 2

            def step(idx, kind):
                logits = model(x[idx])
                losses = torch.nn.functional.cross_entropy(logits, y[idx], reduction="none")
                w = s.weights(idx)
                s.replayed(idx), s.stored_logits(idx), s.batch_to_update()
                s.update(idx, losses.detach(), logits=logits.detach(), targets=y[idx].to(kind))
                return (losses * w).mean()

            step = torch.compile(step, backend="eager")
            for k, b in enumerate(b for e in range(2) for b in s):
                with torch.no_grad():
                    step(torch.tensor(b, dtype=torch.int64 if k % 2 else torch.int32),
                         torch.int64 if k % 3 else torch.int32)
        return dict(counters["frames"])

    ours = frames(hardmix.sampler._eager)
    assert ours == frames(torch.compiler.disable) and ours["total"] > 0


@pytest.mark.parametrize("state_device", ["cpu", "cuda"])
def test_inputs_on_any_device(device, state_device):
    """update/weights take tensors on the training device; the state stays on
    the host or (state_device="cuda") goes to that GPU at the first update,
    and batches, weights and reservoir are those of the CPU run, bit for bit."""
    s = hardmix.ReplaySampler(64, batch_size=8, capacity=16, replay_lag=0, num_classes=3,
                              state_device=state_device)
    ref = hardmix.ReplaySampler(64, batch_size=8, capacity=16, replay_lag=0, num_classes=3)
    gen = torch.Generator().manual_seed(0)
    for b, b_ref in zip(s, ref):
        assert b == b_ref
        losses, logits = torch.rand(len(b), generator=gen), torch.randn(len(b), 3, generator=gen)
        targets = torch.tensor(b) % 3
        idx = torch.tensor(b, device=device)
        w = s.weights(idx)
        assert w.device == idx.device and torch.equal(w.cpu(), ref.weights(torch.tensor(b)))
        s.update(idx, losses.to(device), logits=logits.to(device), targets=targets.to(device))
        ref.update(torch.tensor(b), losses, logits=logits, targets=targets)
    assert s.engine.device.type == ("cuda" if device == state_device == "cuda" else "cpu")
    assert torch.equal(s.reservoir()["index"], ref.reservoir()["index"])
    assert s.stats()["total_admitted"] == ref.stats()["total_admitted"]


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("state_device", ["cpu", "cuda"])
@pytest.mark.parametrize("lag", [0, 4])
def test_update_on_the_gpu_never_waits_for_it(state_device, lag):
    """With GPU inputs update() starts work and returns
    (torch.cuda.set_sync_debug_mode('error') raises on any wait): the copy
    of B numbers to the host (state on the CPU), or the step on the engine's
    stream (state on the GPU); the batch that needs an update waits for it."""

    def no_wait(event):  # (set_sync_debug_mode does not see Event.synchronize)
        raise AssertionError("update() waited for a CUDA event")
    s = hardmix.ReplaySampler(4096, batch_size=64, capacity=512, replay_lag=lag, num_classes=10, seed=1,
                              state_device=state_device)
    model = torch.nn.Linear(16, 10).cuda()
    x_of = torch.randn(4096, 16, device="cuda")
    for k, b in enumerate(s):
        idx = torch.tensor(b)  # from the loader: on the host
        x, y = x_of[idx.cuda()], idx.cuda() % 10
        logits = model(x)
        losses = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        w = s.weights(idx)
        assert w.is_pinned() == (k > 0)  # (training on the GPU: so that w.to("cuda", non_blocking=True) never waits)
        if k > 0:
            torch.cuda.set_sync_debug_mode("error")
        try:
            with pytest.MonkeyPatch.context() as m:
                m.setattr(torch.cuda.Event, "synchronize", no_wait)
                (losses * w.to("cuda", non_blocking=True)).mean()
                s.update(idx, losses.detach(), logits=logits.detach(), targets=y)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        if k == 40:
            break
    assert s.engine.device.type == state_device and s.stats()["size"] > 0


GPU_BAD_VALUES = {
    # name: (sampler arguments, the bad arguments of update (on the GPU), what the error says)
    "nan loss": (dict(nonfinite="raise"), lambda b: dict(losses=torch.full((len(b),), math.nan)), "is not finite"),
    "class out of num_classes": (dict(), lambda b: dict(targets=torch.full((len(b),), 3)), "= 3 is out of range"),
    "negative priorities": (dict(score="given"), lambda b: dict(priorities=-torch.ones(len(b))), "is negative"),
}


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("state_device", ["cpu", "cuda"])
@pytest.mark.parametrize("case", sorted(GPU_BAD_VALUES))
def test_bad_values_on_the_gpu_come_with_the_next_batch(case, state_device, monkeypatch):
    """GPU inputs are checked where and when their update is applied: the
    bad update runs as one with no examples, the batch that needs it raises,
    and the run goes on exactly as a CPU run whose update was checked the
    same way (tests/test_sampler_errors.py fakes that on the CPU)."""
    from test_sampler_errors import deferring

    kw, bad, says = GPU_BAD_VALUES[case]
    args = dict(batch_size=16, capacity=24, replay_fraction=0.25, replay_lag=2, seed=5, num_classes=3,
                class_quotas=False, **kw)
    s = hardmix.ReplaySampler(400, state_device=state_device, **args)
    ref = hardmix.ReplaySampler(400, **args)
    deferring(ref, monkeypatch)
    given = s.config.score == "given"
    runs = [[s, iter(s), "cuda"], [ref, iter(ref), "cpu"]]
    for g in range(12):
        batches = []
        for run in runs:
            smp, it, dev = run
            if g == 5:  # needs update 2
                with pytest.raises(ValueError, match=says):
                    next(it)
                run[1] = it = iter(smp)
            b = torch.tensor(next(it))
            batches.append(b)
            good = dict(losses=(b % 7).float(), targets=b % 3, **({"priorities": (b % 5).double()} if given else {}))
            kw_ = {**good, **bad(b)} if g == 2 else good
            smp.update(b, **{k: v.to(dev) for k, v in kw_.items()})
        assert torch.equal(batches[0], batches[1]), g
    assert torch.equal(s.reservoir()["index"], ref.reservoir()["index"])


@pytest.mark.cuda
@needs_gpu
def test_targets_outside_the_logits_on_the_gpu_come_with_the_next_batch():
    """(State on the host: the margin kernel cannot refuse a target outside
    the logits' columns without waiting; the host does when applying, also
    after a restore from a checkpoint taken before.)"""
    says = r"update of batch 1 had bad input.*targets\[0\] = 5 is out of range \[0, 3\) \(logits has 3 classes\)"

    def run(s, it, first, last, saved=None):
        for k in range(first, last):
            if k == 3:  # the first batch that needs update 1
                with pytest.raises(ValueError, match=says):
                    next(it)
                it = iter(s)
            b = torch.tensor(next(it))
            targets = (b % 3).cuda() if k != 1 else torch.full((16,), 5, device="cuda")
            logits = torch.nn.functional.one_hot((b * 5) % 3, 3).float().cuda() * 2  # (some rows wrong)
            s.update(b, (b % 7).float().cuda() / 3, logits=logits, targets=targets)
            if k == 1 and saved is not None:
                saved.append(copy.deepcopy(s.state_dict()))  # update 1 unchecked
        return it

    s, saved = hardmix.ReplaySampler(400, batch_size=16, capacity=24, replay_lag=1, seed=5), []
    run(s, run(s, iter(s), 0, 2, saved), 2, 5)
    assert s.stats()["updates_applied"] == 4
    r = hardmix.ReplaySampler(400, batch_size=16, capacity=24, replay_lag=1, seed=5)
    r.load_state_dict(saved[0])
    run(r, iter(r), 2, 5)
    assert torch.equal(r.reservoir()["index"], s.reservoir()["index"])


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_state_device_with_an_index_refuses_another_gpu():
    s = hardmix.ReplaySampler(64, batch_size=8, capacity=16, state_device="cuda:0")
    b = torch.tensor(next(iter(s)))
    with pytest.raises(ValueError, match="state_device is cuda:0, got losses on cuda:1"):
        s.update(b, torch.rand(8, device="cuda:1"))


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("state_device", ["cpu", "cuda"])
def test_resume_with_inputs_on_the_gpu(state_device, tmp_path):
    """A checkpoint taken while updates with GPU tensors are queued (their
    copies maybe in flight) restores exactly, in a sampler on the host."""
    args = dict(batch_size=32, capacity=64, replay_fraction=0.3, replay_lag=3, seed=2, num_classes=4)

    def run(s, it, steps):
        out = []
        for _ in range(steps):
            b = torch.tensor(next(it))
            out.append(b)
            x = b.cuda()
            s.update(b, (x % 11).float() / 3, logits=torch.nn.functional.one_hot(x % 4, 4).float() * (x % 3)[:, None],
                     targets=(x * 7) % 4)
        return out

    a = hardmix.ReplaySampler(2000, state_device=state_device, **args)
    it = iter(a)
    run(a, it, 10)
    torch.save(a.state_dict(), tmp_path / "s.pt")  # right after update(): copies may be in flight
    rest = run(a, it, 10)
    b = hardmix.ReplaySampler(2000, **args)
    b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    again = run(b, iter(b), 10)
    assert all(torch.equal(x, y) for x, y in zip(rest, again))
    assert torch.equal(a.reservoir()["index"], b.reservoir()["index"])


def test_update_keeps_copies_of_its_inputs():
    """An update is applied replay_lag batches later: the loop may refill the
    tensors it passed meanwhile (static buffers, CUDA graphs)."""
    args = dict(batch_size=8, capacity=12, replay_lag=3, seed=1, num_classes=3, score="margin")
    a, b = hardmix.ReplaySampler(80, **args), hardmix.ReplaySampler(80, **args)
    losses, targets, logits = torch.empty(8), torch.empty(8, dtype=torch.int64), torch.empty(8, 3)
    for x, y in zip(a, b):
        assert x == y
        x = torch.tensor(x)
        losses.copy_((x % 5).float())
        targets.copy_(x % 3)
        logits.copy_(torch.nn.functional.one_hot((x * 7) % 3, 3).float())
        a.update(x, losses, logits=logits, targets=targets)
        b.update(x, (x % 5).float(), logits=logits.clone(), targets=x % 3)
        for t in (losses, targets, logits):
            t.fill_(1)  # refilled before the update is applied
    assert torch.equal(a.reservoir()["index"], b.reservoir()["index"])
    assert torch.equal(a.reservoir()["cls"], b.reservoir()["cls"])
