"""Run the grid's training processes (in parallel worker processes) through `fastrl.train.train`,
and reduce each run to a `RunResult`. A process is one run, or many runs trained as the stacked
members of one process (`grid.StackedRuns`), each member then a run of its own in the results. A
process whose folder already holds a finished run of the same config is read back instead of
re-trained, so an interrupted experiment resumes where it stopped."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastrl.config import RESOLVED_KEYS
from fastrl.experiments.grid import RunSpec, StackedRuns
from fastrl.runlog import read_metrics


@dataclass
class RunResult:
    name: str
    task: str
    algo: str
    env: str
    target: str  # label, e.g. "hard C=500"
    target_kind: str
    target_value: float
    batch_size: int
    seed: int
    final_return_mean: float  # greedy eval at the last step, over the eval episodes
    final_return_std: float
    steps_to_threshold: int | None  # see steps_to_threshold()
    wall_s: float
    sps: float
    env_steps: int
    updates: int
    updates_per_s: float  # over the whole run's wall time (acting, env and evals included)
    updates_per_transition: float
    replay_ratio: float
    curve: list[tuple[int, float]]  # (env step, greedy eval return mean)
    error: str | None = None  # the trainer's non-finite stop, if the run diverged
    reused: bool = False
    # Runs trained together as the stacked members of this run's process (1: alone); wall_s,
    # sps and updates_per_s are then the process's, which every member shares.
    members_in_process: int = 1

    @staticmethod
    def from_dict(data: dict[str, Any]) -> RunResult:
        data = dict(data)
        data["curve"] = [tuple(point) for point in data["curve"]]
        return RunResult(**data)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in RESOLVED_KEYS}


def finished_summary(run_dir: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The summary of a finished, uninterrupted run of exactly `config` in `run_dir`, else None."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        stored = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("interrupted") or _comparable(stored) != _comparable(config):
        return None
    return summary


def steps_to_threshold(curve: list[tuple[int, float]], threshold: float, hold: int = 2) -> int | None:
    """The first eval step that starts `hold` consecutive evals at or above `threshold`. One eval
    is not enough: an untrained greedy CartPole policy now and then balances for 500 steps."""
    returns = [ret for _, ret in curve]
    for i in range(len(curve) - hold + 1):
        if all(ret >= threshold for ret in returns[i:i + hold]):
            return curve[i][0]
    return None


def _curve(rows: list[dict[str, str]]) -> list[tuple[int, float]]:
    return [(int(r["env_step"]), float(r["eval_return_mean"])) for r in rows if r["eval_return_mean"]]


def result_of(spec: RunSpec, summary: dict[str, Any], reused: bool, member: int | None = None,
              rows: list[dict[str, str]] | None = None) -> RunResult:
    """The result of `spec`: a run of its own, or member `member` of a stacked run (`rows` its
    metrics.csv, read once for all members)."""
    if rows is None:
        rows = read_metrics(Path(summary["run_dir"]))
    if member is None:
        curve, final = _curve(rows), (summary["final_eval_return_mean"], summary["final_eval_return_std"])
        error, together = summary.get("error"), 1
    else:
        own = summary["members"][member]
        curve = _curve([r for r in rows if r["member"] == str(member)])
        final = (own["final_eval_return_mean"], float(np.std(own["final_eval_returns"])))
        error, together = own["stopped"], len(summary["members"])
    return RunResult(
        name=spec.name, task=spec.task.name, algo=spec.task.algo, env=spec.task.env,
        target=spec.target.label, target_kind=spec.target.kind, target_value=spec.target.value,
        batch_size=spec.batch_size, seed=spec.seed,
        final_return_mean=final[0], final_return_std=final[1],
        steps_to_threshold=steps_to_threshold(curve, spec.task.threshold), wall_s=summary["wall_s"],
        sps=summary["sps"], env_steps=summary["env_steps"], updates=summary["updates"],
        updates_per_s=summary["updates"] / max(summary["wall_s"], 1e-9),
        updates_per_transition=summary["updates_per_transition"], replay_ratio=summary["replay_ratio"],
        curve=curve, error=error, reused=reused, members_in_process=together,
    )


Process = RunSpec | StackedRuns


def results_of(process: Process, summary: dict[str, Any], reused: bool) -> list[RunResult]:
    if isinstance(process, RunSpec):
        return [result_of(process, summary, reused)]
    rows = read_metrics(Path(summary["run_dir"]))
    return [result_of(spec, summary, reused, member, rows) for member, spec in enumerate(process.specs)]


def run_one(process: Process, runs_dir: str, threads: int | None) -> list[RunResult]:
    """Train one process (or read back its finished twin). Runs in a worker process."""
    from fastrl.train import check_setup, train

    cfg = process.config(runs_dir)
    if threads:
        # In the run's own settings: train() sets its threads from them, and --threads 0 (auto)
        # would give a batch-256+ run every core, two OpenMP pools per core with --jobs 2.
        cfg = dataclasses.replace(cfg, threads=threads)
    previous = finished_summary(Path(cfg.run_dir), cfg.to_json())
    if previous is not None:
        return results_of(process, previous, reused=True)
    env_spec, device = check_setup(cfg)
    summary = train(cfg, env_spec, device, time.perf_counter())
    if summary["interrupted"]:
        raise KeyboardInterrupt
    return results_of(process, summary, reused=False)


def expected_cost(process: Process, runs_dir: str) -> float:
    """Rough relative cost: updates × (batch + a per-update overhead worth ~64 rows), per member."""
    cfg = process.config(runs_dir)
    return len(process.specs) * cfg.total_steps * cfg.updates_per_transition * (cfg.batch_size + 64)


def run_all(processes: list[Process], runs_dir: Path, jobs: int, threads: int | None) -> list[RunResult]:
    """Every process, `jobs` at a time; the runs' results in the order of the processes' specs."""
    results: dict[str, RunResult] = {}
    total = sum(len(p.specs) for p in processes)
    t0 = time.perf_counter()

    def report(batch: list[RunResult]) -> None:
        for result in batch:
            results[result.name] = result
            how = "reused" if result.reused else f"{result.wall_s:.0f} s"
            if result.members_in_process > 1:
                how += f", one of {result.members_in_process} stacked members"
            print(f"[{len(results)}/{total}] {result.name}: final return {result.final_return_mean:.1f} "
                  f"({how}; {time.perf_counter() - t0:.0f} s elapsed)", file=sys.stderr, flush=True)

    if jobs <= 1:
        for process in processes:
            report(run_one(process, str(runs_dir), threads))
    else:
        # spawn, not fork: a forked child inherits the parent's torch thread pools half-initialized.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            # Longest first, so the last minutes are not one big run with the other workers idle.
            by_cost = sorted(processes, key=lambda p: expected_cost(p, str(runs_dir)), reverse=True)
            futures = [pool.submit(run_one, process, str(runs_dir), threads) for process in by_cost]
            for future in as_completed(futures):
                report(future.result())
    return [results[spec.name] for process in processes for spec in process.specs]


def save_results(path: Path, results: list[RunResult]) -> None:
    path.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1) + "\n")


def load_results(path: Path) -> list[RunResult]:
    return [RunResult.from_dict(d) for d in json.loads(path.read_text())]

