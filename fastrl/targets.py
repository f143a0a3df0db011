"""Target networks: θ⁻ ← τθ + (1−τ)θ⁻ every update (soft) or θ⁻ ← θ every C updates (hard).

Both are one fused multi-tensor call over tensor lists built once; τ = 1 soft is a hard copy.
Non-float buffers (counters such as BatchNorm's num_batches_tracked) are copied, never lerped.
Target modules that keep copies of their weights (a bf16 `StackedMLP`) are told when they moved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


def soft_update_(target: list[torch.Tensor], online: list[torch.Tensor], tau: float) -> None:
    torch._foreach_lerp_(target, online, tau)


def hard_update_(target: list[torch.Tensor], online: list[torch.Tensor]) -> None:
    torch._foreach_copy_(target, online)


@dataclass
class TargetUpdater:
    online_float: list[torch.Tensor]
    target_float: list[torch.Tensor]
    online_other: list[torch.Tensor]  # non-float buffers
    target_other: list[torch.Tensor]
    kind: str  # "soft" or "hard"
    tau: float
    period: int
    moved: list[Callable[[], None]] = field(default_factory=list)  # the targets' `weights_changed`

    def step(self, updates_done: int) -> None:
        """Call after each gradient update; `updates_done` counts updates including this one."""
        if self.kind == "soft":
            soft_update_(self.target_float, self.online_float, self.tau)
        elif updates_done % self.period == 0:
            hard_update_(self.target_float, self.online_float)
        else:
            return
        if self.online_other:
            hard_update_(self.target_other, self.online_other)
        for weights_changed in self.moved:
            weights_changed()


def make_target_updater(pairs: list[tuple[nn.Module, nn.Module]], kind: str, tau: float,
                        period: int) -> TargetUpdater:
    """`pairs` of (online, target) modules; all of them are updated by the same single call."""
    online_f, target_f, online_o, target_o, moved = [], [], [], [], []
    for online, target in pairs:
        moved += [m.weights_changed for m in target.modules() if hasattr(m, "weights_changed")]
        for o, t in zip(list(online.parameters()) + list(online.buffers()),
                        list(target.parameters()) + list(target.buffers()), strict=True):
            if o.shape != t.shape:
                raise ValueError("online and target networks differ in shape")
            if o.is_floating_point():
                online_f.append(o.detach())
                target_f.append(t.detach())
            else:
                online_o.append(o)
                target_o.append(t)
    return TargetUpdater(online_f, target_f, online_o, target_o, kind, tau, period, moved)
