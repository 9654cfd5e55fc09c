"""Snapshots of the native engine and the reference in one comparable form."""

from __future__ import annotations

import torch

from hardmix.engine import STATE_TENSORS as STATE_NAMES
from hardmix.engine import Engine
from hardmix.reference import NEW_ROW, ReferencePolicy


def engine_snapshot(e: Engine) -> dict:
    c = e.counters.tolist()
    mem = e.members()
    members = {
        i: (slot, key, logp, s, cls, adm, best, ticket)
        for i, slot, key, logp, s, cls, adm, best, ticket in zip(
            mem["index"].tolist(), mem["slot"].tolist(), mem["key"].tolist(), mem["logp"].tolist(),
            mem["step"].tolist(), mem["cls"].tolist(), mem["admitted"].tolist(), mem["best_loss"].tolist(),
            mem["ticket"].tolist(),
        )
    }
    pos = {i: s for i, s in enumerate(e.pos.tolist()) if s >= 0}
    roots = e.classes[:, 0].tolist()
    weakest = [int(e.slots[r, 0]) if r >= 0 else None for r in roots]
    return dict(
        t=c[0], t_ref=c[1], totals=e.totals(), members=members, pos=pos,
        table=e.table.tolist(), free=e.free[: c[9]].tolist(), tree=e.tree.tolist(),
        window=sorted(e.window[: c[7]].tolist()), counts=e.classes[:, 1].tolist(), weakest=weakest,
        balance=e.balance.tolist(),
    )


def reference_snapshot(r: ReferencePolicy) -> dict:
    members = {
        m.index: (slot, m.key, m.logp, m.s, m.cls, m.admitted, m.best_loss, m.ticket)
        for slot, m in enumerate(r.slots) if m is not None
    }
    table = [list(r.table.get(i, NEW_ROW)) for i in range(r.config.num_examples)]
    weakest = [r.weakest(hc).index if r.count[hc] > 0 else None for hc in range(r.heap_classes)]
    return dict(
        t=r.t, t_ref=r.t_ref, totals=dict(r.totals), members=members, pos=dict(r.pos),
        table=table, free=list(r.free), tree=list(r.tree.node),
        window=sorted(r.window), counts=list(r.count), weakest=weakest,
        balance=[list(row) for row in r.balance],
    )


def assert_same_state(e: Engine, r: ReferencePolicy, where: str = "") -> None:
    a, b = engine_snapshot(e), reference_snapshot(r)
    for k in a:
        assert a[k] == b[k], f"{where}: '{k}' differs\n native:    {a[k]}\n reference: {b[k]}"


def full_state(e: Engine) -> dict[str, torch.Tensor]:
    """Every tensor of the engine's state, cloned."""
    return {name: t.clone() for name, t in zip(STATE_NAMES, e.state_tensors())} | {"config": e.config_vector.clone()}


def assert_state_unchanged(before: dict[str, torch.Tensor], e: Engine) -> None:
    """Byte for byte: NaN payloads and -0.0 included."""
    after = full_state(e)
    for name, t in before.items():
        assert t.dtype == after[name].dtype and t.shape == after[name].shape, name
        assert torch.equal(t.view(torch.uint8), after[name].view(torch.uint8)), f"state tensor {name!r} changed"
