"""Markdown tables from a pytest-benchmark JSON file, one per benchmark group, for BENCHMARKS.md.

    pytest benchmarks --benchmark-only --benchmark-json=bench.json
    python -m benchmarks.tables bench.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXTRA_KEYS = ("transitions_per_call", "parameters", "batch_size", "sps", "updates", "updates_per_s")


def _time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def tables(data: dict) -> str:
    machine = data.get("machine_info", {})
    lines = [f"Machine: {machine.get('cpu_model', machine.get('cpu', {}).get('brand_raw', '?'))}; "
             f"torch {machine.get('torch_version', '?')}, {machine.get('torch_num_threads', '?')} threads"
             + (f"; {machine['cuda_device']}" if machine.get("cuda_device") else "")
             + f"; {data.get('datetime', '')}", ""]
    groups: dict[str, list[dict]] = {}
    for bench in data["benchmarks"]:
        groups.setdefault(bench["group"] or "ungrouped", []).append(bench)
    for group, benches in sorted(groups.items()):
        fastest = min(b["stats"]["median"] for b in benches)
        lines += [f"**{group}**", "", "| benchmark | median | IQR | rounds | × fastest | extra |",
                  "|---|---:|---:|---:|---:|---|"]
        for b in sorted(benches, key=lambda b: b["stats"]["median"]):
            s = b["stats"]
            extra = ", ".join(f"{k} {b['extra_info'][k]}" for k in EXTRA_KEYS if k in b.get("extra_info", {}))
            lines.append(f"| `{b['name']}` | {_time(s['median'])} | {_time(s['iqr'])} | {s['rounds']} "
                         f"| {s['median'] / fastest:.2f} | {extra} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", type=Path, help="file written by --benchmark-json")
    args = parser.parse_args(argv)
    print(tables(json.loads(args.json.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
