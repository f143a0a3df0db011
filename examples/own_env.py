"""Train on your own gymnasium env: pass a function that makes one env, and fastrl vectorizes it."""

import gymnasium as gym
import numpy as np

import fastrl


class Corridor(gym.Env):
    """Walk a corridor of 8 cells from its left end; reaching the right end pays 1 and ends the episode."""

    observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)  # where you are, 0 (left) to 1 (right)
    action_space = gym.spaces.Discrete(2)  # 0: step left, 1: step right
    length = 8

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cell = 0
        return self._obs(), {}

    def step(self, action):
        self.cell = min(max(self.cell + (1 if action == 1 else -1), 0), self.length - 1)
        at_end = self.cell == self.length - 1
        return self._obs(), float(at_end), at_end, False, {}

    def _obs(self):
        return np.array([self.cell / (self.length - 1)], np.float32)


def make_corridor() -> gym.Env:
    return gym.wrappers.TimeLimit(Corridor(), max_episode_steps=30)  # a time limit is a truncation: bootstrapped


# `env` only names your env here (the run folder, the logs): presets belong to fastrl's own envs.
config = fastrl.make_config(algo="dqn", env="Corridor-v0", total_steps=4_000, num_envs=4, learning_starts=500,
                            eps_fraction=0.5, updates_per_train=2, target_period=100, hidden_sizes=[64, 64],
                            gamma=0.9, eval_episodes=4, progress=False)
summary = fastrl.train(config, env_fn=make_corridor)  # or a ready vector env in NEXT_STEP autoreset mode
print(f"greedy return {summary['final_eval_return_mean']:.2f} (best possible: 1.00)")

policy = fastrl.load_policy(summary["run_dir"])
cells = np.arange(Corridor.length - 1, dtype=np.float32)[:, None] / (Corridor.length - 1)
print("greedy action in each cell but the last (1 = right):", policy.act(cells))
