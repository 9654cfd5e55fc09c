"""Engine.load_state_dict validates a restored state completely (hardmix.state_check).

(1) Genuine states, from engines driven by random streams with every option,
round-trip at every step: no false refusals. (2) Targeted corruptions each
raise one ValueError naming the field, and leave the engine unchanged. (3)
Random corruptions (bit flips, replaced values) run in worker subprocesses
under a watchdog (tests/engine_state_fuzz.py): a state is refused with a clear
error or runs 20 updates and draws and stays valid; no crash, no hang."""

from __future__ import annotations

import math
import os
import random

import pytest
import torch

import engine_state_fuzz as fuzz
from hardmix import rng
from hardmix.config import PolicyConfig
from hardmix.engine import STATE_TENSORS, Engine
from hardmix.state_check import check_state, exp_det, mix13
from policy_helpers import assert_state_unchanged, full_state

# --- (1) genuine states pass ------------------------------------------------------------

SPECIAL = [  # (config, world): every option, with the cases that stress the structures
    (dict(num_examples=40, capacity=8, lam=40.0, gamma=1.0), 0),  # a rebase every other step
    (dict(num_examples=40, capacity=8, class_quotas=True, num_classes=3, balance_replay=True, reweight_every=2,
          lam=0.5, gamma=2.5), 0),
    (dict(num_examples=30, capacity=13, score="loss_rank", rank_window=4, max_new_per_step=3), 0),
    (dict(num_examples=60, capacity=8, score="margin", max_wrong=1, quarantine_steps=4, graduation=0.3), 0),
    (dict(num_examples=5, capacity=13, score="forgetting"), 0),  # R > N
    (dict(num_examples=40, capacity=1, class_quotas=True, num_classes=4), 0),  # R = 1, P = 1
    (dict(num_examples=50, capacity=8, score="given", alpha=0.0, graduation=0.3), 0),  # members leave: empty slots
    (dict(num_examples=40, capacity=8, max_wrong=2, quarantine_steps=4, lam=1.0, gamma=1.0), 2),
    (dict(num_examples=41, capacity=13, class_quotas=True, num_classes=3, balance_replay=True), 2),
    (dict(num_examples=7, capacity=13, score="loss_rank", rank_window=4, lam=40.0, gamma=1.0), 3),
]


def round_trip(run: fuzz.Run) -> None:
    for e in run.engines:
        state = e.state_dict()
        f = Engine(e.config, shard=e.shard)
        f.load_state_dict(state)
        assert f.step == e.step
        for a, b in zip(e.state_tensors(), f.state_tensors()):
            assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.mark.fuzz
def test_genuine_states_pass():
    r = random.Random(0)
    runs = [(fuzz.Run(PolicyConfig(seed=n, **kw), w), 40) for n, (kw, w) in enumerate(SPECIAL)]
    runs += [(fuzz.Run(fuzz.random_config(r), 2 if n % 5 == 4 else 0), 40) for n in range(100)]
    checked = 0
    for run, steps in runs:
        round_trip(run)  # the empty reservoir at step 0
        for _ in range(steps):
            run.step(r)
            round_trip(run)
            checked += 1
    assert checked > 4000


def test_a_round_trip_continues_exactly():
    r = random.Random(1)
    cfg = PolicyConfig(num_examples=50, capacity=8, seed=3, class_quotas=True, num_classes=3, balance_replay=True,
                       lam=40.0, gamma=1.0, max_wrong=2, quarantine_steps=3)
    a = fuzz.Run(cfg)
    for _ in range(25):
        a.step(r)
    b = fuzz.Run(cfg)
    b.engines[0].load_state_dict(a.engines[0].state_dict())
    for _ in range(25):
        batch = fuzz.random_batch(r, cfg)
        a.engines[0].update(**batch)
        b.engines[0].update(**batch)
        assert torch.equal(a.engines[0].draw(4), b.engines[0].draw(4))
    for x, y in zip(a.engines[0].state_tensors(), b.engines[0].state_tensors()):
        assert torch.equal(x, y)


def test_a_pending_device_error_is_genuine():
    """A CUDA engine's state can hold an error a skipped step left for the next
    check(): it loads (and is raised there); a half-written one does not."""
    e = Engine(PolicyConfig(num_examples=10, capacity=4))
    state = e.state_dict()
    state["counters"][10:13] = torch.tensor([1, 2, 10])
    Engine(e.config).load_state_dict(state)
    state["counters"][10:13] = torch.tensor([0, 2, 0])
    with pytest.raises(ValueError, match=r"error position counters\[11\] = 2 must be 0 with no error pending"):
        Engine(e.config).load_state_dict(state)


def test_exp_and_hash_mirror_the_native_code():
    g = random.Random(2)
    xs = [g.uniform(-800, 720) for _ in range(20000)] + [g.uniform(-2, 2) for _ in range(20000)]
    xs += [0.0, -0.0, math.inf, -math.inf, math.nan, 600.0, 2**-30, -745.1, 709.7]
    got = exp_det(torch.tensor(xs, dtype=torch.float64))
    want = torch.tensor([rng.exp(x) for x in xs], dtype=torch.float64)
    assert torch.equal(got.nan_to_num(7.0).view(torch.int64), want.nan_to_num(7.0).view(torch.int64))
    zs = [g.randrange(2**63) for _ in range(1000)]
    assert [v % 2**64 for v in mix13(torch.tensor(zs)).tolist()] == [rng.mix13(z) for z in zs]


# --- (2) targeted corruptions -------------------------------------------------------------


def _driven(cfg: PolicyConfig, steps: int, world: int = 0, B: int = 12) -> fuzz.Run:
    r = random.Random(5)
    run = fuzz.Run(cfg, world)
    for _ in range(steps):
        run.step(r, fuzz.random_batch(r, cfg, B))
    return run


@pytest.fixture(scope="module")
def engines() -> dict:
    plain = _driven(PolicyConfig(num_examples=50, capacity=8, seed=1, lam=0.5, gamma=1.0, max_wrong=2,
                                 quarantine_steps=5), 30)
    roomy = _driven(PolicyConfig(num_examples=50, capacity=16, seed=2), 1, B=5)
    quotas = _driven(PolicyConfig(num_examples=90, capacity=24, seed=3, class_quotas=True, num_classes=2), 40)
    sharded = _driven(PolicyConfig(num_examples=60, capacity=12, seed=4), 30, world=2)
    out = dict(plain=plain.engines[0], roomy=roomy.engines[0], quotas=quotas.engines[0], sharded=sharded.engines[0])
    assert out["plain"].size == 8 and 2 <= out["roomy"].size <= 5 and out["quotas"].size == 24
    return out


def members(e: Engine) -> dict:
    m = e.members()
    return dict(zip(m["index"].tolist(), m["slot"].tolist()))


def non_member(e: Engine) -> int:
    mem = members(e)
    return next(i for i in range(e.config.num_examples) if i not in mem)


def leaf_of(e: Engine) -> int:
    """The slot of a member that is a leaf of its class's leftist heap, not the root."""
    links = e.links
    for j in members(e).values():
        if links[j, 0] < 0 and links[j, 1] < 0 and links[j, 2] >= 0:
            return j
    raise AssertionError("no leaf below a root")


def _pos_out_of_range(s, e):
    s["pos"][non_member(e)] = 1_000_000


def _pos_mismatch(s, e):
    s["pos"][non_member(e)] = next(iter(members(e).values()))


def _pos_swapped(s, e):
    (i, j), (k, l) = list(members(e).items())[:2]
    s["pos"][i], s["pos"][k] = l, j


def _dup_free(s, e):
    s["free"][1] = s["free"][0]


def _class_root_other(s, e):
    s["classes"][0, 0] = s["classes"][1, 0]


def _heap_order(s, e):
    h = s["heap"]
    s0, s1 = int(h[0, 1]), int(h[1, 1])
    h[[0, 1]] = h[[1, 0]]
    flat = s["links"].view(-1)
    flat[s0], flat[s1] = 1, 0
    s["classes"][0, 0] = s1


def _link_cycle(s, e):
    a = leaf_of(e)
    links = s["links"]
    p = int(links[a, 2])
    links[p, 0 if int(links[p, 0]) == a else 1] = -1
    links[a, 0] = a
    links[a, 2] = a


def _hash_unreachable(s, e):
    pos = s["pos"]
    H = pos.numel()
    h = int((pos >= 0).nonzero()[0, 0])
    j = int(pos[h])
    g = int(mix13(torch.tensor([int(e.slots[j, 0])]))[0]) & (H - 1)
    empties = [q for q in range(H) if pos[(g + q) % H] < 0]
    e2 = (g + empties[1]) % H  # past the first empty entry of the probe run from home
    pos[h], pos[e2] = -1, j


def _set(name, where, value):
    def f(s, e):
        s[name][where] = value
    return f


def _member_slot(s, e):
    return next(iter(members(e).values()))


def _nan_key(s, e):
    s["slots"][_member_slot(s, e), 1] = math.nan


def _leaf(value):
    def f(s, e):
        P = s["tree"].numel() // 2
        s["tree"][P + _member_slot(s, e)] = value
    return f


def _drop_key(name):
    def f(s, e):
        del s[name]
    return f


CORRUPTIONS = [
    ("pos out of range", "plain", _pos_out_of_range, r"pos\[\d+\] = 1000000 is out of range \[-1, R=8\)"),
    ("pos/slots mismatch", "plain", _pos_mismatch, r"pos\[\d+\] = \d+ but slots\[\d+\] holds index \d+"),
    ("pos entries swapped", "plain", _pos_swapped, r"slots\[\d+\] holds index \d+ but pos\[\d+\] = \d+"),
    ("free top beyond R", "plain", _set("counters", 9, 9),
     r"free stack top counters\[9\] = 9 is out of range \[0, R=8\]"),
    ("free top negative", "plain", _set("counters", 9, -3), r"free stack top counters\[9\] = -3 is out of range"),
    ("free top != R - members", "roomy", lambda s, e: s["counters"].__setitem__(9, int(s["counters"][9]) - 1),
     r"free stack top counters\[9\] = \d+ but|admitted - evicted"),
    ("duplicate free slot", "roomy", _dup_free, r"free stack: free\[0\] = free\[1\] = \d+ \(a slot twice"),
    ("free slot of a member", "roomy", lambda s, e: s["free"].__setitem__(0, _member_slot(s, e)),
     r"free stack: free\[0\] = \d+ is the slot of a member"),
    ("bad class root", "quotas", _class_root_other, r"classes\[0\] root = \d+ is a member of class 1"),
    ("class root out of range", "quotas", _set("classes", (1, 0), 99), r"classes\[1\] root = 99 is out of range"),
    ("class count", "quotas", _set("classes", (1, 1), 3), r"classes\[1\] count = 3 but class 1 has \d+ members"),
    ("heap order broken", "plain", _heap_order, r"heap order broken: heap\[1\] \(key .*\) is weaker than its parent"),
    ("heap link cycle", "quotas", _link_cycle, r"links: slot \d+ \(class \d\) is on a cycle of parent links"),
    ("heap link out of range", "quotas", lambda s, e: s["links"].__setitem__((leaf_of(e), 0), 24),
     r"links\[\d+, 'left'\] = 24 is out of range \[-1, R=24\)"),
    ("NaN key", "plain", _nan_key, r"slots\[\d+, 'key'\] of a member is NaN"),
    ("key != its formula", "plain", lambda s, e: s["slots"].__setitem__((_member_slot(s, e), 1),
                                                                       float(s["slots"][_member_slot(s, e), 1]) + 1),
     r"slots\[\d+, 'key'\] = .* != alpha \* logp \+ lam \* step \+ ticket"),
    ("slot index not integral", "plain", lambda s, e: s["slots"].__setitem__((_member_slot(s, e), 0), 2.5),
     r"slots\[\d+, 'index'\] = 2.5 is not -1 \(empty\) or an index in \[0, N=50\)"),
    ("tree node != sum of children", "plain", lambda s, e: s["tree"].__setitem__(2, float(s["tree"][2]) + 1),
     r"tree\[2\] = .* != tree\[4\] \+ tree\[5\] = "),
    ("negative leaf", "plain", _leaf(-1.0), r"tree\[\d+\] = -1.0, the leaf of slot \d+ \(a member\), want "),
    ("NaN leaf", "plain", _leaf(math.nan), r"tree\[\d+\] = nan, the leaf of slot \d+ \(a member\), want "),
    ("leaf of an empty slot", "roomy", _set("tree", -1, 0.5), r"tree\[31\] = 0.5, the leaf of empty slot 15, want 0.0"),
    ("leaf beyond R", "quotas", _set("tree", -1, 0.5),
     r"tree\[63\] = 0.5, a leaf beyond R=24 \(position 31\), want 0.0"),
    ("step 10^12", "plain", _set("counters", 0, 10**12), r"step t counters\[0\] = 1000000000000 is out of range"),
    ("step negative", "plain", _set("counters", 0, -1), r"step t counters\[0\] = -1 is out of range"),
    ("t_ref > t", "plain", _set("counters", 1, 31), r"t_ref counters\[1\] = 31 is out of range \[0, t=30\]"),
    ("window head out of range", "plain", _set("counters", 8, 256),
     r"window head counters\[8\] = 256 is out of range \[0, W=256\)"),
    ("window count beyond W", "plain", _set("counters", 7, 257), r"window count counters\[7\] = 257 is out of range"),
    ("admitted total", "plain", _set("counters", 3, 0), r"admitted - evicted - graduated - quarantined"),
    ("NaN loss in the window", "plain", _set("window", 0, math.nan), r"window\[0\] = nan must be a finite loss"),
    ("table last_correct", "plain", _set("table", (3, 4), 0.5), r"table\[3, 'last_correct'\] = 0.5 is not -1, 0 or 1"),
    ("table step ahead", "plain", _set("table", (3, 3), 30.0), r"table\[3, 'last_seen'\] = 30 is not -1 or a step"),
    ("table NaN ema", "plain", _set("table", (3, 1), math.nan), r"table\[3, 'ema_loss'\] = nan is not finite"),
    ("balance off but set", "plain", _set("balance", (0, 2), 2.0), r"balance\[0, 'factor'\] = 2.0 must be 1.0"),
    ("hash entry out of range", "sharded", _set("pos", 0, 12), r"pos\[0\] = 12 is out of range \[-1, R=12\)"),
    ("hash entry unreachable", "sharded", _hash_unreachable,
     r"pos\[\d+\] = \d+ \(index \d+, home \d+\) is unreachable: pos\[\d+\] on its probe run is empty"),
    ("missing key", "plain", _drop_key("links"), r"engine state: missing key 'links'"),
    ("not a tensor", "plain", lambda s, e: s.__setitem__("tree", s["tree"].tolist()),
     r"engine state: tree must be a torch.Tensor, got list"),
    ("wrong dtype", "plain", lambda s, e: s.__setitem__("pos", s["pos"].long()),
     r"state_dict\['pos'\] has shape/dtype \[50\]/torch.int64, want \[50\]/torch.int32"),
    ("config not a dict", "plain", lambda s, e: s.__setitem__("config", 3), r"config must be a dict"),
    ("config with an unknown key", "plain", lambda s, e: s.__setitem__("config", {**s["config"], "beta": 1}),
     r"config is not a valid PolicyConfig"),
    ("another config", "plain", lambda s, e: s.__setitem__("config", {**s["config"], "seed": 9}),
     r"state_dict was saved with a different config"),
    ("made: bad step", "sharded", lambda s, e: s.__setitem__("made", [(10**6, torch.tensor([1]),
                                                                       torch.tensor([3.0], dtype=torch.float64))]),
     r"made\[0\] step = 1000000 is not a step in \[0, t=30\)"),
]


@pytest.mark.parametrize("what,base,corrupt,pattern", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_a_corruption_is_refused_and_changes_nothing(engines, what, base, corrupt, pattern):
    src = engines[base]
    state = src.state_dict()
    corrupt(state, src)
    target = Engine(src.config, shard=src.shard)
    target.load_state_dict(src.state_dict())  # a state to keep
    before, step, made = full_state(target), target.step, list(target._made)
    with pytest.raises(ValueError, match=pattern) as info:
        target.load_state_dict(state)
    assert str(info.value).startswith("engine state: ")
    assert_state_unchanged(before, target)
    assert target.step == step and target._made == made


def test_not_a_dict():
    with pytest.raises(ValueError, match="engine state: must be a dict"):
        Engine(PolicyConfig(num_examples=5, capacity=2)).load_state_dict([1, 2])


def test_every_tensor_is_checked(engines):
    """A bit flip in a member's row of each state tensor with structure is refused."""
    e = engines["quotas"]
    j = leaf_of(e)
    for name, where in [("slots", (j, 0)), ("links", (j, 2)), ("classes", (0, 1)), ("tree", e.tree.numel() // 2 + j),
                        ("counters", 9), ("free", -1), ("pos", int(e.slots[j, 0]))]:
        state = e.state_dict()
        x = state[name]
        bits = x[where].view({8: torch.int64, 4: torch.int32}[x.element_size()])
        bits ^= 1 << 20
        with pytest.raises(ValueError, match="engine state: "):
            Engine(e.config).load_state_dict(state)


# --- (3) random corruptions, in worker subprocesses -----------------------------------------


@pytest.mark.fuzz
def test_random_corruptions_never_crash_or_hang():
    counts, failures = fuzz.fuzz(cases=300, seed=20240, chunk=300, case_timeout=20.0)
    assert not failures, failures[:5]
    assert counts["refused"] > 150 and counts["accepted"] > 20, counts


@pytest.mark.fuzz
def test_the_watchdog_attributes_crashes_and_hangs():
    counts, failures = fuzz.fuzz(cases=3, seed=1, case_timeout=3.0, env={"HARDMIX_FUZZ_SIMULATE": "crash:1,hang:2"},
                                 pool_size=2)
    assert [(n, what) for n, what, _ in failures] == [(1, "crash"), (2, "hang")]
    assert "SIGSEGV" in failures[0][2]
    assert counts["refused"] + counts["accepted"] == 1  # case 0


def test_check_state_is_importable_alone():
    assert set(STATE_TENSORS) <= set(Engine(PolicyConfig(num_examples=3, capacity=2)).state_dict())
    check_state(Engine(PolicyConfig(num_examples=3, capacity=2)).state_dict(), PolicyConfig(num_examples=3, capacity=2),
                None)


@pytest.mark.fuzz
def test_random_corruptions_of_sampler_states_never_crash_or_hang():
    """Whole ReplaySampler states (engine, logged updates, batch records,
    positions) with one element or field corrupted: refused by name, or
    loaded and trained on for 20 batches."""
    counts, failures = fuzz.fuzz(cases=200, seed=7, chunk=200, case_timeout=20.0, sampler=True)
    assert not failures, failures[:5]
    assert counts["refused"] > 80 and counts["accepted"] > 20, counts


# --- (4) the N-sized state in memory advised for huge pages ------------------------------

def _vm_flags(addr: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds ``addr``."""
    flags, inside = None, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= addr < hi
            elif inside and head == "VmFlags:":
                flags = line.split()[1:]
    assert flags is not None, f"no mapping holds {addr:#x}"
    return flags


@pytest.mark.skipif(not os.path.exists("/sys/kernel/mm/transparent_hugepage"),
                    reason="needs Linux with transparent huge pages")
def test_large_state_lies_in_huge_page_memory_and_steps_alike():
    from hardmix.engine import host_filled

    small = host_filled((5, 3), torch.float64, -1.0)
    assert torch.equal(small, torch.full((5, 3), -1.0, dtype=torch.float64))
    big = host_filled((600_000,), torch.int32, -1)  # 2.4 MB
    assert big.dtype == torch.int32 and big.shape == (600_000,) and bool((big == -1).all())
    assert big.data_ptr() % (2 << 20) == 0 and "hg" in _vm_flags(big.data_ptr())

    cfg = PolicyConfig(num_examples=600_000, capacity=512, seed=3)  # table 38 MB, pos 2.4 MB
    advised, plain = Engine(cfg), Engine(cfg)
    for name in ("table", "pos"):
        t = getattr(advised, name)
        assert t.data_ptr() % (2 << 20) == 0 and "hg" in _vm_flags(t.data_ptr()), name
        setattr(plain, name, t.clone())  # ordinary memory
        assert "hg" not in _vm_flags(getattr(plain, name).data_ptr()), name
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        idx = torch.randint(0, 600_000, (700,), generator=g)
        loss = torch.rand(700, generator=g)
        drawn = [e.update(idx, loss) or e.draw(64, idx[:100]) for e in (advised, plain)]
        assert torch.equal(*drawn)
    for name in STATE_TENSORS:
        assert torch.equal(getattr(advised, name), getattr(plain, name)), name


def test_without_huge_page_advice_the_state_is_an_ordinary_tensor(monkeypatch):
    """Where mmap cannot advise huge pages (not Linux), host_filled falls back to torch.full."""
    import mmap

    from hardmix.engine import host_filled

    monkeypatch.delattr(mmap, "MADV_HUGEPAGE", raising=False)
    t = host_filled((600_000,), torch.int32, -1)
    assert t.dtype == torch.int32 and t.shape == (600_000,) and bool((t == -1).all())
    assert t.untyped_storage().nbytes() == 600_000 * 4  # (no alignment slack: not an mmap)
