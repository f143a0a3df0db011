"""A tiny gymnasium env with observations of any Box shape and dtype, each entry telling where it
is: obs[idx] = (flat index of idx + 3 t) % 251 at step t of an episode. A test can so check that a
wrapper's tensors hold exactly the env's entries in the layout it promises.

Episodes never terminate; registered ids truncate them with a short TimeLimit. It passes
gymnasium's env checker (`tests/test_user_envs.py` relies on that).
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np

IDS = {  # id -> observation (shape, dtype)
    "FastrlBytes-v0": ((16,), np.uint8),  # not an image: ALE RAM-like bytes
    "FastrlImageHWC-v0": ((40, 48, 3), np.uint8),
    "FastrlImageHW-v0": ((40, 48), np.uint8),
    "FastrlImageCHW-v0": ((4, 40, 48), np.uint8),
}
MAX_EPISODE_STEPS = 7


def pattern(shape: tuple[int, ...], t: int) -> np.ndarray:
    """The observation at step t, before any dtype cast."""
    return (np.arange(math.prod(shape)).reshape(shape) + 3 * t) % 251


class PatternEnv(gym.Env):
    def __init__(self, shape: tuple[int, ...] = (16,), dtype: type = np.uint8):
        info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
        low, high = (info.min, info.max) if info is not None else (-1e3, 1e3)
        self.observation_space = gym.spaces.Box(low, high, shape, dtype)
        self.action_space = gym.spaces.Discrete(3)
        self.t = 0

    def _obs(self) -> np.ndarray:
        return pattern(self.observation_space.shape, self.t).astype(self.observation_space.dtype)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), float(action), False, False, {}


def register() -> None:
    for env_id, (shape, dtype) in IDS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=PatternEnv, max_episode_steps=MAX_EPISODE_STEPS,
                         kwargs={"shape": shape, "dtype": dtype})
