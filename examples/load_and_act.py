"""Load a trained policy from its run folder and act with it: no fastrl env needed, only observations."""

import gymnasium as gym
import numpy as np

import fastrl

# A short run, to have a run folder to load (any run folder of fastrl.train or python -m fastrl.train works).
summary = fastrl.train(fastrl.make_config(algo="dqn", env="CartPole-v1", total_steps=5_000, progress=False))

policy = fastrl.load_policy(summary["run_dir"], device="cpu")
env = gym.make("CartPole-v1")
obs, _ = env.reset(seed=0)
episode_return, done = 0.0, False
while not done:
    action = policy.act(obs)  # one observation in, one action (an integer here) out
    obs, reward, terminated, truncated, _ = env.step(action)
    episode_return += reward
    done = terminated or truncated
print(f"greedy episode return: {episode_return}")

batch = np.stack([obs, obs, obs])
print("a batch of observations gives a batch of actions:", policy.act(batch))
print("exploring as in training (epsilon-greedy):", policy.act(batch, deterministic=False))
