"""The env wrapper's fast envpool path gives exactly the steps envpool's public API gives."""

import numpy as np
import pytest
import torch

from fastrl.envs import TorchVecEnv, lookup_spec


def _rollout(env_id: str, direct: bool, steps: int, num_envs: int = 5):
    spec = lookup_spec(env_id)
    envs = TorchVecEnv(spec, num_envs, seed=3, device=torch.device("cpu"))
    if not direct:
        envs._direct = None
    rng = np.random.default_rng(0)
    obs = [envs.reset()]
    rows = []
    for _ in range(steps):
        if spec.discrete:
            actions = torch.from_numpy(rng.integers(0, spec.num_actions, num_envs))
        else:
            low, high = np.asarray(spec.action_low), np.asarray(spec.action_high)
            actions = torch.from_numpy(rng.uniform(low, high, (num_envs, *spec.action_shape)).astype(np.float32))
        step = envs.step(actions)
        rows.append((step.next_obs, step.reward.clone(), step.terminated.clone(), step.truncated.copy(),
                     step.is_reset_step.copy()))
    episodes = envs.pop_finished_episodes()
    envs.close()
    return rows, episodes


@pytest.mark.parametrize("env_id,steps", [("CartPole-v1", 600), ("Pendulum-v1", 450)])
def test_direct_envpool_io_equals_the_public_api(env_id, steps):
    """Over episode ends, truncations (Pendulum: 200-step limit) and auto-resets."""
    fast, fast_episodes = _rollout(env_id, True, steps)
    slow, slow_episodes = _rollout(env_id, False, steps)
    assert any(r[4].any() for r in fast), "the rollout should cross auto-reset steps"
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
        torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
        torch.testing.assert_close(a[2], b[2], rtol=0, atol=0)
        assert np.array_equal(a[3], b[3]) and np.array_equal(a[4], b[4])
    assert fast_episodes == slow_episodes and len(fast_episodes) > 0


def test_the_direct_path_is_used_for_envpool_envs():
    envs = TorchVecEnv(lookup_spec("CartPole-v1"), 2, seed=0, device=torch.device("cpu"))
    assert envs._direct is not None
    envs.close()
