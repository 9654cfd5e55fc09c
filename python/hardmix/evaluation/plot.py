"""The evaluation's picture: each method's paired difference from the
protocol's baseline, with its 95% interval, one row per protocol
(``python -m hardmix eval --from RECORDS --plot PNG``; needs matplotlib)."""

from __future__ import annotations

from .suite import BASELINE, _by, _kind, paired

DEFAULT = ("hardmix", "hardmix-ace", "hardmix-der", "er-balanced")


def plot(records: list[dict], path: str, methods: tuple[str, ...] = DEFAULT, key: str = "final_acc") -> None:
    """Write a PNG to ``path``: points and intervals, in points of accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = _by(records)
    protocols = list(by)
    methods = tuple(m for m in methods if any(m in ms for ms in by.values()))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(protocols) + 1.2))
    height = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        ys, xs, lo, hi = [], [], [], []
        for i, proto in enumerate(protocols):
            ms = by[proto]
            base = ms.get(BASELINE[_kind(proto)], {})
            seeds = sorted(set(ms.get(m, {})) & set(base))
            if len(seeds) < 2:
                continue
            p = paired([ms[m][s][key] for s in seeds], [base[s][key] for s in seeds])
            ys.append(i + (j - (len(methods) - 1) / 2) * height)
            xs.append(100 * p["mean"])
            lo.append(100 * (p["mean"] - p["lo"]))
            hi.append(100 * (p["hi"] - p["mean"]))
        ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", ms=3, capsize=2, label=m)
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_yticks(range(len(protocols)))
    ax.set_yticklabels([f"{p} (vs {BASELINE[_kind(p)]})" for p in protocols], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("paired difference in final accuracy, points (95% interval over seeds)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
