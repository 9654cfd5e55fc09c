"""Runs, paired comparisons, and ``python -m hardmix eval``.

Every comparison is paired by seed: the same seed gives every method the
same stream (noise, imbalance, permutations) and the same model
initialisation. A paired difference is reported as its mean with a 95%
Student-t interval over the seeds, and the number of seeds where the method
is ahead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from typing import Callable

import torch

from . import baselines, methods
from .metrics import Monitor, Result
from .streams import FMNIST_DIR, PROTOCOLS, QUICK, fmnist_available, make_stream

# method -> (protocol kinds it applies to, the function)
METHODS: dict[str, tuple[tuple[str, ...], Callable]] = {
    "er": (("continual",), baselines.er),
    "er-balanced": (("continual",), baselines.er_balanced),
    "joint": (("continual",), baselines.joint),
    "finetune": (("continual",), baselines.finetune),
    "plain": (("iid",), baselines.plain),
    **{name: (("continual",) if name.split("-")[-1] in ("ace", "der") else ("continual", "iid"),
              lambda s, seed, mon, _kw=kw: methods.run_hardmix(s, seed, mon, **_kw))
       for name, kw in {**methods.VARIANTS, **methods.ABLATIONS}.items()},
}
DEFAULT_METHODS = [m for m in METHODS if m not in methods.ABLATIONS]

BASELINE = {"continual": "er", "iid": "plain"}
"""What each kind of protocol compares against."""


def run(stream, method: str, seed: int, curve_points: int = 0) -> Result:
    """One run of ``method`` on a stream (see :func:`make_stream`)."""
    kinds, fn = METHODS[method]
    if stream.protocol.kind not in kinds:
        raise ValueError(f"method {method!r} does not apply to {stream.protocol.kind} protocols")
    return fn(stream, seed, Monitor(stream, method, seed, curve_points))


def t_quantile(q: float, df: int) -> float:
    """The q quantile of Student's t with df degrees of freedom (scipy comes
    with scikit-learn, which the digits protocols need anyway)."""
    from scipy.stats import t

    return float(t.ppf(q, df))


def paired(a: list[float], b: list[float], level: float = 0.95) -> dict:
    """Mean of a - b with a two-sided Student-t interval at ``level``, and
    how often a > b."""
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = statistics.fmean(d)
    half = t_quantile(0.5 + level / 2, n - 1) * statistics.stdev(d) / math.sqrt(n) if n > 1 else math.inf
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "wins": sum(x > 0 for x in d), "n": n}


def _fmt(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _by(records: list[dict]) -> dict:
    """protocol -> method -> seed -> record, in the order first seen."""
    by: dict = {}
    for r in records:
        by.setdefault(r["protocol"], {}).setdefault(r["method"], {})[r["seed"]] = r
    return by


def _kind(protocol: str) -> str:
    return PROTOCOLS[protocol].kind if protocol in PROTOCOLS else "continual"


def _delta(rs: dict, base: dict, key: str = "final_acc") -> str:
    seeds = sorted(set(rs) & set(base))
    if not seeds:
        return "—"
    p = paired([rs[s][key] for s in seeds], [base[s][key] for s in seeds])
    return f"{100 * p['mean']:+.1f} [{100 * p['lo']:+.1f}, {100 * p['hi']:+.1f}] ({p['wins']}/{p['n']})"


def _mean(rs, key: str) -> float | None:
    xs = [r[key] for r in rs if r[key] is not None]
    return statistics.fmean(xs) if xs else None


def summary(records: list[dict]) -> str:
    """A Markdown table: per protocol and method, the mean figures and the
    paired difference of final accuracy against the protocol's baseline."""
    lines = ["| protocol | method | final acc | forgetting | worst class | mislabeled in memory | "
             "Δ final acc vs baseline, points [95% CI] (wins) |",
             "|---|---|---:|---:|---:|---:|---|"]
    for proto, ms in _by(records).items():
        baseline = BASELINE[_kind(proto)]
        for method, rs in ms.items():
            vals = list(rs.values())
            delta = "—" if method == baseline else _delta(rs, ms.get(baseline, {}))
            lines.append(f"| {proto} | {method} | {_fmt(_mean(vals, 'final_acc'))} | "
                         f"{_fmt(_mean(vals, 'forgetting'))} | {_fmt(_mean(vals, 'worst_class_acc'))} | "
                         f"{_fmt(_mean(vals, 'reservoir_noisy_frac'), 2)} | {delta} |")
    return "\n".join(lines)


def deltas(records: list[dict], key: str = "final_acc") -> str:
    """A Markdown table, one row per protocol: the baseline's mean and every
    other method's paired difference from it (points, 95% CI, wins)."""
    by = _by(records)
    methods = [m for m in METHODS if any(m in ms for ms in by.values()) and m not in BASELINE.values()]
    label = {"final_acc": "final acc", "worst_class_acc": "worst-class acc"}.get(key, key)
    lines = [f"| protocol | baseline {label} | " + " | ".join(methods) + " |",
             "|---|---:|" + "---:|" * len(methods)]
    for proto, ms in by.items():
        baseline = BASELINE[_kind(proto)]
        base = ms.get(baseline, {})
        cells = [_delta(ms[m], base, key) if m in ms else "" for m in methods]
        lines.append(f"| {proto} | {baseline} {_fmt(_mean(base.values(), key))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def noise_table(records: list[dict]) -> str:
    """Mislabeled share in the memory at the end, per noisy protocol and method."""
    by = _by(records)
    rows = {p: ms for p, ms in by.items() if any(r["reservoir_noisy_frac"] is not None
                                                 for rs in ms.values() for r in rs.values())}
    methods = [m for m in METHODS if any(m in ms and any(r["reservoir_noisy_frac"] is not None
                                                         for r in ms[m].values()) for ms in rows.values())]
    lines = ["| protocol | stream | " + " | ".join(methods) + " |", "|---|---:|" + "---:|" * len(methods)]
    for proto, ms in rows.items():
        stream = make_stream(proto, 0) if proto in PROTOCOLS else None
        share = _fmt(float(stream.noisy.float().mean()), 2) if stream is not None else "—"
        cells = [_fmt(_mean(ms[m].values(), "reservoir_noisy_frac"), 2) if m in ms else "" for m in methods]
        lines.append(f"| {proto} | {share} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(records: list[dict]) -> str:
    """Every table ``eval`` prints."""
    return "\n\n".join([
        "Final accuracy: the baseline (er for continual protocols, plain for i.i.d. ones) and each "
        "method's paired difference from it, in points, 95% CI, seeds ahead:\n\n" + deltas(records),
        "Worst-class accuracy, the same way:\n\n" + deltas(records, "worst_class_acc"),
        "Mislabeled share of the memory at the end (the stream's first):\n\n" + noise_table(records),
        "Every figure, means over seeds:\n\n" + summary(records),
    ])


def evaluate(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m hardmix eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10, help="seeds 0 .. n-1 (default 10)")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated (default: all)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                    help=f"comma-separated (default: all that apply but the ablations {', '.join(methods.ABLATIONS)})")
    ap.add_argument("--quick", action="store_true", help=f"CI's subset: {', '.join(QUICK)}, 2 seeds")
    ap.add_argument("--fmnist-dir", default=FMNIST_DIR)
    ap.add_argument("--json", help="write every run's record here (a list)")
    ap.add_argument("--from", dest="source", metavar="JSON", help="print the tables of saved records; run nothing")
    ap.add_argument("--table", choices=("all", "final"), default="all",
                    help="with --from: every table, or the final-accuracy one only")
    ap.add_argument("--plot", metavar="PNG", help="with --from: also draw the paired differences (matplotlib)")
    a = ap.parse_args(argv)
    if a.source:
        with open(a.source) as f:
            records = json.load(f)
        if "--methods" in argv or any(x.startswith("--methods=") for x in argv):
            keep = set(a.methods.split(",")) | set(BASELINE.values())
            records = [r for r in records if r["method"] in keep]
        print(report(records) if a.table == "all" else deltas(records))
        if a.plot:
            from .plot import plot

            plot(records, a.plot)
            print(f"wrote {a.plot}")
        return 0
    torch.set_num_threads(1)
    protocols = list(QUICK) if a.quick else [p for p in a.protocols.split(",") if p]
    seeds = 2 if a.quick else a.seeds
    names = [m for m in a.methods.split(",") if m]
    for p in protocols:
        if p not in PROTOCOLS:
            ap.error(f"unknown protocol {p!r}; choose from {', '.join(PROTOCOLS)}")
    for m in names:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    skipped = [p for p in protocols if PROTOCOLS[p].data == "fmnist"]
    if skipped and not fmnist_available(a.fmnist_dir):
        print(f"{', '.join(skipped)}: skipped: no Fashion-MNIST in {a.fmnist_dir} (apt install "
              f"dataset-fashion-mnist, or --fmnist-dir)", file=sys.stderr)
        protocols = [p for p in protocols if p not in skipped]
    jobs = [(p, s, m) for p in protocols for s in range(seeds) for m in names
            if PROTOCOLS[p].kind in METHODS[m][0]]
    bar = _bar(len(jobs))
    records = []
    stream_key, stream = None, None
    for p, s, m in jobs:
        if stream_key != (p, s):
            stream_key, stream = (p, s), make_stream(p, s, a.fmnist_dir)
        records.append(run(stream, m, s).record())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    print(report(records))
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(records, f, indent=1)
        print(f"wrote {a.json}")
    return 0


def _bar(total: int):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc="eval", unit="run", file=sys.stderr)
    except ImportError:  # pragma: no cover
        return None
