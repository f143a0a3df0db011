"""Target networks: θ⁻ ← τθ + (1−τ)θ⁻ every update (soft) or θ⁻ ← θ every C updates (hard).

Both are one fused multi-tensor call over tensor lists built once; τ = 1 soft is a hard copy.
Non-float buffers (counters such as BatchNorm's num_batches_tracked) are copied, never lerped.
Target modules that keep copies of their weights (a bf16 `StackedMLP`) are told when they moved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
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


@dataclass
class MemberTargetUpdater:
    """Target updates of stacked members (every tensor [E k, ...], member e's part rows
    [e k, (e + 1) k)), each
    member with its own rule: soft members lerp by their τ every update, hard members copy every
    their own C updates. One lerp per tensor covers both: weight τ_e (soft), 1 or 0 (hard, due or
    not); lerp with weight 1 is an exact copy, with weight 0 leaves the target as it is."""
    online: list[torch.Tensor]
    target: list[torch.Tensor]
    soft: np.ndarray  # [E] bool
    tau: np.ndarray  # [E]
    period: np.ndarray  # [E] int
    moved: list[Callable[[], None]] = field(default_factory=list)
    _weights: dict[bytes, list[torch.Tensor]] = field(default_factory=dict)  # per weight pattern, made once

    def step(self, updates_done: int) -> None:
        weight = np.where(self.soft, self.tau, (updates_done % self.period == 0).astype(np.float64))
        if not weight.any():
            return
        if (weight == 1.0).all():
            hard_update_(self.target, self.online)
        else:
            for t, o, w in zip(self.target, self.online, self._weight_tensors(weight)):
                t.lerp_(o, w)
        for weights_changed in self.moved:
            weights_changed()

    def _weight_tensors(self, weight: np.ndarray) -> list[torch.Tensor]:
        key = weight.tobytes()
        tensors = self._weights.get(key)
        if tensors is None:
            column = torch.tensor(weight, dtype=self.target[0].dtype, device=self.target[0].device)
            # A member may own several rows of a tensor (TD3's twin critics): each row its member's weight.
            tensors = [column.repeat_interleave(t.shape[0] // column.numel()).view(-1, *(1,) * (t.dim() - 1))
                       for t in self.target]
            if len(self._weights) < 1024:  # patterns of hard periods repeat; never grow without bound
                self._weights[key] = tensors
        return tensors


def make_member_target_updater(online: nn.Module, target: nn.Module, kinds: list[str], taus: list[float],
                               periods: list[int]) -> MemberTargetUpdater:
    """Per-member rules for the [E, ...] parameters of `online` and `target` (StackedMLPs)."""
    pairs = list(zip(online.parameters(), target.parameters(), strict=True))
    moved = [m.weights_changed for m in target.modules() if hasattr(m, "weights_changed")]
    return MemberTargetUpdater([o.detach() for o, _ in pairs], [t.detach() for _, t in pairs],
                               np.array([k == "soft" for k in kinds]), np.array(taus, dtype=np.float64),
                               np.array(periods, dtype=np.int64), moved)
