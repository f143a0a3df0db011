"""The env wrapper: its fast envpool path gives exactly the steps envpool's public API gives;
observations reach the learner in the layout the spec promises; auto-reset is NEXT_STEP; resets
give fresh, seeded episodes; rows come back in env order; each step is staged in one host buffer."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

import fastrl.train as train_mod
from fastrl.envs import (OBS_AS_IS, OBS_CHANNEL_LAST, OBS_NO_CHANNEL, StepStaging, TorchVecEnv, lookup_spec,
                         reset_seed, spec_from_env_fn)
from fastrl.evaluate import evaluate_policy
from tests import pattern_env
from tests.counter_env import ENV_ID as COUNTER_ENV

pattern_env.register()
CPU = torch.device("cpu")


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


# --- observation layouts ---

@pytest.mark.parametrize("env_id,shape,dtype,layout", [
    ("FastrlBytes-v0", (16,), torch.float32, OBS_AS_IS),  # bytes that are no image: numbers for the MLP
    ("FastrlImageHWC-v0", (3, 40, 48), torch.uint8, OBS_CHANNEL_LAST),
    ("FastrlImageHW-v0", (1, 40, 48), torch.uint8, OBS_NO_CHANNEL),
    ("FastrlImageCHW-v0", (4, 40, 48), torch.uint8, OBS_AS_IS),
])
def test_observations_reach_the_learner_in_the_spec_layout(env_id, shape, dtype, layout):
    spec = lookup_spec(env_id)
    assert (spec.obs_shape, spec.obs_dtype) == (shape, dtype)
    assert spec.obs_layout == layout
    assert spec.is_image == (dtype == torch.uint8)
    raw_shape = pattern_env.IDS[env_id][0]

    def expected(t: int) -> torch.Tensor:  # the env's own observation, in the learner's layout
        raw = torch.from_numpy(pattern_env.pattern(raw_shape, t).astype(np.uint8))
        if layout == OBS_CHANNEL_LAST:
            raw = raw.permute(2, 0, 1)
        elif layout == OBS_NO_CHANNEL:
            raw = raw[None]
        return raw.to(dtype)

    envs = TorchVecEnv(spec, 2, seed=0, device=CPU)
    obs = envs.reset()
    assert obs.shape == (2, *shape) and obs.dtype == dtype
    assert torch.equal(obs[1], expected(0))
    for t in range(1, pattern_env.MAX_EPISODE_STEPS + 2):
        obs = envs.step(torch.zeros(2, dtype=torch.int64)).next_obs
        assert obs.shape == (2, *shape) and obs.dtype == dtype
        # the step after the truncation at MAX_EPISODE_STEPS is the auto-reset step: t = 0 again
        assert torch.equal(obs[0], expected(t % (pattern_env.MAX_EPISODE_STEPS + 1))), t
    envs.close()


def _tiny_dqn_run(run_dir, env_id, extra=()):
    return ["--algo", "dqn", "--env", env_id, "--total-steps", "240", "--num-envs", "2", "--learning-starts", "40",
            "--train-every", "1", "--updates-per-train", "1", "--batch-size", "8", "--buffer-size", "200",
            "--hidden-sizes", "8", "--eval-episodes", "1", "--device", "cpu", "--no-progress",
            "--run-dir", str(run_dir), *extra]


def test_dqn_trains_on_uint8_vector_observations(tmp_path):
    """A (16,) uint8 Box once reached the MLP as bytes: 'mat1 and mat2 must have the same dtype'."""
    assert train_mod.main(_tiny_dqn_run(tmp_path / "run", "FastrlBytes-v0")) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["updates"] >= 90 and summary["env_steps"] == 240


@pytest.mark.parametrize("shape,dtype", [((2, 3, 4, 5), np.uint8), ((3,), np.str_)])
def test_observations_nothing_can_learn_from_are_one_line_errors(shape, dtype):
    def make():
        env = pattern_env.PatternEnv((2,))
        env.observation_space = gym.spaces.Box(0, 255, shape, np.uint8) if dtype is np.uint8 else gym.spaces.Text(3)
        return env

    with pytest.raises(Exception) as info:
        spec_from_env_fn(make, "odd")
    message = str(info.value)
    assert type(info.value).__name__ == "ConfigError" and "\n" not in message
    assert message.startswith("--env: odd has observation space") and "Box observations" in message


# --- auto-reset mode ---

def test_the_gymnasium_backend_asks_for_next_step_autoreset(monkeypatch):
    """Under another default mode (as a future gymnasium may have), is_reset_step would be wrong:
    the wrapper asks for NEXT_STEP instead of assuming it."""
    real_init = gym.vector.SyncVectorEnv.__init__

    def same_step_by_default(self, env_fns, copy=True, observation_mode="same", autoreset_mode="SameStep"):
        real_init(self, env_fns, copy=copy, observation_mode=observation_mode, autoreset_mode=autoreset_mode)

    monkeypatch.setattr(gym.vector.SyncVectorEnv, "__init__", same_step_by_default)
    envs = TorchVecEnv(lookup_spec("FastrlBytes-v0"), 2, seed=0, device=CPU)
    assert envs._envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    envs.reset()
    actions = torch.ones(2, dtype=torch.int64)
    steps = [envs.step(actions) for _ in range(pattern_env.MAX_EPISODE_STEPS + 1)]
    assert steps[-2].truncated.all() and steps[-1].is_reset_step.all()
    assert torch.equal(steps[-1].reward, torch.zeros(2))  # the auto-reset step pays nothing
    envs.close()


def test_a_vector_env_in_another_autoreset_mode_is_refused(monkeypatch):
    real_make_vec = gym.make_vec

    def same_step(env_id, num_envs=1, vectorization_mode=None, vector_kwargs=None, **kwargs):
        return real_make_vec(env_id, num_envs, vectorization_mode, {"autoreset_mode": "SameStep"}, **kwargs)

    monkeypatch.setattr(gym, "make_vec", same_step)
    with pytest.raises(Exception, match="auto-resets in mode .*SAME_STEP.*; fastrl needs .*NEXT_STEP"):
        TorchVecEnv(lookup_spec("FastrlBytes-v0"), 2, seed=0, device=CPU)


# --- fresh, seeded episodes at every reset ---

def _evaluations(seed: int, count: int = 3):
    envs = TorchVecEnv(lookup_spec(COUNTER_ENV), 2, seed=seed, device=CPU)
    ones = lambda obs: torch.ones(obs.shape[0], dtype=torch.int64)  # noqa: E731
    returns = [evaluate_policy(ones, envs, 2) for _ in range(count)]
    envs.close()
    return returns


def test_successive_evaluations_play_fresh_episodes_and_a_seed_replays_them():
    """The gymnasium backend once reset with the same seed every time: every evaluation replayed
    the same episodes (the counter env's episode lengths are random, so its returns tell)."""
    first, second, third = _evaluations(5)
    assert first != second and second != third
    assert _evaluations(5) == [first, second, third]
    assert _evaluations(6)[0] != first


def test_reset_seeds_start_at_the_seed_and_differ_after():
    seeds = [reset_seed(11, n) for n in range(50)]
    assert seeds[0] == 11 and len(set(seeds)) == 50 and seeds == [reset_seed(11, n) for n in range(50)]


def test_envpool_resets_give_fresh_seeded_episodes_too():
    def first_obs(seed):
        envs = TorchVecEnv(lookup_spec("CartPole-v1"), 2, seed=seed, device=CPU)
        obs = [envs.reset().clone() for _ in range(3)]
        envs.close()
        return obs

    a, b = first_obs(3), first_obs(3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[1], a[2])


# --- rows in env order, at reset as at recv ---

class _ShuffledEnvpool:
    """Stands in for envpool, answering in a fixed order that is not the env order (as envpool's
    threads may): row j of every answer is env ORDER[j]."""

    ORDER = np.array([2, 0, 3, 1], dtype=np.int32)

    def __init__(self):
        self.t = 0

    def _rows(self):
        obs = np.stack([np.array([env, self.t, 0, 0], dtype=np.float32) for env in self.ORDER])
        return obs, {"env_id": self.ORDER.copy()}

    def reset(self):
        self.t = 0
        return self._rows()

    def send(self, actions, env_ids):
        self.t += 1

    def recv(self):
        obs, info = self._rows()
        reward = self.ORDER.astype(np.float32)  # env i earns i
        terminated = self.ORDER == 3
        return obs, reward, terminated, np.zeros(4, dtype=bool), info

    def close(self):
        pass


def test_reset_and_recv_both_put_rows_in_env_order():
    envs = TorchVecEnv(lookup_spec("CartPole-v1"), 4, seed=0, device=CPU)
    envs.close()
    envs._envs, envs._direct = _ShuffledEnvpool(), None
    in_order = torch.arange(4, dtype=torch.float32)
    assert torch.equal(envs.reset()[:, 0], in_order)
    step = envs.step(torch.zeros(4, dtype=torch.int64))
    assert torch.equal(step.next_obs[:, 0], in_order) and torch.equal(step.reward, in_order)
    assert torch.equal(step.terminated, (in_order == 3).float())


# --- one staging buffer per step ---

def _staged_rollout(device, steps=40):
    envs = TorchVecEnv(lookup_spec(COUNTER_ENV), 3, seed=2, device=device)
    buffers = [b.data_ptr() for b in envs._staging.buffers]
    rows = [(envs.reset(), None)]
    for k in range(steps):
        step = envs.step(torch.tensor([k % 2, 1, 0]))
        assert [b.data_ptr() for b in envs._staging.buffers] == buffers  # reused, never reallocated
        rows.append((step.next_obs, step))
    envs.close()
    return rows, envs


def test_staged_steps_are_the_env_steps_and_outlive_the_buffer():
    rows, envs = _staged_rollout(CPU)
    obs = [r[0] for r in rows]
    for k in range(1, len(rows)):
        step = rows[k][1]
        real = ~step.is_reset_step
        # obs = [episode, t, seed]: t counts up inside an episode; reward = action + t
        assert torch.equal(obs[k][real, 1], obs[k - 1][real, 1] + 1)
        actions = torch.tensor([(k - 1) % 2, 1, 0], dtype=torch.float32)
        assert torch.equal(step.reward[real], (actions + obs[k][:, 1])[real])
        assert torch.equal(step.reward[~real], torch.zeros(int((~real).sum())))
        assert step.next_obs.dtype == torch.float32 and step.reward.dtype == torch.float32
    # Every step's tensors still hold their own values after later steps reused the host buffer.
    assert len({tuple(o[:, 1].tolist()) for o in obs}) > 10
    assert len(envs._staging.buffers) == 1 and not envs._staging.buffers[0].is_pinned()


def test_staging_splits_one_buffer_into_the_inputs():
    staging = StepStaging(3, (2, 2), torch.uint8, CPU)
    obs = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    reward, terminated = np.array([0.5, -1.0, 2.0], dtype=np.float64), np.array([True, False, True])
    out_obs, out_reward, out_terminated = staging.stage(obs, reward, terminated)
    assert torch.equal(out_obs, torch.from_numpy(obs))
    assert torch.equal(out_reward, torch.tensor([0.5, -1.0, 2.0]))
    assert torch.equal(out_terminated, torch.tensor([1.0, 0.0, 1.0]))
    host = staging.buffers[0].data_ptr()
    again = staging.stage(obs + 1, reward * 2, ~terminated)
    assert staging.buffers[0].data_ptr() == host
    assert torch.equal(out_obs, torch.from_numpy(obs)) and torch.equal(again[0], torch.from_numpy(obs + 1))


def test_cuda_staging_is_pinned_double_buffered_and_equals_cpu(cuda_device):
    cpu_rows, _ = _staged_rollout(CPU)
    cuda_rows, envs = _staged_rollout(cuda_device)
    assert len(envs._staging.buffers) == 2 and all(b.is_pinned() for b in envs._staging.buffers)
    torch.cuda.synchronize()
    for (c_obs, c_step), (g_obs, g_step) in zip(cpu_rows, cuda_rows, strict=True):
        assert g_obs.device.type == "cuda" and torch.equal(g_obs.cpu(), c_obs)
        if c_step is not None:
            assert torch.equal(g_step.reward.cpu(), c_step.reward)
            assert torch.equal(g_step.terminated.cpu(), c_step.terminated)
