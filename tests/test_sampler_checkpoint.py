"""ReplaySampler checkpoints: exact resume (in this process and in a new one),
with a plain DataLoader and torchdata's StatefulDataLoader, with 0 and 2
workers, at any step (mid-epoch, at an epoch's end, during warm-up); the
state is versioned, loads with weights_only=True, and costs O(1) per call."""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys

import pytest
import torch

import hardmix
import sampler_loop

pytest.importorskip("torchdata.stateful_dataloader")


@pytest.fixture(scope="module")
def full():
    return sampler_loop.run(epochs=3, workers=0)


def test_the_loop_has_replay_and_several_epochs(full):
    # 25 batches per epoch (600 fresh, 24 per batch at rho 0.25); the warm-up's 10 batches of 32 fresh
    # put epoch 0 ahead of the pass by 80 examples
    assert len(full["batches"]) == 25 * 3 and full["lens"] == 25
    assert full["stats"]["total_admitted"] > 96 and full["stats"]["size"] == 96


@pytest.mark.parametrize("loader", ["plain", "stateful"])
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop", [3, 17, 25, 40])  # warm-up, mid-epoch, epoch end, second epoch
def test_resume_is_exact(full, loader, workers, stop):
    first = sampler_loop.run(3, workers, loader, stop_after=stop)
    rest = sampler_loop.run(3, workers, loader, resume=first["checkpoint"])
    assert first["batches"] + rest["batches"] == full["batches"]
    for k in ("index", "priority", "step", "cls", "admitted"):
        assert torch.equal(rest["members"][k], full["members"][k]), k
    assert rest["stats"]["total_admitted"] == full["stats"]["total_admitted"]
    assert all(torch.equal(a, b) for a, b in zip(rest["weights"], full["weights"][stop:]))


@pytest.fixture(scope="module")
def full_defaults():
    return {w: sampler_loop.run(epochs=3, workers=w, defaults=True) for w in (0, 2)}


@pytest.mark.parametrize("loader", ["plain", "stateful"])
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop", [1, 3, 12, 40])
def test_resume_is_exact_with_the_quickstart_arguments(full_defaults, loader, workers, stop):
    """The class count and the replay lag are decided by the first update; a
    checkpoint taken before it (a StatefulDataLoader snapshots when it
    dispatches a batch) restores them from its log, and kept logits resume
    too."""
    full = full_defaults[workers]
    assert full["config"].class_quotas and full["config"].num_classes == 4 and full["lag"] == 2 * workers
    first = sampler_loop.run(3, workers, loader, stop_after=stop, defaults=True)
    rest = sampler_loop.run(3, workers, loader, resume=first["checkpoint"], defaults=True)
    assert first["batches"] + rest["batches"] == full["batches"]
    assert rest["lag"] == full["lag"] and rest["config"] == full["config"]
    assert torch.equal(rest["members"]["index"], full["members"]["index"])
    for (a, ha), (b, hb) in zip(rest["stored"], full["stored"][stop:]):
        assert torch.equal(a, b) and torch.equal(ha, hb)


def test_resume_in_a_new_process(full, tmp_path):
    """StatefulDataLoader with 2 workers, interrupted mid-epoch; the rest runs
    in a fresh interpreter from the saved file."""
    first = sampler_loop.run(3, 2, "stateful", stop_after=29)
    ck = tmp_path / "ck.pt"
    ck.write_bytes(first["checkpoint"])
    out = tmp_path / "out.pt"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__))
    subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "sampler_loop.py"), str(out),
                    "--workers", "2", "--loader", "stateful", "--resume", str(ck)], check=True, env=env,
                   timeout=300)
    rest = torch.load(out, weights_only=True)
    assert first["batches"] + rest["batches"] == full["batches"]
    assert torch.equal(rest["members"]["index"], full["members"]["index"])


def _sampler(**kw):
    args = dict(batch_size=10, capacity=20, replay_fraction=0.3, replay_lag=2, seed=1)
    args.update(kw)
    return hardmix.ReplaySampler(100, **args)


def _step(s, it):
    b = torch.tensor(next(it))
    s.update(b, (b % 7).double())
    return b


def test_state_dict_is_cheap_and_shares_the_engine_copy():
    """Calls between two copies of the engine share one copy: O(B * lag) per call;
    a new copy after ceil(N / B) updates."""
    s = _sampler()
    it = iter(s)
    first = s.state_dict()
    for k in range(9):
        _step(s, it)
        sd = s.state_dict()
        assert sd["engine"] is first["engine"]
    _step(s, it)
    sd = s.state_dict()  # 10 = ceil(100 / 10) updates logged: a new copy
    assert sd["engine"] is not first["engine"] and sd["updates_start"] == s.engine.step


def test_the_update_log_stops_when_no_state_needs_it():
    """One state_dict() call, then a long run: the log (and the engine copy)
    are let go once the updates that state needs are in, so memory stays bounded."""
    s = _sampler()
    it = iter(s)
    _step(s, it)
    sd = s.state_dict()
    for _ in range(30):
        try:
            _step(s, it)
        except StopIteration:
            it = iter(s)
            _step(s, it)
    assert s._checkpoints.log is None and s._checkpoints.base is None
    assert len(sd["updates"]) >= sd["position"]["yielded"] - sd["updates_start"]
    t = _sampler()
    t.load_state_dict(sd)
    assert t.step == 1 and t._received == 1
    sd2 = s.state_dict()  # a new copy of the engine
    assert sd2["engine"] is not sd["engine"] and sd2["updates_start"] == s.engine.step


def test_the_update_log_is_live_until_saved_and_deepcopy_freezes_it():
    s = _sampler()
    it = iter(s)
    for _ in range(4):
        _step(s, it)
    next(it)
    sd = s.state_dict()  # batch 4 yielded, not updated: like a StatefulDataLoader snapshot
    frozen = copy.deepcopy(sd)
    n = len(sd["updates"])
    s.update(s._outstanding[0].indices.clone(), torch.ones(10, dtype=torch.float64))
    assert len(sd["updates"]) == n + 1 and len(frozen["updates"]) == n
    # Restored from the live one, batch 4's update is there: batch 5 comes next.
    a = _sampler()
    a.load_state_dict(sd)
    assert a.step == 5 and not a._outstanding
    # From the frozen one, batch 4 waits for its update and is yielded again.
    b = _sampler()
    b.load_state_dict(frozen)
    assert b.step == 5 and len(b._outstanding) == 1
    assert next(iter(b)) == s._last_updated.tolist() and b.step == 5


def test_state_dict_round_trips_through_torch_save_weights_only():
    s = _sampler(class_quotas=True, num_classes=7)
    it = iter(s)
    for _ in range(12):
        b = torch.tensor(next(it))
        s.update(b, (b % 7).double(), targets=b % 7)
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    t = _sampler(class_quotas=True, num_classes=7)
    t.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert t.step == s.step and t.epoch == s.epoch
    for k in ("index", "priority", "cls"):
        assert torch.equal(t.reservoir()[k], s.reservoir()[k])
    assert next(iter(t)) == next(iter(s))


def test_set_fresh_survives_a_checkpoint():
    s = _sampler()
    s.set_fresh(torch.arange(50, 100))
    s.set_epoch(0)
    it = iter(s)
    _step(s, it)
    t = _sampler()
    t.load_state_dict(copy.deepcopy(s.state_dict()))
    assert len(t) == len(s) == 8  # 50 fresh, 7 per batch
    a, b = iter(t), iter(s)
    for _ in range(3):  # what the lag allows without further updates
        x = next(a)
        assert x == next(b) and all(i >= 50 for i in x[:7])


def test_a_checkpoint_taken_after_a_rewind_resumes_exactly():
    """The loop broke with 4 batches in flight and came back (iter() takes them
    back to yield again); a state saved then still holds them as yielded."""
    s = _sampler(replay_lag=4)
    it = iter(s)
    queue = [next(it) for _ in range(4)]  # a loader prefetching 4 batches
    for _ in range(6):
        queue.append(next(it))
        b = torch.tensor(queue.pop(0))
        s.update(b, (b % 7).double())
    it = iter(s)
    t = _sampler(replay_lag=4)
    t.load_state_dict(copy.deepcopy(s.state_dict()))
    it2 = iter(t)
    for _ in range(4):  # the 4 batches again, then new ones, the same on both
        a, b = next(it), next(it2)
        assert a == b
        s.update(torch.tensor(a), (torch.tensor(a) % 7).double())
        t.update(torch.tensor(b), (torch.tensor(b) % 7).double())
    assert next(it) == next(it2)


def test_stateful_loader_resumed_at_an_epoch_end_keeps_epochs_aligned():
    """StatefulDataLoader loads the sampler state when iterated, after the
    loop's set_epoch: the sampler applies that set_epoch to the loaded state."""
    from torch.utils.data import DataLoader, TensorDataset
    from torchdata.stateful_dataloader import StatefulDataLoader

    ds = hardmix.WithIndex(TensorDataset(torch.arange(100)))
    per_kind = {}
    for kind, cls in (("plain", DataLoader), ("stateful", StatefulDataLoader)):
        s = _sampler(replay_lag=0)
        dl = cls(ds, batch_sampler=s)
        for idx, x in dl:
            s.update(idx, (idx % 7).double())
        ck = copy.deepcopy(dl.state_dict() if kind == "stateful" else s.state_dict())
        t = _sampler(replay_lag=0)
        dl2 = cls(ds, batch_sampler=t)
        (dl2 if kind == "stateful" else t).load_state_dict(ck)
        got = []
        for epoch in range(3):  # the loop restarts at the saved epoch, 0, which is finished
            t.set_epoch(epoch)
            batches = []
            for idx, x in dl2:
                t.update(idx, (idx % 7).double())
                batches.append(idx.tolist())
            got.append(batches)
        assert got[0] == [] and len(got[1]) == len(got[2]) == 15
        per_kind[kind] = got
    assert per_kind["plain"] == per_kind["stateful"]


def test_load_refuses_another_schedule():
    s = _sampler()
    it = iter(s)
    _step(s, it)
    t = _sampler(replay_fraction=0.5)
    with pytest.raises(ValueError, match="plans the epoch in progress differently"):
        t.load_state_dict(copy.deepcopy(s.state_dict()))


def test_len_is_the_same_before_and_after_a_restore():
    """len() depends on the arguments and the fresh data only: a DataLoader (or
    a trainer) that reads it before the state is loaded reads the right one."""
    from torch.utils.data import TensorDataset
    from torchdata.stateful_dataloader import StatefulDataLoader

    ds = hardmix.WithIndex(TensorDataset(torch.arange(100)))
    s = _sampler(warmup_steps=5, ramp_steps=10)
    K = len(s)
    assert K == 15  # 100 fresh, 7 per batch at the peak 0.3
    dl = StatefulDataLoader(ds, batch_sampler=s)
    seen = []
    for epoch in range(2):
        s.set_epoch(epoch)
        seen.append(len(dl))
        for n, (idx, x) in enumerate(dl):
            s.update(idx, (idx % 7).double())
            if epoch == 1 and n == 6:
                break
    ck = copy.deepcopy(dl.state_dict())
    t = _sampler(warmup_steps=5, ramp_steps=10)
    dl2 = StatefulDataLoader(ds, batch_sampler=t)
    dl2.load_state_dict(ck)
    assert seen == [K, K] and len(dl2) == K
    t.set_epoch(1)
    assert len(dl2) == len(t) == K
    rest = []
    for idx, x in dl2:
        t.update(idx, (idx % 7).double())
        rest.append(idx)
    assert len(rest) == K - 7  # (the loader's snapshot came after batch 6 was dispatched)


@pytest.mark.parametrize("cursor", [[0, -1], [-1, 0], [0, 101], [0]])
def test_a_cursor_out_of_range_is_refused_and_changes_nothing(cursor):
    s = _sampler()
    it = iter(s)
    _step(s, it)
    state = copy.deepcopy(s.state_dict())
    state["position"]["cursor"] = cursor
    t = _sampler()
    before = t.state_dict()["position"]
    with pytest.raises(ValueError, match=r"position cursor .* is not \[pass >= 0, position in \[0, 100\]\]"):
        t.load_state_dict(state)
    assert t.state_dict()["position"] == before and next(iter(t)) == next(iter(_sampler()))


def test_a_version_2_state_loads_with_one_pass_per_epoch():
    s = _sampler(epoch_length="pass")
    it = iter(s)
    for _ in range(4):
        _step(s, it)
    old = copy.deepcopy(s.state_dict())
    old["version"] = 2
    del old["signature"]["epoch_length"], old["position"]["cursor"]
    t = _sampler(epoch_length="pass")
    t.load_state_dict(copy.deepcopy(old))
    assert next(iter(t)) == next(it)
    with pytest.raises(ValueError, match="epoch_length: saved 'pass', now 'auto'"):
        _sampler().load_state_dict(old)


@pytest.mark.parametrize("stop", [17, 40])
def test_sharded_table_runs_and_resumes_as_the_whole_table(full, stop):
    """shard_table=True in one process (a shard of one): the same batches,
    weights and reservoir as the whole table, and exact resume through a
    StatefulDataLoader with workers, whose live update log reaches past the
    engine copy (the copied table then lacks those updates' dynamics)."""
    kw = {"shard_table": True}
    whole = sampler_loop.run(3, 0, sampler_kw=kw)
    assert whole["batches"] == full["batches"]
    assert all(torch.equal(a, b) for a, b in zip(whole["weights"], full["weights"]))
    first = sampler_loop.run(3, 2, "stateful", stop_after=stop, sampler_kw=kw)
    rest = sampler_loop.run(3, 2, "stateful", resume=first["checkpoint"], sampler_kw=kw)
    assert first["batches"] + rest["batches"] == full["batches"]
    for k in ("index", "priority", "step", "cls", "admitted"):
        assert torch.equal(rest["members"][k], full["members"][k]), k
    assert torch.equal(rest["table"], whole["table"])  # every example's dynamics, as uninterrupted


def test_a_restored_batch_weighs_its_examples_from_its_draw():
    """The weights of a batch yielded before the checkpoint come from the
    record's draw facts after a restore: a weights entry in the saved record
    (which older checkpoints held) is not taken as it is."""
    s = _sampler()
    it = iter(s)
    for _ in range(5):
        _step(s, it)
    b = torch.tensor(next(it))
    want = s.weights(b)
    assert bool((want[7:] != 1).any())  # (replayed examples weigh other than 1)
    sd = copy.deepcopy(s.state_dict())
    for r in sd["batches"]:
        r["weights"] = torch.full((10,), 1e6)
    t = _sampler()
    t.load_state_dict(sd)
    assert torch.equal(t.weights(b), want)
