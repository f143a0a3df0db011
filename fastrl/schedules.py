"""Schedules as pure functions of a step counter."""

from __future__ import annotations


def linear(start: float, end: float, duration: float, step: float) -> float:
    """`start` at step 0, `end` from step `duration` on, straight line between."""
    if duration <= 0:
        return end
    frac = min(max(step / duration, 0.0), 1.0)
    return start + frac * (end - start)


def robbins_monro(lr0: float, k0: float, power: float, k: float) -> float:
    """α_k = α_0 / (1 + k/k0)^p. For 0.5 < p <= 1, Σα_k diverges (the iterates can reach any
    point) and Σα_k² converges (the noise averages out): the Robbins–Monro conditions."""
    return lr0 / (1.0 + k / k0) ** power


def learning_rate(schedule: str, lr0: float, update: int, total_updates: int, *, end_fraction: float = 0.0,
                  k0: float = 1_000.0, power: float = 0.75) -> float:
    if schedule == "constant":
        return lr0
    if schedule == "linear":
        return linear(lr0, lr0 * end_fraction, total_updates, update)
    if schedule == "robbins-monro":
        return robbins_monro(lr0, k0, power, update)
    raise ValueError(f"unknown lr schedule {schedule!r}")
