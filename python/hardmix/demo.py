"""``python -m hardmix demo``: class-incremental digits with and without hardmix.

A small MLP learns scikit-learn's digits as a stream of 5 tasks of 2
classes (one 10-way head; earlier tasks' classes never come back as fresh
data), three ways, with the same model initialisation and budget:

- ``finetune``: fresh data only (no memory);
- ``er``: experience replay as a user writes it without hardmix (reservoir
  sampling, uniform replay; :mod:`hardmix.evaluation.baselines`);
- ``hardmix``: the README quickstart loop with hardmix's defaults.

It prints final average accuracy, average forgetting, worst-class accuracy
and what each memory holds per class, and draws accuracy per task over
training with the memory's classes (PNG). The full comparison, over seeds
and protocols: ``python -m hardmix eval``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch

from .evaluation import make_stream, run
from .evaluation.metrics import Result
from .evaluation.streams import PROTOCOLS

METHODS = ("finetune", "er", "hardmix")


def table(results: list[Result]) -> str:
    lines = ["| method | final avg acc | avg forgetting | worst-class acc | memory per class (0-9) |",
             "|---|---:|---:|---:|---|"]
    for r in results:
        memory = " ".join(str(c) for c in r.memory_classes) if r.memory_classes else "—"
        lines.append(f"| {r.method} | {r.final_acc:.3f} | {r.forgetting:.3f} | {r.worst_class_acc:.3f} | {memory} |")
    return "\n".join(lines)


def plot(results: list[Result], path: str) -> None:
    """Accuracy per task over training, and the memory's classes over time."""
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
        hist = torch.tensor(r.curve_memory_classes, dtype=torch.float64)
        if r.memory_classes is None:
            ax.text(0.5, 0.5, "no memory", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.stackplot(r.curve_steps, hist.T.numpy(), colors=[colors(c) for c in range(hist.shape[1])],
                         labels=[str(c) for c in range(hist.shape[1])])
        ax.set_xlabel("training step")
        if j == 0:
            ax.set_ylabel("memory members per class")
        if j == n - 1:
            ax.legend(fontsize=6, ncol=5, loc="upper left", title="class", title_fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def demo(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m hardmix demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--capacity", type=int, default=200, help="memory size (default 200, 16%% of the stream)")
    ap.add_argument("--epochs", type=int, default=5, help="epochs per task")
    ap.add_argument("--out", default="out/demo", help="folder for demo.png and demo.json")
    ap.add_argument("--no-plot", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    protocol = dataclasses.replace(PROTOCOLS["ci-digits"], capacity=a.capacity, epochs=a.epochs)
    stream = make_stream("ci-digits", a.seed)
    stream.protocol = protocol
    print(f"hardmix demo: split digits, 5 tasks x 2 classes, {len(stream.y_train)} training examples, "
          f"memory {a.capacity}, {a.epochs} epochs per task, replay fraction {protocol.replay_fraction}, "
          f"seed {a.seed}", file=sys.stderr)
    results = [run(stream, m, a.seed, curve_points=5) for m in METHODS]
    print(table(results))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "demo.json"), "w") as f:
        json.dump([dataclasses.asdict(r) for r in results], f)
    if not a.no_plot:
        png = os.path.join(a.out, "demo.png")
        plot(results, png)
        print(f"wrote {png}")
    return 0
