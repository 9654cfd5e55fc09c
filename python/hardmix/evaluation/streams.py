"""The protocols of the evaluation suite: data, tasks, model and budget.

A :class:`Stream` is everything one training run needs except the method:
training data (with the labels training sees, possibly noisy), clean test
data, the tasks (continual protocols: the fresh data of each task, in order;
i.i.d. protocols: one task with everything), the model to train and the
budget. Streams depend on the seed only through label noise, imbalance and
permutations; the train/test split is fixed.

Protocols (``PROTOCOLS``):

- ``ci-*``: class-incremental, 5 tasks of 2 classes, one 10-way head.
  ``ci-digits`` (scikit-learn's digits, MLP 64-128-10, reservoir 200), its
  buffer sizes ``-r50`` and ``-r600``, label noise ``-sym20``/``-sym40``
  (another class uniformly) and ``-pair30`` (class c becomes c + 1 mod 10),
  ``-imbalance`` (5 random classes keep 10-25% of their examples);
  ``ci-fmnist`` (Fashion-MNIST, MLP 784-256-10, reservoir 1000) and
  ``ci-fmnist-cnn`` (a 6,000-image subset, a small convolutional network,
  reservoir 300).
- ``di-digits-permuted``: domain-incremental: the same 10 classes in 5 tasks,
  each under its own fixed permutation of the 64 pixels (test: every task's
  permutation of the test set).
- ``iid-*``: ordinary training, one task: ``iid-digits``, ``iid-digits-sym30``,
  ``iid-digits-longtail`` (class c keeps 10^(-c/9) of its examples: 10x
  between the first and the last), ``iid-fmnist-sym30`` (a 10,000-image
  subset).

Fashion-MNIST is read from Debian's ``dataset-fashion-mnist`` package.
"""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass

import torch

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


@dataclass(frozen=True)
class Protocol:
    """How a stream is built and trained (see the module docstring)."""

    name: str
    kind: str  # "continual" | "iid"
    data: str  # "digits" | "fmnist"
    model: str = "mlp"  # "mlp" | "cnn"
    capacity: int = 200
    epochs: int = 5  # per task (iid: the whole budget, in epochs of plain training)
    batch_size: int = 32
    replay_fraction: float = 0.5
    noise: str = ""  # "" | "sym" | "pair"
    noise_rate: float = 0.0
    imbalance: str = ""  # "" | "rare5" | "longtail"
    permuted: bool = False  # domain-incremental
    subset: int = 0  # training examples kept (0: all), stratified
    lr: float = 1e-3


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("ci-digits", "continual", "digits"),
    Protocol("ci-digits-r50", "continual", "digits", capacity=50),
    Protocol("ci-digits-r600", "continual", "digits", capacity=600),
    Protocol("ci-digits-sym20", "continual", "digits", noise="sym", noise_rate=0.2),
    Protocol("ci-digits-sym40", "continual", "digits", noise="sym", noise_rate=0.4),
    Protocol("ci-digits-pair30", "continual", "digits", noise="pair", noise_rate=0.3),
    Protocol("ci-digits-imbalance", "continual", "digits", imbalance="rare5"),
    Protocol("di-digits-permuted", "continual", "digits", permuted=True, epochs=2),
    Protocol("ci-fmnist", "continual", "fmnist", capacity=1000, epochs=1, batch_size=128),
    Protocol("ci-fmnist-cnn", "continual", "fmnist", model="cnn", capacity=300, epochs=2, subset=6_000),
    Protocol("iid-digits", "iid", "digits", epochs=15, replay_fraction=0.25),
    Protocol("iid-digits-sym30", "iid", "digits", epochs=15, replay_fraction=0.25, noise="sym", noise_rate=0.3),
    Protocol("iid-digits-longtail", "iid", "digits", epochs=15, replay_fraction=0.25, imbalance="longtail"),
    Protocol("iid-fmnist-sym30", "iid", "fmnist", epochs=4, batch_size=64, replay_fraction=0.25, noise="sym",
             noise_rate=0.3, subset=10_000, capacity=1000),
)}

QUICK = ("ci-digits", "ci-digits-sym40", "di-digits-permuted", "iid-digits-sym30")
"""The subset CI runs (2 seeds): one protocol of each kind, one with noise."""


@dataclass
class Stream:
    """One protocol's data for one seed."""

    protocol: Protocol
    x_train: torch.Tensor  # [n, ...] float32
    y_train: torch.Tensor  # [n] the labels training sees
    y_true: torch.Tensor  # [n] the true labels
    x_test: torch.Tensor
    y_test: torch.Tensor  # clean
    tasks: list[torch.Tensor]  # per task: training indices (fresh data of the task)
    test_tasks: list[torch.Tensor]  # per task: test indices it is scored on
    num_classes: int = 10

    @property
    def noisy(self) -> torch.Tensor:
        """bool [n]: the label training sees is wrong."""
        return self.y_train != self.y_true

    @property
    def name(self) -> str:
        return self.protocol.name


# --- data --------------------------------------------------------------------


def _split(x: torch.Tensor, y: torch.Tensor, test_share: float) -> tuple:
    """A fixed stratified split (the same for every seed: seeds vary training)."""
    g = torch.Generator().manual_seed(0)
    test = torch.zeros(len(y), dtype=torch.bool)
    for c in y.unique():
        idx = (y == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        test[idx[: int(round(test_share * len(idx)))]] = True
    return x[~test], y[~test], x[test], y[test]


def load_digits() -> tuple:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    return _split(x, y, 0.3)


def _idx(path: str) -> torch.Tensor:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim :]), dtype=torch.uint8).reshape(dims)


def load_fmnist(folder: str = FMNIST_DIR) -> tuple:
    """Fashion-MNIST from IDX files: x float32 [n, 784] in [0, 1], y int64."""
    f = lambda name: os.path.join(folder, name)  # noqa: E731
    xtr = _idx(f("train-images-idx3-ubyte.gz")).reshape(-1, 784).float() / 255.0
    ytr = _idx(f("train-labels-idx1-ubyte.gz")).long()
    xte = _idx(f("t10k-images-idx3-ubyte.gz")).reshape(-1, 784).float() / 255.0
    yte = _idx(f("t10k-labels-idx1-ubyte.gz")).long()
    return xtr, ytr, xte, yte


def fmnist_available(folder: str = FMNIST_DIR) -> bool:
    return os.path.exists(os.path.join(folder, "train-images-idx3-ubyte.gz"))


_CACHE: dict = {}


def _base(data: str, folder: str) -> tuple:
    key = (data, folder)
    if key not in _CACHE:
        _CACHE[key] = load_digits() if data == "digits" else load_fmnist(folder)
    return _CACHE[key]


def _stratified(y: torch.Tensor, n: int) -> torch.Tensor:
    """A fixed stratified subset of about n indices (sorted)."""
    g = torch.Generator().manual_seed(1)
    share = n / len(y)
    keep = []
    for c in y.unique():
        idx = (y == c).nonzero().squeeze(1)
        keep.append(idx[torch.randperm(len(idx), generator=g)[: int(round(share * len(idx)))]])
    return torch.cat(keep).sort().values


def make_stream(name: str, seed: int, fmnist_dir: str = FMNIST_DIR) -> Stream:
    """The stream of protocol ``name`` for ``seed``."""
    if name not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {tuple(PROTOCOLS)}, got {name!r}")
    p = PROTOCOLS[name]
    g = torch.Generator().manual_seed(1000 + seed)
    xtr, ytr, xte, yte = _base(p.data, fmnist_dir)
    if p.subset:
        keep = _stratified(ytr, p.subset)
        xtr, ytr = xtr[keep], ytr[keep]
        keep_te = _stratified(yte, max(2000, p.subset // 5))
        xte, yte = xte[keep_te], yte[keep_te]
    C = 10
    if p.imbalance == "rare5":  # half the classes (at random) keep 10-25% of their examples
        keep = torch.ones(len(ytr), dtype=torch.bool)
        for c in torch.randperm(C, generator=g)[:5].tolist():
            idx = (ytr == c).nonzero().squeeze(1)
            share = 0.10 + 0.15 * float(torch.rand(1, generator=g))
            drop = idx[torch.randperm(len(idx), generator=g)[max(1, math.ceil(share * len(idx))):]]
            keep[drop] = False
        xtr, ytr = xtr[keep], ytr[keep]
    elif p.imbalance == "longtail":  # class order at random; class k-th keeps 10^(-k/9)
        keep = torch.ones(len(ytr), dtype=torch.bool)
        for k, c in enumerate(torch.randperm(C, generator=g).tolist()):
            idx = (ytr == c).nonzero().squeeze(1)
            n = max(1, math.ceil(len(idx) * 10 ** (-k / (C - 1))))
            keep[idx[torch.randperm(len(idx), generator=g)[n:]]] = False
        xtr, ytr = xtr[keep], ytr[keep]
    y_true = ytr.clone()
    if p.noise:
        flip = torch.rand(len(ytr), generator=g) < p.noise_rate
        if p.noise == "sym":
            other = (ytr + torch.randint(1, C, (len(ytr),), generator=g)) % C
        else:
            other = (ytr + 1) % C
        ytr = torch.where(flip, other, ytr)
    if p.model == "cnn":
        side = int(round(math.sqrt(xtr.shape[1])))
        xtr, xte = xtr.view(-1, 1, side, side), xte.view(-1, 1, side, side)
    if p.permuted:  # T copies of the data, one per task, each under its own pixel permutation
        T = 5
        perms = [torch.arange(xtr.shape[1])] + [torch.randperm(xtr.shape[1], generator=g) for _ in range(T - 1)]
        n, nt = len(ytr), len(yte)
        x_train = torch.cat([xtr[:, q] for q in perms])
        x_test = torch.cat([xte[:, q] for q in perms])
        tasks = [torch.arange(k * n, (k + 1) * n) for k in range(T)]
        test_tasks = [torch.arange(k * nt, (k + 1) * nt) for k in range(T)]
        return Stream(p, x_train, ytr.repeat(T), y_true.repeat(T), x_test, yte.repeat(T), tasks, test_tasks, C)
    if p.kind == "iid":
        tasks = [torch.arange(len(ytr))]
        test_tasks = [torch.arange(len(yte))]
    else:  # tasks by true class: a mislabeled example arrives with its true class's task
        pairs = [[2 * t, 2 * t + 1] for t in range(5)]
        tasks = [torch.isin(y_true, torch.tensor(c)).nonzero().squeeze(1) for c in pairs]
        test_tasks = [torch.isin(yte, torch.tensor(c)).nonzero().squeeze(1) for c in pairs]
    return Stream(p, xtr, ytr, y_true, xte, yte, tasks, test_tasks, C)


# --- models --------------------------------------------------------------------


def make_model(stream: Stream, seed: int) -> torch.nn.Module:
    """The protocol's model, initialised from ``seed`` (the same for every method)."""
    torch.manual_seed(seed)
    C = stream.num_classes
    if stream.protocol.model == "cnn":
        side = stream.x_train.shape[-1]
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(32 * (side // 4) ** 2, C),
        )
    hidden = 256 if stream.protocol.data == "fmnist" else 128
    return torch.nn.Sequential(torch.nn.Linear(stream.x_train.shape[1], hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, C))
