"""A user's module whose import registers a gymnasium env (`--env tests.user_env_module:FastrlUserModule-v0`)."""

import gymnasium as gym
import numpy as np

from tests.pattern_env import PatternEnv

ENV_ID = "FastrlUserModule-v0"

if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=PatternEnv, max_episode_steps=9, kwargs={"shape": (5,), "dtype": np.float32})
