"""A tiny gymnasium env whose observation says where it is: [episode id, t, env seed].

Episodes terminate at a random length or are truncated at `max_episode_steps`, so a test can
check, for every stored transition, that next_obs is the step after obs in the same episode.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

ENV_ID = "FastrlCounter-v0"


class CounterEnv(gym.Env):
    def __init__(self, terminate_prob: float = 0.05):
        self.observation_space = gym.spaces.Box(-1e9, 1e9, (3,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.terminate_prob = terminate_prob
        self.episode = -1
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.tag = float(seed)
        self.episode += 1
        self.t = 0
        return self._obs(), {}

    def _obs(self):
        return np.array([self.episode, self.t, getattr(self, "tag", 0.0)], dtype=np.float32)

    def step(self, action):
        self.t += 1
        terminated = bool(self.np_random.random() < self.terminate_prob)
        # reward = action + t: lets tests check that rewards line up with their rows
        return self._obs(), float(action) + self.t, terminated, False, {}


def register() -> None:
    if ENV_ID not in gym.registry:
        gym.register(ENV_ID, entry_point=CounterEnv, max_episode_steps=30)
