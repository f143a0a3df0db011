"""report.md: what was run, on what, how the grid is balanced, and one table per task."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from fastrl.experiments.aggregate import SettingSummary, marginal_means, ordered
from fastrl.experiments.grid import Grid, Task


@dataclass
class RunContext:
    command: str
    date: str
    jobs: int
    threads: int | None
    wall_s: float
    skipped: list[str]  # tasks left out, with the reason
    reused_runs: int


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = f"; GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "; no GPU"
    return f"{cpu}, {os.cpu_count()} logical CPUs{gpu}; torch {torch.__version__}; Python {platform.python_version()}"


def code_version() -> str:
    """The commit the runs were made with, and whether the tree had uncommitted changes."""
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True, cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit}{' with uncommitted changes' if dirty else ''}"


def _fmt_steps(s: SettingSummary) -> str:
    return "—" if s.steps_to_threshold is None else f"{s.steps_to_threshold:,.0f}"


def stacking_note(summaries: list[SettingSummary]) -> list[str]:
    together = sorted({s.members_in_process for s in summaries if s.members_in_process > 1})
    if not together:
        return ["- Every run trained as its own process"]
    return [f"- Stacked: each task's runs of one batch size (every target setting × seed) trained as the "
            f"stacked members of one process ({', '.join(map(str, together))} members; `fastrl.members`), "
            f"so a stacked run's wall s, updates/s and SPS are its process's, shared by its members"]


def task_section(task: Task, rows: list[SettingSummary]) -> list[str]:
    lines = [f"## {task.name}", "",
             f"Steps to threshold: the first eval step that starts two consecutive greedy evals with "
             f"return >= {task.threshold:g}; median over the seeds that got there. "
             f"Updates per transition: {rows[0].updates_per_transition:.4g} for every setting."
             + (" TD3/DDPG move their targets with the actor, once every policy_delay critic updates, "
                "so for them C and τ count actor updates." if task.algo in ("td3", "ddpg") else ""), "",
             "| target | batch | replay ratio | final return (mean ± std) | reached | steps to threshold (median) "
             "| wall s | updates/s | SPS |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in rows:
        lines.append(
            f"| {s.target} | {s.batch_size} | {s.replay_ratio:.4g} | {s.return_mean:.1f} ± {s.return_std:.1f} "
            f"| {s.reached}/{s.seeds}{f' ({s.failed} diverged)' if s.failed else ''} | {_fmt_steps(s)} | {s.wall_s:.1f} | {s.updates_per_s:.0f} | {s.sps:.0f} |")
    by_kind = marginal_means(rows, "target_kind")
    by_batch = marginal_means(rows, "batch_size")
    best = sorted(rows, key=lambda s: s.return_mean, reverse=True)[:3]
    lines += ["",
              "Mean final return over the other factor — by target kind: "
              + ", ".join(f"{k} {v:.1f}" for k, v in sorted(by_kind.items()))
              + "; by batch size: " + ", ".join(f"{k}: {v:.1f}" for k, v in sorted(by_batch.items())) + ".",
              "Best settings by final return: "
              + "; ".join(f"{s.target}, batch {s.batch_size} ({s.return_mean:.1f} ± {s.return_std:.1f})" for s in best)
              + ".", ""]
    return lines


def write_report(path: Path, grid: Grid, summaries: list[SettingSummary], ctx: RunContext,
                 plots: list[Path]) -> Path:
    tasks = [t for t in grid.tasks if any(s.task == t.name for s in summaries)]
    runs = sum(s.seeds for s in summaries)
    lines = [
        "# Hard vs soft target updates × batch size", "",
        f"- Command: `{ctx.command}`",
        f"- Date: {ctx.date}; machine: {machine()}; code: fastrl {code_version()}",
        f"- Parallel runs: {ctx.jobs}, torch threads per run: {ctx.threads or 'torch default'}; "
        f"this invocation took {ctx.wall_s / 60:.1f} min ({ctx.reused_runs} of {runs} runs read back from "
        f"earlier finished runs); the processes' own wall times sum to "
        f"{sum(s.wall_s * s.seeds / s.members_in_process for s in summaries) / 60:.1f} min",
        *stacking_note(summaries),
        f"- Grid: {len(tasks)} task(s) × {len(grid.targets)} target settings × {len(grid.batch_sizes)} batch "
        f"sizes × {len(grid.seeds)} seeds = {runs} runs",
        "- Tasks: " + "; ".join(f"{t.algo} {t.env}, {t.total_steps:,} env steps, eval every {t.eval_every:,}"
                                 for t in tasks),
        "- Target settings: " + ", ".join(t.label for t in grid.targets)
        + f"; batch sizes: {', '.join(map(str, grid.batch_sizes))}; seeds: {', '.join(map(str, grid.seeds))}",
        *[f"- Note: {n}" for n in grid.notes],
        *[f"- Skipped: {s}" for s in ctx.skipped],
        "",
        "## Design: equal env steps, equal updates, replay ratio grows with the batch", "",
        "Every run of a task collects the same env steps and performs the same number of gradient updates "
        "(the preset's updates per transition); only the target update and the batch size change. "
        "The update-to-data ratio in updates is therefore fixed, and the replay ratio (transitions trained "
        "on per transition collected = updates per transition × batch) grows with the batch size, as the "
        "tables state. Why not scale the updates down as the batch grows, to hold the replay ratio? The "
        "hard period C and τ are counted in updates: with fewer updates, C=500 would mean 4× more env "
        "steps between syncs at batch 512 than at batch 128, and the two factors would be confounded. "
        "Fixed updates keep each target setting the same in env steps at every batch size, and ask the "
        "question a GPU user has: a bigger batch costs little per update there — does it buy return? "
        "(The throughput columns show what it costs on this machine.)", "",
        "Reading hard against soft: a soft target lags the online net by (1−τ)/τ updates on average, a "
        "hard one by (C−1)/2, so τ=0.02 is comparable to C=100 and τ=0.005 to C=400.", "",
        "Final return: each seed's greedy evaluation at the last step (the task's eval episodes), then "
        "mean ± std over seeds. Updates/s and SPS are over the run's whole wall time (acting, env steps, "
        "evaluations included) with the parallel runs sharing the machine.", "",
    ]
    for task in tasks:
        rows = [s for s in ordered(summaries) if s.task == task.name]
        lines += task_section(task, rows)
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    path.write_text("\n".join(lines))
    return path
