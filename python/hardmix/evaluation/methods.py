"""The hardmix methods: the README quickstart loop, task by task.

Every method builds ``ReplaySampler(N, batch_size, capacity, replay_fraction,
warmup_steps, seed)`` as the quickstart does (i.i.d. protocols warm up for
one epoch of plain batches; continual ones replay from the start, as the
baselines do), plus the keywords of its variant (:data:`VARIANTS`):

- ``hardmix``: nothing else: the defaults.
- ``hardmix-reservoir``: the ablation with every policy mechanism off
  (``alpha = lam = gamma = 0``, no class balance, no strikes): classic
  reservoir replay through hardmix; it must match the baseline ``er``.
- ``hardmix-ace``: the ER-ACE loss (:func:`hardmix.losses.ace_cross_entropy`)
  with uniform replay from the class-balanced memory (``balance_replay=False``:
  ER-ACE and class-balanced replay correct the same bias towards the newest
  classes, and together they over-correct: the newest classes, never
  replayed, are then never told apart from the older ones).
- ``hardmix-der``: the defaults and DER++-style logit replay
  (:func:`hardmix.losses.logit_replay` with weight :data:`DER_ALPHA`, logits
  kept at admission).
- ``hardmix-ace-der``: both, as ``hardmix-ace`` replays.

The losses reported to ``update()`` are always the plain per-example
cross-entropy: the loss helpers change what is trained on, not what the
policy sees.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import hardmix

from .baselines import _setup, iid_steps
from .metrics import Monitor, Result
from .streams import Stream

OFF = {"alpha": 0.0, "lam": 0.0, "gamma": 0.0, "class_quotas": False, "max_wrong": 0}

VARIANTS: dict[str, dict] = {
    "hardmix": {},
    "hardmix-reservoir": {"policy": OFF},
    "hardmix-ace": {"ace": True, "policy": {"balance_replay": False}},
    "hardmix-der": {"der": True},
    "hardmix-ace-der": {"ace": True, "der": True, "policy": {"balance_replay": False}},
}

ABLATIONS: dict[str, dict] = {
    "hardmix-no-balance": {"policy": {"balance_replay": False}},
    "hardmix-no-quotas": {"policy": {"class_quotas": False}},
    "hardmix-no-strikes": {"policy": {"max_wrong": 0}},
    "hardmix-alpha": {"policy": {"alpha": 0.5}},
}
"""One mechanism of the defaults changed at a time (``eval --methods``; not
run by default): no class-balanced replay; no class quotas (and so no
balanced replay); no strikes; admission weighted by the loss (alpha 0.5)."""

DER_ALPHA = 0.5
"""Weight of the logit-replay term (DER++'s alpha; 0.5 is the middle of the
values its authors report across benchmarks)."""


def run_hardmix(stream: Stream, seed: int, monitor: Monitor, *, policy: dict | None = None, ace: bool = False,
                der: bool = False) -> Result:
    p = stream.protocol
    model, opt = _setup(stream, seed)
    iid = p.kind == "iid"
    warmup = math.ceil(len(stream.tasks[0]) / p.batch_size) if iid else 0
    sampler = hardmix.ReplaySampler(len(stream.y_train), batch_size=p.batch_size, capacity=p.capacity,
                                    replay_fraction=p.replay_fraction, warmup_steps=warmup, seed=seed,
                                    store_logits=der, **(policy or {}))
    loader = DataLoader(hardmix.WithIndex(TensorDataset(stream.x_train, stream.y_train)), batch_sampler=sampler)
    budget = iid_steps(stream) if iid else None
    fresh_per_batch = p.batch_size - hardmix.schedules.replay_count(p.replay_fraction, p.batch_size)

    def memory():
        return sampler.reservoir()["index"]

    for task in stream.tasks:
        sampler.set_fresh(task)
        monitor.task_start(budget or p.epochs * math.ceil(len(task) / fresh_per_batch))
        epoch = 0
        while (epoch < p.epochs) if budget is None else (monitor.steps < budget):
            sampler.set_epoch(epoch)
            for idx, x, y in loader:
                logits = model(x)
                losses = F.cross_entropy(logits, y, reduction="none")
                if ace:
                    loss = hardmix.losses.ace_cross_entropy(logits, y, sampler.replayed(idx)).mean()
                else:
                    loss = losses.mean()
                if der:
                    stored, has = sampler.stored_logits(idx)
                    loss = loss + DER_ALPHA * hardmix.losses.logit_replay(logits, stored, has)
                loss.backward()
                opt.step()
                opt.zero_grad()
                sampler.update(idx, losses.detach(), logits=logits.detach(), targets=y)
                monitor.step(model, memory() if monitor.curve_points else None)
                if budget is not None and monitor.steps == budget:
                    break
            epoch += 1
        monitor.task_end(model)
    return monitor.finish(model, memory())
