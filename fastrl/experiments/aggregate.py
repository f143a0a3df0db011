"""Reduce per-run results to one row per (task, target setting, batch size): the mean and the
spread over seeds. Pure functions of the results, so the report and plots can be rebuilt from
results.json alone."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from fastrl.experiments.runner import RunResult


@dataclass
class SettingSummary:
    task: str
    target: str
    target_kind: str
    target_value: float
    batch_size: int
    seeds: int
    return_mean: float  # mean over seeds of each seed's final greedy eval return
    return_std: float  # std over seeds (population std; 0 for one seed)
    reached: int  # seeds whose eval reached the threshold at some point
    failed: int  # seeds stopped by the trainer's non-finite check
    steps_to_threshold: float | None  # median over the seeds that reached it
    wall_s: float  # mean over seeds (of each run's process, when stacked)
    updates_per_s: float
    sps: float
    updates_per_transition: float
    replay_ratio: float
    curve_steps: list[int]
    curve_mean: list[float]
    curve_std: list[float]
    members_in_process: int = 1  # runs that trained as one process's stacked members


def summarize(results: list[RunResult]) -> list[SettingSummary]:
    groups: dict[tuple[str, str, int], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.task, r.target, r.batch_size), []).append(r)
    return [_summary(runs) for runs in groups.values()]


def _summary(runs: list[RunResult]) -> SettingSummary:
    first = runs[0]
    finals = np.array([r.final_return_mean for r in runs], dtype=np.float64)
    reached = [r.steps_to_threshold for r in runs if r.steps_to_threshold is not None]
    steps, mean, std = mean_curve(runs)
    return SettingSummary(
        task=first.task, target=first.target, target_kind=first.target_kind, target_value=first.target_value,
        batch_size=first.batch_size, seeds=len(runs), return_mean=float(finals.mean()),
        return_std=float(finals.std()), reached=len(reached),
        failed=sum(r.error is not None for r in runs),
        steps_to_threshold=float(statistics.median(reached)) if reached else None,
        wall_s=float(np.mean([r.wall_s for r in runs])),
        updates_per_s=float(np.mean([r.updates_per_s for r in runs])),
        sps=float(np.mean([r.sps for r in runs])),
        updates_per_transition=first.updates_per_transition, replay_ratio=first.replay_ratio,
        curve_steps=steps, curve_mean=mean, curve_std=std, members_in_process=first.members_in_process,
    )


def mean_curve(runs: list[RunResult]) -> tuple[list[int], list[float], list[float]]:
    """Mean and std over seeds at the eval steps every seed has (they share eval_every)."""
    common = sorted(set.intersection(*(set(step for step, _ in r.curve) for r in runs)))
    if not common:
        return [], [], []
    values = np.array([[dict(r.curve)[s] for s in common] for r in runs], dtype=np.float64)
    return common, values.mean(axis=0).tolist(), values.std(axis=0).tolist()


def ordered(summaries: list[SettingSummary]) -> list[SettingSummary]:
    """Task, then hard before soft (periods ascending, tau ascending), then batch size."""
    return sorted(summaries, key=lambda s: (s.task, s.target_kind, s.target_value, s.batch_size))


def marginal_means(summaries: list[SettingSummary], key: str) -> dict[object, float]:
    """Mean final return over all other factors, by `key` ("target_kind", "target" or "batch_size")."""
    groups: dict[object, list[float]] = {}
    for s in summaries:
        groups.setdefault(getattr(s, key), []).append(s.return_mean)
    return {k: float(np.mean(v)) for k, v in groups.items()}
