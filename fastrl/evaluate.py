"""Greedy evaluation on separate eval envs."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from fastrl.envs import TorchVecEnv


@torch.no_grad()
def evaluate_policy(policy: Callable[[torch.Tensor], torch.Tensor], envs: TorchVecEnv, episodes: int) -> list[float]:
    """Returns of `episodes` complete episodes. Each env contributes the same number of episodes,
    its first ones, so short episodes are not over-represented (as they would be if we kept
    whichever finished first)."""
    quota = math.ceil(episodes / envs.num_envs)
    per_env: list[list[float]] = [[] for _ in range(envs.num_envs)]
    obs = envs.reset()
    envs.pop_finished_episodes()
    while any(len(r) < quota for r in per_env):
        obs = envs.step(policy(obs)).next_obs
        for env_index, ret, _length in envs.pop_finished_episodes():
            if len(per_env[env_index]) < quota:
                per_env[env_index].append(ret)
    # Round-robin over envs so that trimming to `episodes` keeps the counts balanced.
    ordered = [per_env[e][k] for k in range(quota) for e in range(envs.num_envs)]
    return ordered[:episodes]


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std())
