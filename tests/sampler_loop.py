"""The quickstart training loop on a small synthetic task, interruptible and
resumable, for the sampler tests (run in-process or as a script in a new process).

    python tests/sampler_loop.py OUT.pt [--workers N] [--loader stateful|plain]
        [--stop-after K --save CKPT.pt] [--resume CKPT.pt] [--epochs E]

writes {"batches": [...], "members": tensor, "stats": {...}} to OUT.pt.
"""

from __future__ import annotations

import argparse
import io

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import hardmix

N, C, D = 600, 4, 12


def make_data() -> TensorDataset:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(N, D, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    flip = torch.rand(N, generator=g) < 0.1  # some hard, mislabeled examples
    y[flip] = torch.randint(0, C, (int(flip.sum()),), generator=g)
    return TensorDataset(x, y)


def make_sampler(defaults: bool = False, **kw) -> hardmix.ReplaySampler:
    """The loop's sampler; with ``defaults`` only the quickstart's arguments
    (class count and replay lag decided at the first update) and kept logits."""
    args = dict(batch_size=32, capacity=96, replay_fraction=0.25, warmup_steps=10, seed=7)
    if defaults:
        args["store_logits"] = True
    else:
        args.update(replay_lag=8, lam=0.01, class_quotas=True, num_classes=C, max_wrong=6, quarantine_steps=20)
    args.update(kw)
    return hardmix.ReplaySampler(N, **args)


def run(epochs: int = 3, workers: int = 0, loader: str = "plain", stop_after: int | None = None,
        resume: bytes | None = None, sampler_kw: dict | None = None, defaults: bool = False) -> dict:
    """Train; return what was yielded, the final reservoir and (if stopped) a checkpoint."""
    torch.manual_seed(0)
    data = hardmix.WithIndex(make_data())
    sampler = make_sampler(defaults, **(sampler_kw or {}))
    model = torch.nn.Sequential(torch.nn.Linear(D, 32), torch.nn.ReLU(), torch.nn.Linear(32, C))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if loader == "stateful":
        from torchdata.stateful_dataloader import StatefulDataLoader

        dl = StatefulDataLoader(data, batch_sampler=sampler, num_workers=workers)
    else:
        dl = DataLoader(data, batch_sampler=sampler, num_workers=workers)
    start_epoch, step = 0, 0
    if resume is not None:
        ck = torch.load(io.BytesIO(resume), weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        start_epoch, step = ck["epoch"], ck["step"]
        if loader == "stateful":
            dl.load_state_dict(ck["loader"])
        else:
            sampler.load_state_dict(ck["sampler"])
    batches, weights, stored = [], [], []
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        for idx, x, y in dl:
            logits = model(x)
            losses = F.cross_entropy(logits, y, reduction="none")
            w = sampler.weights(idx)
            if defaults:
                stored.append(sampler.stored_logits(idx))
            (losses * w).mean().backward()
            opt.step()
            opt.zero_grad()
            sampler.update(idx, losses.detach(), logits=logits.detach(), targets=y)
            batches.append(idx.tolist())
            weights.append(w)
            step += 1
            if stop_after is not None and step == stop_after:
                ck = {"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch, "step": step}
                if loader == "stateful":
                    ck["loader"] = dl.state_dict()
                else:
                    ck["sampler"] = sampler.state_dict()
                buf = io.BytesIO()
                torch.save(ck, buf)
                return {"batches": batches, "checkpoint": buf.getvalue()}
    return {"batches": batches, "weights": weights, "members": sampler.reservoir(), "stats": sampler.stats(),
            "lens": len(sampler), "table": sampler.engine.table, "stored": stored, "lag": sampler.replay_lag,
            "config": sampler.config}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--loader", default="plain")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--resume")
    a = ap.parse_args()
    resume = open(a.resume, "rb").read() if a.resume else None
    res = run(a.epochs, a.workers, a.loader, resume=resume)
    torch.save({"batches": res["batches"], "members": res["members"]}, a.out)


if __name__ == "__main__":
    main()
