"""ReplaySampler under torch.distributed (gloo, CPU, spawned processes,
world sizes 2 and 3): the same number of batches on every rank, disjoint and
covering fresh parts, identical reservoirs after every step, disjoint replay
slices, equality with one engine fed the concatenated batches, DDP end to end,
exact resume, and bad input on one rank failing on all without a hang (at
once in the first update, with the next batch after it).

Semantics tested: every rank applies the concatenation of all ranks' batches
(in rank order) as one step; a single process feeding that concatenation to an
Engine ends in the same state. With ``shard_table=True`` the same holds for
the replicated state (reservoir, counters, draws), and each rank's table rows
are that engine's rows of the indices it owns."""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import hardmix
from hardmix.engine import STATE_TENSORS

N, C = 97, 4  # N not divisible by 2 or 3: padding


def _init(rank: int, world: int, path: str) -> None:
    torch.set_num_threads(1)
    # A collective that waits longer than this fails instead of hanging the suite.
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))


def _done() -> None:
    """Leave together, then destroy the group: every rank has written its
    results. (destroy_process_group alone was seen to hang one rank of three
    once; without it, gloo's worker threads can abort the process at exit,
    "terminate called without an active exception": pytorch/pytorch#179291.)
    A DDP model must be gone first: a gloo group it outlives is destroyed with
    it, holding the GIL, and ~ProcessGroupGloo joins a worker thread that may
    be waiting for the GIL to free a finished collective's tensors: a deadlock."""
    dist.barrier()
    dist.destroy_process_group()


def _digest(engine) -> str:
    h = hashlib.sha1()
    for k in STATE_TENSORS:
        h.update(getattr(engine, k).numpy().tobytes())
    return h.hexdigest()


def _replicated_digest(engine) -> str:
    """The state every rank holds whether or not the table is sharded."""
    h = hashlib.sha1()
    for k in ("slots", "links", "heap", "free", "classes", "tree", "window", "counters", "balance"):
        h.update(getattr(engine, k).numpy().tobytes())
    return h.hexdigest()


def _losses():
    g = torch.Generator().manual_seed(5)
    return torch.rand(N, generator=g).double() * 3, torch.randn(N, C, generator=g)


def _sampler(**kw):
    args = dict(batch_size=8, capacity=30, replay_fraction=0.4, replay_lag=2, seed=3, num_classes=C, lam=0.01)
    args.update(kw)
    return hardmix.ReplaySampler(N, **args)


def _loop(s, epochs, start_epoch=0, stop=None, log=None):
    loss_of, logits_of = _losses()
    step = 0
    for e in range(start_epoch, epochs):
        s.set_epoch(e)
        for b in s:
            idx = torch.tensor(b)
            rec = s._outstanding[-1]
            if log is not None:
                log.append({"epoch": e, "batch": b, "fresh": b[: rec.fresh],
                            "replay": b[rec.fresh : rec.fresh + rec.replay]})
            s.update(idx, loss_of[idx], logits=logits_of[idx], targets=idx % C)
            if log is not None:
                log[-1]["digest"] = _digest(s.engine)
                log[-1]["replicated"] = _replicated_digest(s.engine)
                log[-1]["applied"] = s.engine.step
            step += 1
            if stop is not None and step == stop:
                return e
    return epochs


def _run_world(rank, world, path, out, shard):
    _init(rank, world, path)
    s = _sampler(shard_table=shard)
    assert (s.num_replicas, s.rank) == (world, rank)
    log: list = []
    _loop(s, 3, log=log)
    torch.save({"log": log, "lens": len(s), "table": s.engine.table, "received": s._received}, f"{out}.{rank}")
    _done()


def _spawn(fn, world, tmp_path, *args, deadline: float = 240.0):
    """Run fn on `world` spawned ranks; fail (never hang) if they take longer than `deadline` s."""
    path = str(tmp_path / "pg")
    out = str(tmp_path / "out")
    ctx = mp.spawn(fn, args=(world, path, out, *args), nprocs=world, join=False)
    end = time.monotonic() + deadline
    while not ctx.join(timeout=5):
        if time.monotonic() > end:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"ranks still running after {deadline} s")
    return [torch.load(f"{out}.{r}", weights_only=False) for r in range(world)]


@pytest.mark.parametrize("world,shard", [(2, False), (3, False), (2, True), (3, True)])
def test_ranks_agree_and_split_the_data(world, shard, tmp_path):
    res = _spawn(_run_world, world, tmp_path, shard)
    logs = [r["log"] for r in res]
    digest = "replicated" if shard else "digest"  # (a sharded table differs by rank, by design)
    assert len({len(log) for log in logs}) == 1  # the same number of batches on every rank
    per = -(-N // world)
    for step in range(len(logs[0])):
        entries = [log[step] for log in logs]
        assert len({e[digest] for e in entries}) == 1, step  # identical reservoirs
        replays = [set(e["replay"]) for e in entries]
        for a in range(world):
            for b in range(a + 1, world):
                assert not replays[a] & replays[b], step  # disjoint replay slices
    for epoch in range(3):  # fresh parts: disjoint (up to padding) and covering, per epoch
        parts = [[i for e in log if e["epoch"] == epoch for i in e["fresh"]] for log in logs]
        assert all(len(p) == per for p in parts)
        union = [i for p in parts for i in p]
        assert set(union) == set(range(N)) and len(union) - len(set(union)) == per * world - N
    # One engine fed the concatenated batches, in rank order, reaches the same state.
    loss_of, logits_of = _losses()
    eng = hardmix.Engine(_sampler().config)
    def feed(upto):
        while eng.step < upto:
            idx = torch.tensor([i for log in logs for i in log[eng.step]["batch"]])
            replayed = torch.tensor([k in range(len(log[eng.step]["fresh"]),
                                                len(log[eng.step]["fresh"]) + len(log[eng.step]["replay"]))
                                     for log in logs for k in range(len(log[eng.step]["batch"]))])
            eng.update(idx, loss_of[idx], logits=logits_of[idx], targets=idx % C, replayed=replayed)

    for step, entries in enumerate(zip(*logs)):
        feed(entries[0]["applied"])
        assert (_replicated_digest(eng) if shard else _digest(eng)) == entries[0][digest], step
    if shard:  # each rank's rows: quarantine as of the last update applied, the
        for r, res_r in enumerate(res):  # dynamics as of the last received (run ahead)
            assert torch.equal(res_r["table"][:, 7:], eng.table[r::world, 7:])
        feed(res[0]["received"])
        for r, res_r in enumerate(res):
            assert torch.equal(res_r["table"][:, :7], eng.table[r::world, :7])
            assert res_r["table"].shape[0] == len(range(r, N, world))


def test_single_process_is_unchanged_by_the_distributed_code():
    s = _sampler()
    assert (s.num_replicas, s.rank) == (1, 0)
    log: list = []
    _loop(s, 2, log=log)
    assert sorted(i for e in log if e["epoch"] == 0 for i in e["fresh"]) == list(range(N))


def _run_ddp(rank, world, path, out):
    _init(rank, world, path)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(N, 6, generator=g), torch.randint(0, C, (N,), generator=g)
    data = hardmix.WithIndex(torch.utils.data.TensorDataset(x, y))
    s = _sampler(replay_lag=4)
    loader = torch.utils.data.DataLoader(data, batch_sampler=s, num_workers=0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(6, C))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps, last = 0, None
    for epoch in range(3):
        s.set_epoch(epoch)
        for idx, xb, yb in loader:
            logits = model(xb)
            losses = torch.nn.functional.cross_entropy(logits, yb, reduction="none")
            (losses * s.weights(idx)).mean().backward()
            opt.step()
            opt.zero_grad()
            s.update(idx, losses.detach(), logits=logits.detach(), targets=yb)
            steps, last = steps + 1, float(losses.mean())
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.save({"steps": steps, "last": last, "params": params, "digest": _digest(s.engine),
                "size": s.stats()["size"]}, f"{out}.{rank}")
    del model  # before the group: see _done
    _done()


def test_ddp_end_to_end(tmp_path):
    res = _spawn(_run_ddp, 2, tmp_path)
    assert res[0]["steps"] == res[1]["steps"] > 20
    assert torch.equal(res[0]["params"], res[1]["params"])  # DDP kept the replicas in step
    assert res[0]["digest"] == res[1]["digest"] and res[0]["size"] == res[1]["size"] > 20
    assert all(torch.isfinite(torch.tensor(r["last"])) for r in res)


def _run_resume(rank, world, path, out, stop, shard):
    _init(rank, world, path)
    full: list = []
    _loop(_sampler(shard_table=shard), 3, log=full)
    s = _sampler(shard_table=shard)
    first: list = []
    epoch = _loop(s, 3, stop=stop, log=first)
    buf = io.BytesIO()
    torch.save({"sampler": s.state_dict(), "epoch": epoch}, buf)
    t = _sampler(shard_table=shard)  # a new sampler, as in a new process
    ck = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    t.load_state_dict(ck["sampler"])
    rest: list = []
    _loop(t, 3, start_epoch=ck["epoch"], log=rest)
    torch.save({"full": [e["batch"] for e in full], "resumed": [e["batch"] for e in first + rest],
                "digests": (full[-1]["digest"], rest[-1]["digest"])}, f"{out}.{rank}")
    _done()


@pytest.mark.parametrize("stop,shard", [(7, False), (13, False), (7, True), (13, True)])
def test_resume_of_a_distributed_run_is_exact(tmp_path, stop, shard):
    for r in _spawn(_run_resume, 2, tmp_path, stop, shard):
        assert r["resumed"] == r["full"]
        assert r["digests"][0] == r["digests"][1]


def _run_uneven(rank, world, path, out):
    """Rank 0 fetches one batch ahead of update(), rank 1 none (as loaders
    with different prefetch depths do): rank 0 has applied more queued
    updates when an update arrives. Whole and sharded table."""
    _init(rank, world, path)
    loss_of, _ = _losses()
    every = torch.arange(N)

    def logits_in(epoch):  # nothing learned in epoch 0; then half the data wrong until epoch 4
        wrong = (epoch < 1) | ((every // C % 2 == 0) & (epoch < 4))
        out = torch.zeros(N, C)
        out[every, (every + wrong.long()) % C] = 1.0
        return out

    res = {}
    for shard in (False, True):
        s = _sampler(shard_table=shard, max_wrong=2, quarantine_steps=10)
        ahead = 1 if rank == 0 else 0
        for e in range(6):
            s.set_epoch(e)
            logits_of = logits_in(e)
            it, buf = iter(s), []
            for b in it:
                buf.append(b)
                if len(buf) > ahead:
                    break
            while buf:
                b = torch.tensor(buf.pop(0))
                s.update(b, loss_of[b], logits=logits_of[b], targets=b % C)
                nxt = next(it, None)
                if nxt is not None:
                    buf.append(nxt)
        s._apply(s._received)
        res[shard] = (_replicated_digest(s.engine), s.engine.totals()["quarantined"])
    torch.save(res, f"{out}.{rank}")
    _done()


def test_sharded_ranks_with_different_prefetch_agree(tmp_path):
    """The owners' rows miss quarantines that another rank
    applied before the batch arrived; the ranks exchange their steps and carry
    them in (Engine.carry_since)."""
    r0, r1 = _spawn(_run_uneven, 2, tmp_path)
    assert r0[False] == r1[False] == r0[True] == r1[True]
    assert r0[True][1] > 3  # quarantine was at work


def _run_bad(rank, world, path, out):
    _init(rank, world, path)
    s = _sampler(replay_lag=0)
    loss_of, logits_of = _losses()
    it = iter(s)
    b = torch.tensor(next(it))
    before = _digest(s.engine), s._received
    losses = loss_of[b] if rank == 0 else loss_of[b][:-1]  # rank 1: wrong length
    try:
        s.update(b, losses, logits=logits_of[b], targets=b % C)
        msg = None
    except Exception as e:  # noqa: BLE001 - recorded for the parent
        msg = f"{type(e).__name__}: {e}"
    unchanged = (_digest(s.engine), s._received) == before
    s.update(b, loss_of[b], logits=logits_of[b], targets=b % C)  # both go on together
    torch.save({"msg": msg, "unchanged": unchanged, "received": s._received}, f"{out}.{rank}")
    _done()


def test_bad_input_on_one_rank_fails_on_all_without_a_hang(tmp_path):
    r0, r1 = _spawn(_run_bad, 2, tmp_path)
    assert r1["msg"].startswith("ValueError: update: losses has ")
    assert r0["msg"] == ("RuntimeError: ReplaySampler.update: rank(s) [1] passed bad input (see their errors); "
                         "nothing was changed on any rank")
    assert r0["unchanged"] and r1["unchanged"] and r0["received"] == r1["received"] == 1


_LATER = {  # case: (sampler arguments, rank 1's losses of update 3, what rank 1 says)
    "shape": ({}, lambda losses: losses[:-1], ": losses has "),
    # its values unchecked in update() (as GPU inputs are: faked on the CPU), checked when applied
    "value": ({"nonfinite": "raise"}, lambda losses: losses.index_fill(0, torch.tensor([2]), float("nan")),
              ": losses[2] = nan is not finite (nonfinite='raise')"),
    # Ctrl-C while update() validates: that rank raises it at once, counting the update as the others do
    "interrupt": ({}, None, ": KeyboardInterrupt"),
}


def _interrupted(*args, **kwargs):
    raise KeyboardInterrupt


def _bad_later_steps(s, rank, case, start, stop, log, events):
    """Batches start..stop-1 of a run whose update 3 is bad on rank 1;
    update() never raises, a batch may (then a new iterator goes on)."""
    loss_of, logits_of = _losses()
    it = iter(s)
    for g in range(start, stop):
        try:
            b = next(it)
        except ValueError as e:
            events.append((g, str(e)))
            it = iter(s)
            b = next(it)
        rec = s._outstanding[-1]
        log.append((b, rec.fresh, rec.replay))
        b = torch.tensor(b)
        bad = (rank, g) == (1, 3)
        losses = _LATER[case][1](loss_of[b]) if bad and _LATER[case][1] else loss_of[b]
        if bad and case == "interrupt":
            s._validate = _interrupted
        try:
            s.update(b, losses, logits=logits_of[b], targets=b % C)
        except KeyboardInterrupt:
            events.append((g, "update raised KeyboardInterrupt"))
        s.__dict__.pop("_validate", None)


def _run_bad_later(rank, world, path, out, case):
    _init(rank, world, path)
    if case == "value":  # (where the sampler allows it: not in the first update)
        hardmix.intake.defers = lambda devices, allowed: allowed
    kw = dict(replay_lag=1, **_LATER[case][0])
    s, log, events = _sampler(**kw), [], []
    _bad_later_steps(s, rank, case, 0, 4, log, events)
    in_flight = isinstance(s._pending.front().entry, hardmix.distributed.GatheredEntry)
    live = _sampler(**kw)
    live.load_state_dict(s.state_dict())  # (not serialised: reading its log finishes the exchanges)
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)  # (the live log's exchanges finish as it is written)
    saved = _sampler(**kw)
    saved.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    live._apply(live._received), saved._apply(saved._received)
    restored = (_digest(live.engine), live.engine.step) == (_digest(saved.engine), 4)
    _bad_later_steps(s, rank, case, 4, 8, log, events)
    t, resumed = _sampler(**kw), []
    t.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    _bad_later_steps(t, rank, case, 4, 8, [], resumed)
    s._apply(s._received), t._apply(t._received)  # (every update applied)
    torch.save({"log": log, "events": events, "resumed": resumed, "in_flight": in_flight, "restored": restored,
                "digests": (_digest(s.engine), _digest(t.engine)), "steps": (s.engine.step, t.engine.step)},
               f"{out}.{rank}")
    _done()


@pytest.mark.parametrize("case", sorted(_LATER))
def test_bad_input_after_the_first_update_is_reported_by_every_rank_when_applied(tmp_path, case):
    """Once the exchange is started and not waited for (the lag and class
    count known), a rank with bad input still takes part: update() returns
    on every rank, the update runs as one with no examples everywhere, and
    every rank raises with the batch that needs it (update 3, lag 1: batch
    5), also after a restore from a checkpoint written while the exchange
    was in flight. Bad values that update() left unchecked are found by
    every rank in the exchanged batches."""
    res = _spawn(_run_bad_later, 2, tmp_path, case)
    said = "update: the update of batch 3 had bad input{}; it ran as an update with no examples on every rank"
    assert res[0]["events"] == res[0]["resumed"] == [(5, said.format(" on rank(s) [1] (see their errors)"))]
    events = res[1]["events"]
    if case == "interrupt":
        assert events.pop(0) == (3, "update raised KeyboardInterrupt")
    ((g, msg),) = events
    if case == "shape":
        assert g == 5 and msg.startswith(said.format(_LATER[case][2]).split(";")[0])
    else:
        assert (g, msg) == (5, said.format(_LATER[case][2]))
    assert res[1]["resumed"] == events
    assert res[0]["in_flight"] and res[1]["in_flight"]
    assert res[0]["restored"] and res[1]["restored"]  # (a state loaded as is, exchanges in flight, and one saved)
    assert res[0]["steps"] == res[1]["steps"] == (8, 8)
    assert len({d for r in res for d in r["digests"]}) == 1  # every rank, resumed or not
    # One engine fed the ranks' batches concatenated, update 3 empty, ends the same.
    loss_of, logits_of = _losses()
    eng = hardmix.Engine(_sampler(**_LATER[case][0]).config)
    for step, rows in enumerate(zip(res[0]["log"], res[1]["log"])):
        if step == 3:
            empty = hardmix.intake.empty_entry(eng.config, False)
            eng.update(empty["indices"], empty["losses"], margins=empty["margins"], classes=empty["classes"],
                       priorities=empty["priorities"])
            continue
        idx = torch.tensor([i for b, _, _ in rows for i in b])
        replayed = torch.tensor([f <= k < f + r for b, f, r in rows for k in range(len(b))])
        eng.update(idx, loss_of[idx], logits=logits_of[idx], targets=idx % C, replayed=replayed)
    assert _digest(eng) == res[0]["digests"][0]


def test_rank_arguments_are_checked():
    with pytest.raises(ValueError, match=r"rank must be in \[0, num_replicas=2\), got 2"):
        _sampler(num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas must be >= 1, got 0"):
        _sampler(num_replicas=0, rank=0)
    s = _sampler(num_replicas=3, rank=1)  # explicit, without a process group: plans and yields
    assert len(s) == len(_sampler(num_replicas=3, rank=2))


if os.environ.get("HARDMIX_SKIP_DISTRIBUTED"):  # pragma: no cover
    pytestmark = pytest.mark.skip("HARDMIX_SKIP_DISTRIBUTED is set")


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and dist.is_nccl_available()), reason="needs a CUDA GPU and NCCL")
def test_a_started_exchange_does_not_wait_for_the_gpu(tmp_path, monkeypatch):
    """Under NCCL (one rank here), an update's exchange is built from its GPU
    columns and started without a host sync (the sync debug mode raises on
    one; Event.synchronize is counted); finished, it holds the inputs as
    float64, and bad values it left unchecked come back as its error."""
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        config = hardmix.PolicyConfig(num_examples=1000, capacity=64, nonfinite="raise")
        B = 32

        def entry(losses):
            return {"indices": torch.randperm(1000)[:B], "losses": losses, "margins": torch.randn(B, device="cuda"),
                    "classes": None, "priorities": None, "replayed": torch.rand(B) < 0.5, "deferred": True, "C": None}

        hardmix.distributed.GatheredEntry(entry(torch.rand(B, device="cuda")), None, 1, 0, None, B, 0,
                                          config).finish()  # (NCCL's first use sets it up)
        good, bad = entry(torch.rand(B, device="cuda")), entry(torch.rand(B, device="cuda"))
        bad["losses"][3] = float("nan")
        torch.cuda.synchronize()
        waits, synchronize = [], torch.cuda.Event.synchronize
        monkeypatch.setattr(torch.cuda.Event, "synchronize", lambda ev: (waits.append(ev), synchronize(ev))[1])
        torch.cuda.set_sync_debug_mode("error")
        try:
            started = [hardmix.distributed.GatheredEntry(e, None, 1, 0, None, B, t, config)
                       for t, e in ((1, good), (2, bad))]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert not waits
        g, b = started
        assert torch.equal(g["indices"], good["indices"]) and torch.equal(g["replayed"], good["replayed"])
        assert torch.equal(g["losses"], good["losses"].double().cpu())
        assert torch.equal(g["margins"], good["margins"].double().cpu()) and "error" not in g
        assert b["indices"].numel() == 0
        assert b["error"].startswith("the update of batch 2 had bad input: losses[3] = nan is not finite")
    finally:
        dist.destroy_process_group()
