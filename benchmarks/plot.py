"""Draw the performance figure of the docs from a pytest-benchmark JSON file.

    .venv/bin/python -m pytest benchmarks --benchmark-json out/bench.json
    .venv/bin/python benchmarks/plot.py out/bench.json docs/_static/performance.png

Left: one policy step (family "step") against the reservoir capacity R for
the native engine, the pure-Python reference and the torch composition
(log-log, medians). Right: time per training step as bars, each beside its
anchor from the same run: the sampler's work on the training thread against a
plain BatchSampler (family "sampler step", per N), and the small MLP loop
with ReplaySampler against the plain loop (family "loop"); each bar carries
its median and its ratio to the anchor (as benchmarks/table.py computes
them). Panels whose family is missing from
the file are left out.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from table import load  # noqa: E402

def _tex(label: str) -> str:
    """10^5 -> mathtext 10⁵ (matplotlib draws plain ^ otherwise)."""
    return re.sub(r"10\^(\d+)", r"$10^{\1}$", label)


COLORS = {"native": "tab:blue", "torch": "tab:orange", "reference": "tab:green"}
ANCHOR_COLOR, HARDMIX_COLOR = "tab:gray", "tab:blue"


def _step_panel(ax, fam) -> None:
    for impl in fam["impls"]:
        pts = sorted((r[impl]["extra_info"]["R"], r[impl]["median"] / 1e3) for r in fam["rows"].values() if impl in r)
        if pts:
            ax.plot(*zip(*pts), "o-", label=impl, color=COLORS.get(impl))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("reservoir capacity R")
    ax.set_ylabel("ms per step (update + draw), median")
    any_rec = next(iter(next(iter(fam["rows"].values())).values()))["extra_info"]
    ax.set_title(_tex(f"Policy step: B={any_rec.get('B')}, m={any_rec.get('m')}, N=10^6"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()


def _bars(ax, fam, pairs, title) -> None:
    """pairs: [(params, impl, label)]: bars of the family's anchor and of impl for each params,
    impl's bar labelled with its ratio to the anchor (table.load's)."""
    a = fam["anchor"]
    width = 0.38
    for k, (params, impl, label) in enumerate(pairs):
        recs = fam["rows"][params]
        base, ours, ratio = recs[a]["median"], recs[impl]["median"], recs[impl]["ratio"]
        for dx, v, color, name in ((-width / 2, base, ANCHOR_COLOR, a), (width / 2, ours, HARDMIX_COLOR, impl)):
            ax.bar(k + dx, v, width, color=color, label=name if k == 0 else None)
            ax.annotate(f"{v:,.0f} µs" + (f"\n{ratio:.2f}×" if name == impl else ""), (k + dx, v),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(pairs)), [_tex(p[2]) for p in pairs])
    ax.set_ylabel("µs per step, median")
    ax.set_title(title)
    ax.set_ylim(0, 1.45 * max(max(r[a]["median"], r[i]["median"]) for p, i, _ in pairs for r in [fam["rows"][p]]))
    ax.legend(fontsize=8, loc="upper left", ncol=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json_file")
    parser.add_argument("png")
    args = parser.parse_args()
    fams, _ = load(args.json_file)
    panels = []
    if "step" in fams:
        panels.append(("step", 1.4))
    if "sampler step" in fams:
        panels.append(("sampler step", 1.0))
    if "loop" in fams:
        panels.append(("loop", 0.6))
    if not panels:
        raise SystemExit(f"{args.json_file}: no step, sampler step or loop benchmarks")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * sum(w for _, w in panels) + 1, 4.2),
                             gridspec_kw={"width_ratios": [w for _, w in panels]}, squeeze=False)
    for ax, (family, _) in zip(axes[0], panels):
        fam = fams[family]
        if family == "step":
            _step_panel(ax, fam)
        elif family == "sampler step":
            pairs = [(p, "sampler", p.split()[-1]) for p, r in fam["rows"].items() if "sampler" in r]
            _bars(ax, fam, pairs, "Sampler work per step (B=256, R=8192)")
        else:
            pairs = [(p, "hardmix", "MLP loop") for p, r in fam["rows"].items() if "hardmix" in r]
            _bars(ax, fam, pairs, "Training step, CPU")
    fig.text(0.995, 0.005, "medians, one intra-op thread; bar ratios: median over interleaved reps of the "
             "ratio to the anchor in the same rep (benchmarks/table.py)", ha="right", va="bottom", fontsize=7,
             color="dimgray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(args.png)), exist_ok=True)
    fig.savefig(args.png, dpi=120)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
