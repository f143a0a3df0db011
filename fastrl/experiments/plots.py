"""The experiment's figures, drawn from per-setting summaries: learning curves per task, final
return against batch size, and learner throughput against batch size."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from fastrl.experiments.aggregate import SettingSummary, ordered  # noqa: E402


def colors(summaries: list[SettingSummary]) -> dict[str, tuple]:
    """Hard settings in blues, soft in oranges, darker for slower-moving targets."""
    out: dict[str, tuple] = {}
    for kind, cmap, slow_first in (("hard", plt.cm.Blues, False), ("soft", plt.cm.Oranges, True)):
        labels = list(dict.fromkeys(s.target for s in ordered(summaries) if s.target_kind == kind))
        if slow_first:  # small tau = slow target; put it dark like a long hard period
            labels.reverse()
        for i, label in enumerate(labels):
            out[label] = cmap(0.45 + 0.5 * i / max(len(labels) - 1, 1))
    return out


def _tasks(summaries: list[SettingSummary]) -> list[str]:
    return list(dict.fromkeys(s.task for s in ordered(summaries)))


def plot_learning_curves(summaries: list[SettingSummary], task: str, threshold: float | None, path: Path) -> Path:
    rows = [s for s in ordered(summaries) if s.task == task]
    batches = sorted({s.batch_size for s in rows})
    palette = colors(rows)
    fig, axes = plt.subplots(1, len(batches), figsize=(4.2 * len(batches), 3.8), sharey=True, squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for s in (s for s in rows if s.batch_size == batch):
            lo = [m - d for m, d in zip(s.curve_mean, s.curve_std)]
            hi = [m + d for m, d in zip(s.curve_mean, s.curve_std)]
            ax.plot(s.curve_steps, s.curve_mean, color=palette[s.target], label=s.target)
            ax.fill_between(s.curve_steps, lo, hi, color=palette[s.target], alpha=0.15, linewidth=0)
        if threshold is not None:
            ax.axhline(threshold, color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"batch {batch}")
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("greedy eval return (mean ± std over seeds)")
    axes[0][-1].legend(loc="best", fontsize=8)
    fig.suptitle(f"{task}: learning curves by target update and batch size")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _by_batch(summaries: list[SettingSummary], path: Path, title: str, ylabel: str, value, error=None,
              thresholds: dict[str, float] | None = None) -> Path:
    tasks = _tasks(summaries)
    palette = colors(summaries)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = [s for s in ordered(summaries) if s.task == task]
        labels = list(dict.fromkeys(s.target for s in rows))
        for i, label in enumerate(labels):
            line = sorted((s for s in rows if s.target == label), key=lambda s: s.batch_size)
            # Nudge each setting sideways a little so error bars at one batch size stay readable.
            dodge = 2 ** (0.05 * (i - (len(labels) - 1) / 2))
            xs = [s.batch_size * dodge for s in line]
            ax.errorbar(xs, [value(s) for s in line], yerr=[error(s) for s in line] if error else None,
                        marker="o", capsize=3, color=palette[label], label=label)
        if thresholds and task in thresholds:
            ax.axhline(thresholds[task], color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({s.batch_size for s in rows}), [str(b) for b in sorted({s.batch_size for s in rows})])
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_return_vs_batch(summaries: list[SettingSummary], thresholds: dict[str, float], path: Path) -> Path:
    return _by_batch(summaries, path, "Final greedy eval return vs batch size (mean ± std over seeds)",
                     "final eval return", lambda s: s.return_mean, lambda s: s.return_std, thresholds)


def plot_throughput_vs_batch(summaries: list[SettingSummary], path: Path) -> Path:
    return _by_batch(summaries, path, "Updates per second of wall time vs batch size (whole run, mean over seeds)",
                     "updates / s", lambda s: s.updates_per_s)
