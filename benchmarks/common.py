"""Helpers shared by the benchmark files."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastrl.buffer import Batch
from fastrl.envs import EnvSpec


def synchronized(fn: Callable[..., Any], device: torch.device) -> Callable[..., Any]:
    """`fn` followed by a device sync: CUDA launches are asynchronous, so without it a benchmark
    times the launch, not the work."""
    if device.type != "cuda":
        return fn

    def run(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        torch.cuda.synchronize(device)
        return out

    return run


def random_batch(spec: EnvSpec, batch_size: int, device: torch.device, seed: int = 0) -> Batch:
    """A mini-batch with the env's shapes and dtypes; the same seed gives the same data."""
    gen = torch.Generator().manual_seed(seed)
    if spec.obs_dtype == torch.uint8:  # Atari frames, stored and sampled as bytes
        obs = torch.randint(0, 256, (batch_size, *spec.obs_shape), generator=gen, dtype=torch.uint8)
        next_obs = torch.randint(0, 256, (batch_size, *spec.obs_shape), generator=gen, dtype=torch.uint8)
    else:
        obs = torch.randn((batch_size, *spec.obs_shape), generator=gen)
        next_obs = torch.randn((batch_size, *spec.obs_shape), generator=gen)
    if spec.discrete:
        actions = torch.randint(0, spec.num_actions, (batch_size,), generator=gen)
    else:
        low = torch.tensor(spec.action_low).reshape(spec.action_shape)
        high = torch.tensor(spec.action_high).reshape(spec.action_shape)
        actions = low + (high - low) * torch.rand((batch_size, *spec.action_shape), generator=gen)
    rewards = torch.randn(batch_size, generator=gen)
    terminated = (torch.rand(batch_size, generator=gen) < 0.05).float()
    return Batch(obs.to(device), actions.to(device), rewards.to(device), next_obs.to(device), terminated.to(device))


def needs_algo(algo: str) -> None:
    """Skip, with the reason, a benchmark for an algorithm the trainer does not have yet."""
    import pytest

    from fastrl.registry import ALGORITHMS

    if algo not in ALGORITHMS:
        pytest.skip(f"{algo} is not in fastrl.registry (have: {', '.join(ALGORITHMS)})")
