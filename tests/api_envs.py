"""Users' envs for tests/test_api.py: one-step bandits whose best action is known, and envs whose
spaces fastrl cannot learn from. Importing this module registers them with gymnasium, so the CLI
reaches them as `--env tests.api_envs:BanditEnv-v0`."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class BanditEnv(gym.Env):
    """One step per episode. The observation is a sign s in {-1, +1}; action 1 pays 1 when s > 0,
    action 0 pays 1 when s < 0, the other pays 0. Optimal return 1, a random policy's 0.5."""

    observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.sign = float(self.np_random.choice([-1.0, 1.0]))
        return np.array([self.sign], np.float32), {}

    def step(self, action):
        reward = float(int(action) == int(self.sign > 0))
        return np.array([self.sign], np.float32), reward, True, False, {}


class ContinuousBanditEnv(gym.Env):
    """One step per episode. The observation is x uniform in [-1, 1]; action a in [-1, 1] pays
    1 - (a - x)²: optimal return 1 (a = x), a uniformly random policy's 1/3."""

    observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1.0, 1.0, (1,)).astype(np.float32)
        return self.x.copy(), {}

    def step(self, action):
        reward = 1.0 - float(np.sum((np.asarray(action, np.float32) - self.x) ** 2))
        return self.x.copy(), reward, True, False, {}


def _with_spaces(name: str, observation_space: spaces.Space, action_space: spaces.Space) -> type[gym.Env]:
    """An env class with these spaces, stepping randomly within them (it is never trained on)."""

    class Env(gym.Env):
        def __init__(self):
            self.observation_space, self.action_space = observation_space, action_space

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return self.observation_space.sample(), {}

        def step(self, action):
            return self.observation_space.sample(), 0.0, True, False, {}

    Env.__name__ = Env.__qualname__ = name
    return Env


BOX = spaces.Box(-1.0, 1.0, (2,), np.float32)
# name -> (observation space, action space, the algorithm that would otherwise take the env)
UNSUPPORTED = {
    "DictObs": (spaces.Dict({"a": BOX}), spaces.Discrete(2), "dqn"),
    "TupleObs": (spaces.Tuple((BOX, BOX)), spaces.Discrete(2), "dqn"),
    "MultiDiscreteObs": (spaces.MultiDiscrete([3, 3]), spaces.Discrete(2), "dqn"),
    "MultiBinaryObs": (spaces.MultiBinary(4), spaces.Discrete(2), "dqn"),
    "DictAction": (BOX, spaces.Dict({"a": spaces.Discrete(2)}), "dqn"),
    "TupleAction": (BOX, spaces.Tuple((spaces.Discrete(2), spaces.Discrete(2))), "dqn"),
    "MultiDiscreteAction": (BOX, spaces.MultiDiscrete([2, 3]), "dqn"),
    "MultiBinaryAction": (BOX, spaces.MultiBinary(3), "dqn"),
    "UnboundedBoxActionTD3": (BOX, spaces.Box(-np.inf, np.inf, (2,), np.float32), "td3"),
    "UnboundedBoxActionDDPG": (BOX, spaces.Box(-1.0, np.inf, (2,), np.float32), "ddpg"),
}
UNSUPPORTED_ENVS = {name: _with_spaces(name, obs, act) for name, (obs, act, _) in UNSUPPORTED.items()}


def register() -> None:
    for env_id, entry_point in (("BanditEnv-v0", BanditEnv), ("ContinuousBanditEnv-v0", ContinuousBanditEnv),
                                *((f"{name}-v0", cls) for name, cls in UNSUPPORTED_ENVS.items())):
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=entry_point)


register()
