"""The run folder: config.json, metrics.csv, TensorBoard events (when installed), summary.json,
learning_curve.png."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import torch

# The columns every run writes first, in this order; an algorithm's metrics (whatever names its
# updates return) and exploration settings follow, in the order they first appear.
METRIC_COLUMNS = (
    "env_step", "wall_s", "sps", "updates", "episodes", "episodic_return", "episodic_length",
    "loss", "mean_q", "grad_norm", "lr", "action_entropy", "eval_return_mean", "eval_return_std",
)


def played_action_entropy(actions: torch.Tensor, discrete: bool, num_actions: int,
                          low: torch.Tensor | None = None, high: torch.Tensor | None = None,
                          bins: int = 20) -> float:
    """Entropy (nats) of the actions actually played: a collapse detector. Discrete: of the
    empirical action distribution (max log n). Continuous: mean over action dims of the entropy of
    a `bins`-bin histogram over [low, high] (max log bins)."""
    if actions.numel() == 0:
        return math.nan
    if discrete:
        counts = torch.bincount(actions.reshape(-1).long(), minlength=num_actions).double()
        p = counts / counts.sum()
        return float(-(p * torch.log(p.clamp_min(1e-300))).sum())
    flat = actions.reshape(-1, actions.shape[-1]).double()
    flat = flat[torch.isfinite(flat).all(dim=1)]  # a stopped member's NaN actions (`fastrl.members`)
    if flat.shape[0] == 0:
        return math.nan
    scaled = (flat - low.double()) / (high.double() - low.double())
    idx = (scaled.clamp(0.0, 1.0) * bins).long().clamp_max(bins - 1)
    entropies = []
    for d in range(idx.shape[1]):
        p = torch.bincount(idx[:, d], minlength=bins).double()
        p = p / p.sum()
        entropies.append(float(-(p * torch.log(p.clamp_min(1e-300))).sum()))
    return sum(entropies) / len(entropies)


class RunLog:
    """metrics.csv and TensorBoard. A row may bring a name no earlier row had: the CSV then gains
    that column (the file is rewritten with the wider header; earlier rows leave it empty), so no
    metric is ever dropped. Appending to a resumed run's file keeps its columns."""

    def __init__(self, run_dir: Path, config: dict[str, Any], append: bool = False):
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        self.path = run_dir / "metrics.csv"
        self.columns: list[str] = list(METRIC_COLUMNS)
        if append and self.path.exists():
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), [])
            self.columns += [c for c in header if c not in self.columns]
            self._file = open(self.path, "a", newline="")
            if header != self.columns:
                self._rewrite()
        else:
            self._file = open(self.path, "w", newline="")
            self._writer().writeheader()
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tb"))
        except ImportError:  # tensorboard is optional
            pass

    def _writer(self) -> csv.DictWriter:
        return csv.DictWriter(self._file, fieldnames=self.columns)

    def _rewrite(self) -> None:
        """Write the file again with `self.columns` as its header (rows are few: one per log window)."""
        self._file.close()
        rows = read_metrics(self.run_dir)
        self._file = open(self.path, "w", newline="")
        writer = self._writer()
        writer.writeheader()
        writer.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns += new
            self._rewrite()
        self._writer().writerow({k: _fmt(v) for k, v in row.items()})
        self._file.flush()
        if self._tb is not None:
            prefix = f"member{row['member']}/" if "member" in row else ""  # a stacked run: a row per member
            for key, value in row.items():
                if key != "env_step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(prefix + key, value, row["env_step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def plot_learning_curve(run_dir: Path, title: str) -> Path | None:
    """Training and eval returns against env steps, from metrics.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if rows and rows[0].get("member"):
        return _plot_members(run_dir, rows, title, plt)
    train = [(int(r["env_step"]), float(r["episodic_return"])) for r in rows if r["episodic_return"]]
    evals = [(int(r["env_step"]), float(r["eval_return_mean"]), float(r["eval_return_std"] or 0.0))
             for r in rows if r["eval_return_mean"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train episodic return (window mean)")
    if evals:
        steps, means, stds = zip(*evals)
        ax.errorbar(steps, means, yerr=stds, fmt="o-", capsize=3, label="greedy eval return (mean ± std)")
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    path = run_dir / "learning_curve.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_members(run_dir: Path, rows: list[dict[str, str]], title: str, plt: Any) -> Path:
    """A stacked run: each member's training return (thin line), and per grid point the mean over
    its members with a ± std band; grid points are told apart by colour."""
    import numpy as np

    from fastrl.members import SETTING_PREFIX

    settings = [c for c in rows[0] if c.startswith(SETTING_PREFIX)]
    curves: dict[int, list[tuple[int, float]]] = {}
    point_of: dict[int, str] = {}
    for r in rows:
        member = int(r["member"])
        point_of[member] = ", ".join(f"{c.removeprefix(SETTING_PREFIX)}={r[c]}" for c in settings) or "all members"
        if r["episodic_return"]:
            curves.setdefault(member, []).append((int(r["env_step"]), float(r["episodic_return"])))
    points = sorted(set(point_of.values()))
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, point in enumerate(points):
        colour = colours(k % 10)
        members = [m for m, p in point_of.items() if p == point and m in curves]
        for m in members:
            ax.plot(*zip(*curves[m]), color=colour, alpha=0.25, linewidth=0.8)
        steps = sorted({s for m in members for s, _ in curves[m]})
        if not steps:
            continue
        # Each member's curve at every logged step (logged steps are shared by all members).
        by_step = [dict(curves[m]) for m in members]
        grid = np.array([[curve.get(s, np.nan) for s in steps] for curve in by_step])
        mean, std = np.nanmean(grid, axis=0), np.nanstd(grid, axis=0)
        ax.plot(steps, mean, color=colour, linewidth=2, label=f"{point} (mean of {len(members)})")
        ax.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.15)
    ax.set_xlabel("env steps (per member)")
    ax.set_ylabel("train episodic return (window mean)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    path = run_dir / "learning_curve.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

