"""Does it help? Class-incremental training with and without hardmix.

``python -m hardmix demo`` trains a small MLP on scikit-learn's digits as a
stream of 5 tasks of 2 classes (class-incremental: one 10-way head, the
classes of earlier tasks never come back as fresh data) and compares

- ``none``: no memory (ReplaySampler with replay_fraction 0: plain training);
- ``reservoir``: experience replay from a random reservoir of the same
  capacity: ReplaySampler with ``alpha=0, lam=0, gamma=0`` (classic reservoir
  sampling, uniform replay) and hardmix's replay fraction;
- ``hardmix``: ReplaySampler with its defaults;
- ``greedy`` (eval only): "keep the highest loss" (``alpha=50``, uniform
  replay), which the literature says fills up with the newest task and with
  mislabeled examples.

Every run uses only the public API: ``ReplaySampler``, ``WithIndex``,
``set_fresh``, ``set_epoch``, ``update`` (and ``stats``/``reservoir`` to report).

Figures: *final average accuracy* (the mean over tasks of the accuracy on the
task's test classes after the last task), *average forgetting* (Chaudhry et
al. 2018: for each task but the last, its best accuracy at the end of a task
before the last minus its final accuracy, averaged), *worst-class accuracy*
(final, over the 10 classes) and, with label noise, the share of mislabeled
examples in the reservoir at the end against the share in the stream.

``python -m hardmix eval`` runs the comparison over several seeds and
protocols (``digits``, ``digits-noise20``, ``digits-noise40``,
``digits-imbalance``, ``fmnist``); see ``--help``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import hardmix

PROTOCOLS = ("digits", "digits-noise20", "digits-noise40", "digits-imbalance", "fmnist")
METHODS = ("none", "reservoir", "hardmix", "greedy")
FMNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist

# What each method passes to ReplaySampler beyond N, batch size, capacity,
# seed and num_classes. "hardmix" passes nothing: it is the defaults.
# The baselines switch off everything hardmix adds: no class quotas, no
# quarantine, no graduation; they keep hardmix's replay fraction.
_PLAIN = {"class_quotas": False, "max_wrong": 0, "graduation": 0.0}
METHOD_ARGS = {
    "none": {"replay_fraction": 0.0},
    "reservoir": {"alpha": 0.0, "lam": 0.0, "gamma": 0.0, **_PLAIN},
    "hardmix": {},
    "greedy": {"alpha": 50.0, "lam": 0.0, "gamma": 0.0, **_PLAIN},
}


@dataclass
class Stream:
    """A class-incremental benchmark: training data (labels possibly noisy),
    clean test data, and the tasks as lists of classes."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor  # the labels training sees
    noisy: torch.Tensor  # bool [n_train]: y_train differs from the true label
    x_test: torch.Tensor
    y_test: torch.Tensor  # clean
    tasks: list[list[int]]
    true_train: torch.Tensor  # the true labels, to split the stream into tasks
    num_classes: int = 10
    hidden: int = 128


@dataclass
class Result:
    protocol: str
    method: str
    seed: int
    final_acc: float
    forgetting: float
    worst_class_acc: float
    balanced_acc: float
    reservoir_noisy_frac: float | None
    stream_noisy_frac: float | None
    reservoir_classes: list[int]
    curve_steps: list[int] = field(default_factory=list)
    curve_task_acc: list[list[float]] = field(default_factory=list)  # [eval][task]
    curve_hist: list[list[int]] = field(default_factory=list)  # [eval][class]
    task_ends: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def record(self) -> dict:
        """The record ``eval --json`` writes."""
        return {"protocol": self.protocol, "method": self.method, "seed": self.seed, "final_acc": self.final_acc,
                "forgetting": self.forgetting, "worst_class_acc": self.worst_class_acc,
                "reservoir_noisy_frac": self.reservoir_noisy_frac}


# --- data ----------------------------------------------------------------------


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
    """Fashion-MNIST from the IDX files of Debian's dataset-fashion-mnist."""
    f = lambda name: os.path.join(folder, name)  # noqa: E731
    xtr = _idx(f("train-images-idx3-ubyte.gz")).reshape(-1, 784).float() / 255.0
    ytr = _idx(f("train-labels-idx1-ubyte.gz")).long()
    xte = _idx(f("t10k-images-idx3-ubyte.gz")).reshape(-1, 784).float() / 255.0
    yte = _idx(f("t10k-labels-idx1-ubyte.gz")).long()
    return xtr, ytr, xte, yte


def fmnist_available(folder: str = FMNIST_DIR) -> bool:
    return os.path.exists(os.path.join(folder, "train-images-idx3-ubyte.gz"))


def make_stream(protocol: str, seed: int, fmnist_dir: str = FMNIST_DIR) -> Stream:
    """The benchmark of a protocol; noise and imbalance depend on the seed."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    g = torch.Generator().manual_seed(1000 + seed)
    if protocol == "fmnist":
        xtr, ytr, xte, yte = load_fmnist(fmnist_dir)
        hidden = 256
    else:
        xtr, ytr, xte, yte = load_digits()
        hidden = 128
    if protocol == "digits-imbalance":  # half the classes keep 10-25% of their examples
        rare = torch.randperm(10, generator=g)[:5].tolist()
        keep = torch.ones(len(ytr), dtype=torch.bool)
        for c in rare:
            idx = (ytr == c).nonzero().squeeze(1)
            share = 0.10 + 0.15 * float(torch.rand(1, generator=g))
            keep_n = min(len(idx), max(1, math.ceil(share * len(idx))))  # at least 10%
            drop = idx[torch.randperm(len(idx), generator=g)[keep_n:]]
            keep[drop] = False
        xtr, ytr = xtr[keep], ytr[keep]
    true = ytr.clone()
    noisy = torch.zeros(len(ytr), dtype=torch.bool)
    if protocol.startswith("digits-noise"):  # symmetric noise: another class, uniformly
        p = int(protocol[len("digits-noise") :]) / 100
        noisy = torch.rand(len(ytr), generator=g) < p
        other = (ytr + torch.randint(1, 10, (len(ytr),), generator=g)) % 10
        ytr = torch.where(noisy, other, ytr)
    tasks = [[2 * t, 2 * t + 1] for t in range(5)]
    return Stream(protocol, xtr, ytr, noisy, xte, yte, tasks, true, hidden=hidden)


# --- one run -------------------------------------------------------------------


def _accuracy(model, x, y, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class correct counts and totals on (x, y)."""
    with torch.no_grad():
        pred = model(x).argmax(1)
    correct = torch.bincount(y[pred == y], minlength=num_classes).double()
    total = torch.bincount(y, minlength=num_classes).double()
    return correct, total


def run(stream: Stream, method: str, seed: int, *, capacity: int = 200, epochs: int = 5, batch_size: int = 32,
        lr: float = 1e-3, evals_per_task: int = 5, progress=None, sampler_args: dict | None = None,
        logits: bool = True) -> Result:
    """Train on the stream task by task with one method; return its figures."""
    if method not in METHOD_ARGS:
        raise ValueError(f"method must be one of {tuple(METHOD_ARGS)}, got {method!r}")
    start = time.perf_counter()
    torch.manual_seed(seed)
    C = stream.num_classes
    model = torch.nn.Sequential(torch.nn.Linear(stream.x_train.shape[1], stream.hidden), torch.nn.ReLU(),
                                torch.nn.Linear(stream.hidden, C))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    args = dict(METHOD_ARGS[method], **(sampler_args or {}))
    sampler = hardmix.ReplaySampler(len(stream.y_train), batch_size=batch_size, capacity=capacity, seed=seed,
                                    num_classes=C, replay_lag=0, **args)
    loader = DataLoader(hardmix.WithIndex(TensorDataset(stream.x_train, stream.y_train)), batch_sampler=sampler)

    def task_accuracies() -> list[float]:
        correct, total = _accuracy(model, stream.x_test, stream.y_test, C)
        return [float(correct[t].sum() / total[t].sum()) for t in stream.tasks]

    res = Result(stream.name, method, seed, 0.0, 0.0, 0.0, 0.0, None, None, [])
    at_task_end: list[list[float]] = []
    step = 0
    for t, classes in enumerate(stream.tasks):
        sampler.set_fresh(torch.isin(stream.true_train, torch.tensor(classes)).nonzero().squeeze(1))
        total_steps = None
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            if total_steps is None:
                total_steps = len(sampler) * epochs
                every = max(1, total_steps // evals_per_task)
                task_start = step
            for idx, x, y in loader:
                out = model(x)
                losses = F.cross_entropy(out, y, reduction="none")
                losses.mean().backward()
                opt.step()
                opt.zero_grad()
                sampler.update(idx, losses.detach(), logits=out.detach() if logits else None, targets=y)
                step += 1
                if (step - task_start) % every == 0:
                    res.curve_steps.append(step)
                    res.curve_task_acc.append(task_accuracies())
                    res.curve_hist.append(sampler.stats()["class_histogram"].tolist())
            if progress is not None:
                progress.update(1)
        res.task_ends.append(step)
        at_task_end.append(task_accuracies())
    final = at_task_end[-1]
    T = len(stream.tasks)
    res.final_acc = sum(final) / T
    # Chaudhry et al. 2018: best accuracy at any task end before the last, minus the final one.
    res.forgetting = sum(max(at_task_end[k][j] for k in range(T - 1)) - final[j] for j in range(T - 1)) / (T - 1)
    correct, total = _accuracy(model, stream.x_test, stream.y_test, C)
    per_class = correct / total.clamp(min=1)
    res.worst_class_acc = float(per_class.min())
    res.balanced_acc = float(per_class.mean())
    members = sampler.reservoir()["index"]
    res.reservoir_classes = torch.bincount(stream.y_train[members], minlength=C).tolist()
    if bool(stream.noisy.any()):
        res.stream_noisy_frac = float(stream.noisy.float().mean())
        if method != "none" and len(members):  # "none" replays nothing: its reservoir is not a memory
            res.reservoir_noisy_frac = float(stream.noisy[members].float().mean())
    res.seconds = time.perf_counter() - start
    return res


# --- reports -------------------------------------------------------------------


def _bar(total: int, desc: str, unit: str):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is in the demo's requirements
        return None


def table(results: list[Result]) -> str:
    noisy = any(r.reservoir_noisy_frac is not None for r in results)
    head = "| method | final avg acc | avg forgetting | worst-class acc | reservoir per class (0-9) |"
    rule = "|---|---:|---:|---:|---|"
    if noisy:
        head, rule = head + " mislabeled: reservoir / stream |", rule + "---:|"
    lines = [head, rule]
    for r in results:
        row = (f"| {r.method} | {r.final_acc:.3f} | {r.forgetting:.3f} | {r.worst_class_acc:.3f} | "
               f"{' '.join(str(c) for c in r.reservoir_classes) if r.method != 'none' else '—'} |")
        if noisy:
            row += f" {r.reservoir_noisy_frac:.2f} / {r.stream_noisy_frac:.2f} |" if r.method != "none" else " — |"
        lines.append(row)
    return "\n".join(lines)


def plot(results: list[Result], path: str) -> None:
    """Accuracy per task over training, and the reservoir's classes over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 6.5), sharex="col", squeeze=False)
    colors = plt.get_cmap("tab10")
    for j, r in enumerate(results):
        ax = axes[0][j]
        acc = torch.tensor(r.curve_task_acc)
        for t in range(acc.shape[1]):
            ax.plot(r.curve_steps, acc[:, t], color=colors(2 * t), label=f"task {t} ({2 * t},{2 * t + 1})")
        for e in r.task_ends[:-1]:
            ax.axvline(e, color="0.8", lw=0.8)
        ax.set_title(f"{r.method}: final {r.final_acc:.2f}, forgetting {r.forgetting:.2f}")
        ax.set_ylim(-0.02, 1.02)
        if j == 0:
            ax.set_ylabel("test accuracy per task")
            ax.legend(fontsize=7, loc="lower left")
        ax = axes[1][j]
        hist = torch.tensor(r.curve_hist, dtype=torch.float64)
        if r.method == "none":
            ax.text(0.5, 0.5, "no memory", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.stackplot(r.curve_steps, hist.T.numpy(), colors=[colors(c) for c in range(hist.shape[1])],
                         labels=[str(c) for c in range(hist.shape[1])])
        ax.set_xlabel("training step")
        if j == 0:
            ax.set_ylabel("reservoir members per class")
        if j == n - 1:
            ax.legend(fontsize=6, ncol=5, loc="upper left", title="class", title_fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- commands ------------------------------------------------------------------


def demo(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m hardmix demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--capacity", type=int, default=200, help="reservoir size (default 200, 16%% of the stream)")
    ap.add_argument("--epochs", type=int, default=5, help="epochs per task")
    ap.add_argument("--out", default="out/demo", help="folder for demo.png and demo.json")
    ap.add_argument("--no-plot", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    stream = make_stream("digits", a.seed)
    methods = ("none", "reservoir", "hardmix")
    print(f"hardmix demo: split digits, 5 tasks x 2 classes, {len(stream.y_train)} training examples, "
          f"capacity {a.capacity}, {a.epochs} epochs per task, seed {a.seed}")
    bar = _bar(len(methods) * len(stream.tasks) * a.epochs, "training", "epoch")
    results = [run(stream, m, a.seed, capacity=a.capacity, epochs=a.epochs, progress=bar) for m in methods]
    if bar is not None:
        bar.close()
    print(table(results))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "demo.json"), "w") as f:
        json.dump([r.__dict__ for r in results], f)
    if not a.no_plot:
        png = os.path.join(a.out, "demo.png")
        plot(results, png)
        print(f"wrote {png}")
    return 0


def _summary(records: list[Result]) -> str:
    by = {}
    for r in records:
        by.setdefault((r.protocol, r.method), []).append(r)
    lines = ["| protocol | method | final avg acc | forgetting | worst-class acc | balanced acc | "
             "mislabeled in reservoir (stream) | hardmix − this: final acc (paired, wins) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]

    def ms(v: list[float]) -> str:
        return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"

    for (proto, method), rs in by.items():
        noisy = "—" if rs[0].reservoir_noisy_frac is None or method == "none" else \
            f"{statistics.mean(r.reservoir_noisy_frac for r in rs):.2f} ({rs[0].stream_noisy_frac:.2f})"
        paired = "—"
        hm = {r.seed: r for r in by.get((proto, "hardmix"), [])}
        if method != "hardmix" and hm:
            d = [hm[r.seed].final_acc - r.final_acc for r in rs if r.seed in hm]
            wins = sum(x > 0 for x in d)
            paired = f"{ms(d)} ({wins}/{len(d)})"
        lines.append(f"| {proto} | {method} | {ms([r.final_acc for r in rs])} | {ms([r.forgetting for r in rs])} | "
                     f"{ms([r.worst_class_acc for r in rs])} | {ms([r.balanced_acc for r in rs])} | {noisy} | "
                     f"{paired} |")
    return "\n".join(lines)


def evaluate(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m hardmix eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--capacity", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=5, help="epochs per task (fmnist: --fmnist-epochs)")
    ap.add_argument("--fmnist-epochs", type=int, default=1)
    ap.add_argument("--fmnist-capacity", type=int, default=1000)
    ap.add_argument("--fmnist-dir", default=FMNIST_DIR)
    ap.add_argument("--json", help="write every figure here as a list of records")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    protocols = [p for p in a.protocols.split(",") if p]
    methods = [m for m in a.methods.split(",") if m]
    for p in protocols:
        if p not in PROTOCOLS:
            ap.error(f"unknown protocol {p!r}; choose from {PROTOCOLS}")
    for m in methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}; choose from {METHODS}")
    if "fmnist" in protocols and not fmnist_available(a.fmnist_dir):
        print(f"fmnist: skipped: no Fashion-MNIST in {a.fmnist_dir} (apt install dataset-fashion-mnist, "
              f"or --fmnist-dir)", file=sys.stderr)
        protocols.remove("fmnist")
    results: list[Result] = []
    jobs = [(p, s) for p in protocols for s in range(a.seeds)]
    bar = _bar(len(jobs) * len(methods), "eval", "run")
    for p, seed in jobs:
        stream = make_stream(p, seed, a.fmnist_dir)
        fm = p == "fmnist"
        for m in methods:
            results.append(run(stream, m, seed, capacity=a.fmnist_capacity if fm else a.capacity,
                               epochs=a.fmnist_epochs if fm else a.epochs, batch_size=128 if fm else 32))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    print(_summary(results))
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump([r.record() for r in results], f, indent=1)
        print(f"wrote {a.json}")
    return 0
