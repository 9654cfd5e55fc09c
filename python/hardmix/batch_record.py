"""The record of a batch the sampler yielded: what ``update()`` checks its
indices against, and what ``weights()`` needs (the facts of the replay draw
that made it), from the draw until the batch's update arrives. A checkpoint
holds the records of the batches yielded and not updated as plain dicts
(:meth:`BatchRecord.state`); :meth:`BatchRecord.from_state` reads one back
once :mod:`hardmix.checkpoint` has validated it. The weights come from the
facts (:meth:`BatchRecord.importance_weights`); the sampler keeps them in
``weights`` once asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass(eq=False, slots=True)
class BatchRecord:
    """One batch yielded and not updated (see the module docstring)."""

    g: int  # the batch's number since the start: the update it gets is update g
    indices: torch.Tensor  # int64 [B]: its fresh part, its replay part, then fill-ins
    fresh: int  # entries of each part
    replay: int
    fill: int
    m: int  # replay entries planned (fill-ins make up for members short)
    w: torch.Tensor  # float64 [B]: each entry's replay weight at the draw (0: not a member)
    eligible: float  # the total replay weight the draw could pick from
    drawn_w: torch.Tensor  # float64: the replay weights of all ranks' drawn members
    f_all: int  # fresh entries over all ranks
    size_all: int  # entries over all ranks
    n: int  # examples in the pass the fresh part comes from
    outside: int  # members outside the restricted fresh set (set_fresh), else 0
    in_fresh: torch.Tensor | None  # bool [B]: in the restricted fresh set (None: unrestricted)
    stored: torch.Tensor | None = None  # float32 [replay, C]: the replayed members' logits at admission
    stored_ok: torch.Tensor | None = None  # bool [replay]: whether each has stored logits
    weights: torch.Tensor | None = None  # float32 [B]: the importance weights, once weights() asked
    listed: list[int] | None = None  # ``indices`` as the list to yield, when made ahead (given away once)

    def state(self) -> dict:
        """The record as a checkpoint holds it (its tensors shared; the
        weights are left out: a restore computes them again from the facts)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _OPTIONAL}
        if self.stored is not None:
            out.update(stored=self.stored, stored_ok=self.stored_ok)
        return out

    def importance_weights(self, num_replicas: int, pin: bool = False) -> torch.Tensor:
        """The batch's importance weights (see ReplaySampler.weights) from the
        draw's facts: float32 [B] on the host (in pinned memory with
        ``pin``), computed by ``hardmix::replay_weights``."""
        n = self.n
        w, drawn_w = self.w, self.drawn_w
        if w.dtype != torch.float64 or drawn_w.dtype != torch.float64:  # (a restored record may hold float32)
            w, drawn_w = w.double(), drawn_w.double()
        out = torch.empty(self.indices.numel(), dtype=torch.float32, pin_memory=pin)
        torch.ops.hardmix.replay_weights(w.contiguous(), drawn_w.contiguous(), self.in_fresh, self.eligible,
                                         self.m * num_replicas, self.fresh + self.replay, n,
                                         self.f_all, self.size_all * n / (n + self.outside), out)
        return out

    @classmethod
    def from_state(cls, state: dict) -> "BatchRecord":
        """A record from :meth:`state`'s dict (validated by hardmix.checkpoint)."""
        return cls(**{k: state[k] for k in STATE_KEYS}, stored=state.get("stored"),
                   stored_ok=state.get("stored_ok"))


_OPTIONAL = ("stored", "stored_ok", "weights", "listed")
STATE_KEYS = tuple(f.name for f in fields(BatchRecord) if f.name not in _OPTIONAL)
"""The keys every record's checkpoint dict has."""
