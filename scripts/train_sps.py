"""One `fastrl.train` run, reported as a markdown table row of its speed (for scripts/gpu_check.sh).

    python scripts/train_sps.py --header
    python scripts/train_sps.py "dqn CartPole" -- --total-steps 20000 --device cuda
    python scripts/train_sps.py "td3 graphed" -- --algo td3 --env Pendulum-v1 --total-steps 5000 \
        --learning-starts 1000 --device cuda --cuda-graph

Two speeds: the run's own SPS (`summary.json`: every env step over the whole loop, so a short run's
figure carries the compilation, the graph capture and the evaluations), and the fastest log window's
(from `metrics.csv`, among the windows wholly in the learning phase: one without compilation or
evaluation, nearer what a long run keeps up).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

HEADER = ("| run | flags | device | compile | env steps | updates | wall s | eval s | run SPS | best window SPS "
          "| final eval |\n|---|---|---|---|---|---|---|---|---|---|---|")


def run_training(argv: list[str]) -> tuple[int, Path]:
    """`python -m fastrl.train ARGV` in this process, in a fresh run folder unless ARGV names one."""
    from fastrl.train import main

    argv = list(argv)
    if "--run-dir" not in argv:
        argv += ["--run-dir", str(Path(tempfile.mkdtemp(prefix="fastrl-run-")) / "run")]
    if "--progress" not in argv and "--no-progress" not in argv:
        argv.append("--no-progress")
    code = main(argv)
    return code, Path(argv[argv.index("--run-dir") + 1])


def best_window_sps(rows: list[dict[str, str]]) -> float:
    """The fastest stretch between two consecutive metric rows wholly in the learning phase (updates
    before it began), in env steps per second: random-action windows run without the learner."""
    best = math.nan
    for before, after in zip(rows, rows[1:]):
        if float(before["updates"]) <= 0:
            continue
        steps = float(after["env_step"]) - float(before["env_step"])
        seconds = float(after["wall_s"]) - float(before["wall_s"])
        if steps > 0 and seconds > 0 and not best >= steps / seconds:
            best = steps / seconds
    return best


def table_row(name: str, flags: list[str], code: int, run_dir: Path) -> str:
    summary_path = run_dir / "summary.json"
    if code != 0 or not summary_path.exists():
        return f"| {name} | `{' '.join(flags)}` | failed: exit code {code} | | | | | | | | |"
    s: dict[str, Any] = json.loads(summary_path.read_text())
    from fastrl.runlog import read_metrics

    window = best_window_sps(read_metrics(run_dir))
    return (f"| {name} | `{' '.join(flags)}` | {s.get('device')} | {s.get('compile')} | {s.get('env_steps')} | "
            f"{s.get('updates')} | {s.get('wall_s', math.nan):.1f} | {s.get('eval_s', math.nan):.1f} | "
            f"{s.get('sps', math.nan):.0f} | {window:.0f} | {s.get('final_eval_return_mean', math.nan):.1f} |")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    flags = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", default="run", help="the row's name")
    p.add_argument("--header", action="store_true", help="print the table's header and exit")
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.header:
        print(HEADER)
        return 0
    code, run_dir = run_training(flags)
    print(table_row(args.name, flags, code, run_dir), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
