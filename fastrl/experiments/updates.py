"""`python -m fastrl.experiments.updates`: hard or soft target updates, and what batch size?

Trains every (task, target setting, batch size, seed) of a grid through `fastrl.train.train`,
then writes DIR/report.md, DIR/results.json and DIR/*.png; run folders go under DIR/runs/.
For an algorithm with stacked members, each task's runs of one batch size (every target setting ×
seed) train as one process (`--sweep target=... --num-seeds N`); `--separate` trains each run as
its own process instead. Re-running with the same settings reads finished runs back instead of
training them again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from fastrl.config import ConfigError, validate
from fastrl.experiments.aggregate import summarize
from fastrl.experiments.grid import FULL, QUICK, Grid, TargetSetting
from fastrl.experiments.plots import plot_learning_curves, plot_return_vs_batch, plot_throughput_vs_batch
from fastrl.experiments.report import RunContext, write_report
from fastrl.experiments.runner import Process, RunResult, load_results, run_all, save_results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastrl.experiments.updates", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (report.md, plots, runs/)")
    p.add_argument("--quick", action="store_true", help="the small grid (<= 30 min on 2 CPU cores with --jobs 2)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained in parallel (worker processes)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: CPU count / jobs, at least 1)")
    p.add_argument("--algos", nargs="+", help="only these algorithms' tasks")
    p.add_argument("--targets", nargs="+", type=TargetSetting.parse, metavar="hard:C|soft:TAU",
                   help="replace the grid's target settings")
    p.add_argument("--batch-sizes", nargs="+", type=int, help="replace the grid's batch sizes")
    p.add_argument("--seeds", nargs="+", type=int, help="replace the grid's seeds")
    p.add_argument("--total-steps", type=int, help="env steps per run for every task")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="extra training settings for every run (JSON values), e.g. learning_starts=500")
    p.add_argument("--separate", action="store_true",
                   help="train every run as its own process, not as stacked members (to compare the two)")
    p.add_argument("--plan", action="store_true", help="print the plan and exit")
    p.add_argument("--report-only", action="store_true", help="rebuild report and plots from DIR/results.json")
    return p


def parse_settings(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set: {item!r} is not KEY=VALUE")
        try:
            out[key.replace("-", "_")] = json.loads(raw)
        except ValueError:
            out[key.replace("-", "_")] = raw
    return out


def grid_from_args(args: argparse.Namespace) -> tuple[Grid, list[str]]:
    """The grid to run, and the tasks left out (with why)."""
    from fastrl.registry import ALGORITHMS

    grid = QUICK if args.quick else FULL
    extra = tuple(parse_settings(args.set).items())
    tasks, skipped = [], []
    for task in grid.tasks:
        if args.algos and task.algo not in args.algos:
            continue
        if task.algo not in ALGORITHMS:
            skipped.append(f"{task.name}: {task.algo} is not in fastrl.registry yet")
            continue
        task = dataclasses.replace(task, overrides=task.overrides + extra)
        if args.total_steps:
            task = dataclasses.replace(task, total_steps=args.total_steps,
                                       eval_every=min(task.eval_every, max(args.total_steps // 4, 1)))
        tasks.append(task)
    grid = dataclasses.replace(
        grid, tasks=tuple(tasks),
        targets=tuple(args.targets) if args.targets else grid.targets,
        batch_sizes=tuple(args.batch_sizes) if args.batch_sizes else grid.batch_sizes,
        seeds=tuple(args.seeds) if args.seeds else grid.seeds,
    )
    return grid, skipped


def stackable_algos(separate: bool) -> set[str]:
    """The algorithms whose runs train as stacked members (none with --separate)."""
    from fastrl.registry import ALGORITHMS

    return set() if separate else {name for name, algo in ALGORITHMS.items() if algo.build_members is not None}


def describe_plan(grid: Grid, processes: list[Process], runs_dir: Path, skipped: list[str], jobs: int,
                  threads: int | None) -> str:
    specs = grid.runs()
    lines = [f"plan: {len(grid.tasks)} task(s) × {len(grid.targets)} target settings × {len(grid.batch_sizes)} "
             f"batch sizes × {len(grid.seeds)} seeds = {len(specs)} runs in {len(processes)} processes, "
             f"{jobs} at a time, {threads or 'default'} torch thread(s) each; run folders under {runs_dir}"]
    for task in grid.tasks:
        cfg = dataclasses.replace(grid, tasks=(task,)).runs()[0].config(str(runs_dir))
        lines.append(f"  {task.name}: {task.total_steps:,} env steps, {cfg.updates_per_train} updates every "
                     f"{cfg.train_every} vector steps of {cfg.num_envs} envs (updates/transition "
                     f"{cfg.updates_per_transition:.4g}), eval every {task.eval_every:,}; replay ratio "
                     + ", ".join(f"{cfg.updates_per_transition * b:.4g} at batch {b}" for b in grid.batch_sizes))
    lines.append("  targets: " + ", ".join(t.label for t in grid.targets)
                 + "; batch sizes: " + ", ".join(map(str, grid.batch_sizes))
                 + "; seeds: " + ", ".join(map(str, grid.seeds)))
    lines += [f"  skipped {s}" for s in skipped]
    return "\n".join(lines)


def write_outputs(out: Path, grid: Grid, results: list[RunResult], ctx: RunContext) -> Path:
    summaries = summarize(results)
    thresholds = {t.name: t.threshold for t in grid.tasks}
    plots = [plot_learning_curves(summaries, t.name, t.threshold, out / f"curves_{t.name}.png")
             for t in grid.tasks if any(s.task == t.name for s in summaries)]
    plots.append(plot_return_vs_batch(summaries, thresholds, out / "return_vs_batch.png"))
    plots.append(plot_throughput_vs_batch(summaries, out / "throughput_vs_batch.png"))
    return write_report(out / "report.md", grid, summaries, ctx, plots)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    runs_dir = out / "runs"
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(args.jobs, 1))
    grid, skipped = grid_from_args(args)
    if not grid.tasks:
        print("nothing to run: " + ("; ".join(skipped) or "no task matches --algos"), file=sys.stderr)
        return 2
    processes = grid.processes(stackable_algos(args.separate))
    try:
        plan = describe_plan(grid, processes, runs_dir, skipped, args.jobs, threads)
        for process in processes:  # every process's settings are valid before the first one starts
            validate(process.config(str(runs_dir)))
    except ConfigError as exc:
        print(f"python -m fastrl.experiments.updates: error: {exc}", file=sys.stderr)
        return 2
    print(plan, file=sys.stderr, flush=True)
    if args.plan:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m fastrl.experiments.updates " + shlex.join(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    if args.report_only:
        if not (out / "results.json").is_file():
            print(f"--report-only: no {out / 'results.json'}; run the grid first", file=sys.stderr)
            return 2
        results = load_results(out / "results.json")
    else:
        results = run_all(processes, runs_dir, args.jobs, threads)
        save_results(out / "results.json", results)
    ctx = RunContext(command=command, date=datetime.now().strftime("%Y-%m-%d %H:%M"), jobs=args.jobs,
                     threads=threads, wall_s=time.perf_counter() - t0, skipped=skipped,
                     reused_runs=sum(r.reused for r in results))
    report = write_outputs(out, grid, results, ctx)
    print(f"wrote {report} and {len(list(out.glob('*.png')))} plots in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
