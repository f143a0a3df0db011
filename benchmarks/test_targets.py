"""Target-network updates: fastrl's fused multi-tensor calls against the per-parameter loops
common in other libraries, on a small and a large network.

soft: fused      `torch._foreach_lerp_` over all tensors (fastrl.targets.soft_update_)
      naive      per parameter, `t.data.copy_(tau * p.data + (1 - tau) * t.data)` (two temporaries)
      mul-add    per parameter, `t.mul_(1 - tau)` then `torch.add(t, p, alpha=tau, out=t)` (in place)
hard: fused      `torch._foreach_copy_` (fastrl.targets.hard_update_)
      loop       per parameter `t.copy_(p)`
      state-dict `target.load_state_dict(online.state_dict())`
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from benchmarks.common import synchronized
from fastrl.networks import NatureCNN, mlp
from fastrl.targets import make_target_updater

TAU = 0.005


def network(size: str) -> nn.Module:
    torch.manual_seed(0)
    if size == "small":  # the DQN CartPole preset's Q-network: 67k parameters in 6 tensors
        return mlp(4, (256, 256), 2)
    # Atari DQN's Nature CNN, 1.7M parameters in 10 tensors
    return NatureCNN((4, 84, 84), (512,), 18)


def pairs(size: str, device: torch.device) -> tuple[nn.Module, nn.Module]:
    online = network(size).to(device)
    return online, copy.deepcopy(online).requires_grad_(False)


@torch.no_grad()
def soft_naive(online: nn.Module, target: nn.Module) -> None:
    for p, t in zip(online.parameters(), target.parameters()):
        t.data.copy_(TAU * p.data + (1.0 - TAU) * t.data)


@torch.no_grad()
def soft_mul_add(online: nn.Module, target: nn.Module) -> None:
    for p, t in zip(online.parameters(), target.parameters()):
        t.mul_(1.0 - TAU)
        torch.add(t, p, alpha=TAU, out=t)


@torch.no_grad()
def hard_loop(online: nn.Module, target: nn.Module) -> None:
    for p, t in zip(online.parameters(), target.parameters()):
        t.copy_(p)


def hard_state_dict(online: nn.Module, target: nn.Module) -> None:
    target.load_state_dict(online.state_dict())


SIZES = ["small", "large"]


@pytest.mark.parametrize("impl", ["fused", "naive", "mul-add"])
@pytest.mark.parametrize("size", SIZES)
def test_soft_update(benchmark, device, size, impl):
    benchmark.group = f"target-soft-{size}-{device.type}"
    online, target = pairs(size, device)
    if impl == "fused":
        updater = make_target_updater([(online, target)], "soft", TAU, 1)
        fn = lambda: updater.step(1)  # noqa: E731
    else:
        loop = soft_naive if impl == "naive" else soft_mul_add
        fn = lambda: loop(online, target)  # noqa: E731
    benchmark.extra_info["parameters"] = sum(p.numel() for p in online.parameters())
    benchmark(synchronized(fn, device))


@pytest.mark.parametrize("impl", ["fused", "loop", "state-dict"])
@pytest.mark.parametrize("size", SIZES)
def test_hard_update(benchmark, device, size, impl):
    benchmark.group = f"target-hard-{size}-{device.type}"
    online, target = pairs(size, device)
    if impl == "fused":
        updater = make_target_updater([(online, target)], "hard", 1.0, 1)
        fn = lambda: updater.step(1)  # noqa: E731  (period 1: every call copies)
    else:
        loop = hard_loop if impl == "loop" else hard_state_dict
        fn = lambda: loop(online, target)  # noqa: E731
    benchmark.extra_info["parameters"] = sum(p.numel() for p in online.parameters())
    benchmark(synchronized(fn, device))
