"""Run the grid's training runs (in parallel worker processes) through `fastrl.train.train`, and
reduce each run to a `RunResult`. A run whose folder already holds a finished run of the same
config is read back instead of re-trained, so an interrupted experiment resumes where it stopped."""

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

import torch

from fastrl.experiments.grid import RunSpec
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

    @staticmethod
    def from_dict(data: dict[str, Any]) -> RunResult:
        data = dict(data)
        data["curve"] = [tuple(point) for point in data["curve"]]
        return RunResult(**data)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in ("compile_resolved", "device_resolved")}


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


def result_of(spec: RunSpec, summary: dict[str, Any], reused: bool) -> RunResult:
    rows = read_metrics(Path(summary["run_dir"]))
    curve = [(int(r["env_step"]), float(r["eval_return_mean"])) for r in rows if r["eval_return_mean"]]
    reached = steps_to_threshold(curve, spec.task.threshold)
    return RunResult(
        name=spec.name, task=spec.task.name, algo=spec.task.algo, env=spec.task.env,
        target=spec.target.label, target_kind=spec.target.kind, target_value=spec.target.value,
        batch_size=spec.batch_size, seed=spec.seed,
        final_return_mean=summary["final_eval_return_mean"], final_return_std=summary["final_eval_return_std"],
        steps_to_threshold=reached, wall_s=summary["wall_s"], sps=summary["sps"],
        env_steps=summary["env_steps"], updates=summary["updates"],
        updates_per_s=summary["updates"] / max(summary["wall_s"], 1e-9),
        updates_per_transition=summary["updates_per_transition"], replay_ratio=summary["replay_ratio"],
        curve=curve, error=summary.get("error"), reused=reused,
    )


def run_one(spec: RunSpec, runs_dir: str, threads: int | None) -> RunResult:
    """Train one run (or read back its finished twin). Runs in a worker process."""
    from fastrl.train import check_setup, train

    if threads:
        torch.set_num_threads(threads)
    cfg = spec.config(runs_dir)
    previous = finished_summary(Path(cfg.run_dir), cfg.to_json())
    if previous is not None:
        return result_of(spec, previous, reused=True)
    env_spec, device = check_setup(cfg)
    summary = train(cfg, env_spec, device, time.perf_counter())
    if summary["interrupted"]:
        raise KeyboardInterrupt
    return result_of(spec, summary, reused=False)


def expected_cost(spec: RunSpec, runs_dir: str) -> float:
    """Rough relative cost: updates × (batch + a per-update overhead worth ~64 rows)."""
    cfg = spec.config(runs_dir)
    return cfg.total_steps * cfg.updates_per_transition * (cfg.batch_size + 64)


def run_all(specs: list[RunSpec], runs_dir: Path, jobs: int, threads: int | None) -> list[RunResult]:
    """Every run, `jobs` at a time; results in the order of `specs`."""
    results: dict[str, RunResult] = {}
    t0 = time.perf_counter()

    def report(result: RunResult) -> None:
        results[result.name] = result
        how = "reused" if result.reused else f"{result.wall_s:.0f} s"
        print(f"[{len(results)}/{len(specs)}] {result.name}: final return {result.final_return_mean:.1f} "
              f"({how}; {time.perf_counter() - t0:.0f} s elapsed)", file=sys.stderr, flush=True)

    if jobs <= 1:
        for spec in specs:
            report(run_one(spec, str(runs_dir), threads))
    else:
        # spawn, not fork: a forked child inherits the parent's torch thread pools half-initialized.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            # Longest first, so the last minutes are not one big run with the other workers idle.
            by_cost = sorted(specs, key=lambda spec: expected_cost(spec, str(runs_dir)), reverse=True)
            futures = [pool.submit(run_one, spec, str(runs_dir), threads) for spec in by_cost]
            for future in as_completed(futures):
                report(future.result())
    return [results[spec.name] for spec in specs]


def save_results(path: Path, results: list[RunResult]) -> None:
    path.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1) + "\n")


def load_results(path: Path) -> list[RunResult]:
    return [RunResult.from_dict(d) for d in json.loads(path.read_text())]

