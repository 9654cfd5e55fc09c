"""Print a pytest-benchmark JSON file as a Markdown table of medians, with
each group's ratio to its baseline (the impl named by --baseline)."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("json_file")
    parser.add_argument("--baseline", default="amax", help="impl that the other rows are divided by")
    args = parser.parse_args()
    with open(args.json_file) as f:
        data = json.load(f)
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        groups[bench["group"]][bench["extra_info"]["impl"]] = bench["stats"]["median"] * 1e6
    print(f"| case | impl | median (µs) | ratio to {args.baseline} |")
    print("|---|---|---:|---:|")
    for group, impls in groups.items():
        base = impls.get(args.baseline)
        for impl, median in sorted(impls.items()):
            ratio = f"{median / base:.2f}" if base else "—"
            print(f"| {group} | {impl} | {median:.1f} | {ratio} |")
    machine = data.get("machine_info", {})
    print(f"\nmachine: {machine.get('cpu', {}).get('brand_raw', '?')}, torch threads: 1")


if __name__ == "__main__":
    main()
