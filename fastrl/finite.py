"""The NaN/Inf guard. Checking every update would cost a host sync per update, so the train loop
checks the metrics it already reduces once per log window (a NaN anywhere in the window makes the
window's sum NaN) and every weight before a checkpoint is written, so a poisoned checkpoint never
replaces a good one."""

from __future__ import annotations

import math
from typing import Any

import torch


class NonFiniteError(RuntimeError):
    """Training produced NaN or Inf. `what` names the tensor or metric; `env_step` says when."""

    def __init__(self, what: str, env_step: int, updates: int):
        self.what, self.env_step, self.updates = what, env_step, updates
        super().__init__(f"non-finite {what} at env step {env_step} (after {updates} updates)")


def first_nonfinite(tree: Any, prefix: str = "") -> str | None:
    """Dotted path of the first floating-point tensor in a nested state dict holding NaN or Inf."""
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() and not bool(torch.isfinite(tree).all()):
            return prefix or "tensor"
        return None
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return None
    for key, value in items:
        found = first_nonfinite(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def check_metrics(metrics: dict[str, float], env_step: int, updates: int) -> None:
    for name, value in metrics.items():
        if not math.isfinite(value):
            raise NonFiniteError(f"{name} ({value})", env_step, updates)


def check_weights(state: dict[str, Any], env_step: int, updates: int) -> None:
    bad = first_nonfinite(state)
    if bad is not None:
        raise NonFiniteError(f"values in {bad}", env_step, updates)
