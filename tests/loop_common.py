"""What the framework loops of tests/test_integrations.py share: the task and
the command line (OUT, --workers, --save-at K,K2,..., --ckpt-dir, --resume)."""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import TensorDataset

N, C, D, B, EPOCHS = 240, 4, 8, 16, 3


def make_data() -> TensorDataset:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(N, D, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return TensorDataset(x, y)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--save-at", default="", help="comma-separated steps after which to save")
    ap.add_argument("--ckpt-dir", default="checkpoints")
    ap.add_argument("--resume")
    return ap


def save_steps(args) -> set[int]:
    return {int(k) for k in args.save_at.split(",") if k}
