"""Print a pytest-benchmark JSON file (``--benchmark-json``) as Markdown tables.

    .venv/bin/python -m pytest benchmarks --benchmark-json out/bench.json
    .venv/bin/python benchmarks/table.py out/bench.json > out/bench.md

One table per family (``extra_info["family"]``: sampler step, loop, step,
stats, margin), one row per parameter set (``extra_info["params"]``, one
pytest-benchmark group), and for each implementation (``extra_info["impl"]``)
its median in µs and its ratio to the group's anchor (``extra_info["anchor"]``:
the plain BatchSampler, the plain loop, the native engine, amax,
stats(full=False)). Interleaved reps (``extra_info["rep"]``, see conftest.py)
are combined: the median of their medians, and the median of their ratios to
the anchor's same rep. ``--baseline IMPL`` overrides the anchor of every family
(for files without extra_info["anchor"]).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict

FAMILY_ORDER = ["sampler step", "sampler beside a waiting step", "loop", "step", "step against R",
                "step with classes", "stats", "margin"]
DTYPE_ORDER = {"float32": 0, "bfloat16": 1, "float16": 2}


def load(path: str, baseline: str | None = None) -> tuple[dict, dict]:
    """({family: {"anchor": impl, "impls": [impl, ...], "rows": {params: {impl: figure}}}}, machine_info).

    A figure: ``median`` (µs: the median of the reps' medians; one rep: its
    median), ``ratio`` to the anchor (the median over reps of the rep's median
    over the anchor's median in the same rep; without reps, median over
    median), ``reps``, ``rounds`` (all reps together) and ``extra_info``."""
    with open(path) as f:
        data = json.load(f)
    fams: dict = {}
    for b in data["benchmarks"]:
        ei = b.get("extra_info", {})
        family = ei.get("family", b["group"])
        params = ei.get("params", b["group"])
        impl = ei.get("impl", b["name"])
        fam = fams.setdefault(family, {"anchor": baseline or ei.get("anchor"), "impls": [],
                                       "rows": defaultdict(lambda: defaultdict(list)), "keys": {}})
        if impl not in fam["impls"]:
            fam["impls"].append(impl)
        fam["rows"][params][impl].append(dict(median=b["stats"]["median"] * 1e6, rounds=b["stats"]["rounds"],
                                              rep=ei.get("rep"), extra_info=ei))
        fam["keys"].setdefault(params, (ei.get("N") or 0, ei.get("R") or 0, ei.get("C") or 0,
                                        DTYPE_ORDER.get(ei.get("dtype"), 9), len(fam["keys"])))
    for fam in fams.values():
        a = fam["anchor"]
        fam["impls"] = [a] * (a in fam["impls"]) + [i for i in fam["impls"] if i != a]
        rows = {}
        for params in sorted(fam["rows"], key=lambda p: fam["keys"][p]):
            recs = fam["rows"][params]
            base = {r["rep"]: r["median"] for r in recs.get(a, [])}
            rows[params] = {}
            for impl, rs in recs.items():
                med = statistics.median(r["median"] for r in rs)
                paired = [r["median"] / base[r["rep"]] for r in rs if r["rep"] is not None and r["rep"] in base]
                if paired:
                    ratio = statistics.median(paired)
                elif base:
                    ratio = med / statistics.median(base.values())
                else:
                    ratio = None
                rows[params][impl] = dict(median=med, ratio=ratio, reps=len(rs),
                                          rounds=sum(r["rounds"] for r in rs), extra_info=rs[0]["extra_info"])
        fam["rows"] = rows
        del fam["keys"]
    order = sorted(fams, key=lambda f: (FAMILY_ORDER.index(f) if f in FAMILY_ORDER else len(FAMILY_ORDER), f))
    return {f: fams[f] for f in order}, data.get("machine_info", {})


def _us(v: float) -> str:
    return f"{v:,.0f}" if v >= 1000 else f"{v:.1f}"


def markdown(fams: dict, machine: dict) -> str:
    out = []
    for family, fam in fams.items():
        a, impls = fam["anchor"], fam["impls"]
        others = [i for i in impls if i != a]
        out.append(f"### {family} (anchor: {a})\n")
        head = ["params", f"{a} (µs)"] + [c for i in others for c in (f"{i} (µs)", f"{i} ×")]
        out.append("| " + " | ".join(head) + " |")
        out.append("|---|" + "---:|" * (len(head) - 1))
        for params, recs in fam["rows"].items():
            base = recs.get(a)
            cells = [params, _us(base["median"]) if base else "—"]
            for i in others:
                r = recs.get(i)
                cells.append(_us(r["median"]) if r else "—")
                cells.append(f"{r['ratio']:.2f}" if r and r["ratio"] is not None else "—")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    cpu = machine.get("cpu", {})
    torch_v = next((r["extra_info"].get("torch") for fam in fams.values() for recs in fam["rows"].values()
                    for r in recs.values() if r["extra_info"].get("torch")), "?")
    reps = sorted({r["reps"] for fam in fams.values() for recs in fam["rows"].values() for r in recs.values()})
    out.append(f"Medians of pytest-benchmark rounds (µs), one intra-op thread; ×: the ratio to the anchor of the "
               f"same group and run (interleaved reps: the median of the per-rep ratios; reps per figure: "
               f"{', '.join(map(str, reps))}). {cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} cores, "
               f"Python {machine.get('python_version', '?')}, torch {torch_v}.")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json_file")
    parser.add_argument("--baseline", default=None, help="impl that every family's rows are divided by")
    args = parser.parse_args()
    print(markdown(*load(args.json_file, args.baseline)))


if __name__ == "__main__":
    main()
