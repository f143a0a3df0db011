"""Through the trainer: an episode cut by its time limit is stored with terminated = 0 on its last
transition (the learner bootstraps through it), and the auto-reset step is never sampleable."""

import gymnasium as gym
import torch

import fastrl.train as train_mod
from fastrl.buffer import ReplayBuffer
from fastrl.checkpoint import load_checkpoint
from fastrl.envs import lookup_spec
from tests.counter_env import CounterEnv

ENV_ID = "FastrlTruncatedOnly-v0"  # observations [episode id, t, seed]; never terminates
LIMIT = 5

if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=CounterEnv, max_episode_steps=LIMIT, kwargs={"terminate_prob": 0.0})


def test_truncated_episodes_reach_the_buffer_as_bootstrapped_transitions(tmp_path, monkeypatch):
    added = []
    real_add = ReplayBuffer.add

    def recording_add(self, obs, actions, rewards, terminated, valid):
        added.append((obs.clone(), terminated.clone(), valid.copy()))
        real_add(self, obs, actions, rewards, terminated, valid)

    monkeypatch.setattr(ReplayBuffer, "add", recording_add)
    run = tmp_path / "run"
    args = ["--algo", "dqn", "--env", ENV_ID, "--total-steps", "300", "--num-envs", "3", "--learning-starts", "60",
            "--batch-size", "16", "--buffer-size", "600", "--hidden-sizes", "8", "--eval-episodes", "1",
            "--checkpoint-buffer", "--device", "cpu", "--no-progress", "--run-dir", str(run)]
    assert train_mod.main(args) == 0

    # What the trainer handed the buffer: every row it marked valid is a real step of an episode,
    # the row standing on an episode's final observation (t = LIMIT) is never valid.
    assert all(not t.any() for _, t, _ in added)
    final_rows = [valid[obs[:, 1] == LIMIT] for obs, _, valid in added]
    assert sum(len(v) for v in final_rows) >= 3 * (300 // 3 // (LIMIT + 1)) - 3
    assert not any(v.any() for v in final_rows)

    # What the buffer samples from, read back from the checkpoint.
    spec = lookup_spec(ENV_ID)
    buffer = ReplayBuffer(600, 3, spec.obs_shape, spec.obs_dtype, spec.action_shape, spec.action_dtype, "cpu")
    buffer.load_state_dict(load_checkpoint(run / "checkpoint.pt")["buffer"])
    batch = buffer.gather(buffer.sampleable_rows())
    assert len(batch.obs) > 200
    assert torch.equal(batch.next_obs[:, 0], batch.obs[:, 0])  # never across episodes
    assert torch.equal(batch.next_obs[:, 1], batch.obs[:, 1] + 1)
    assert not (batch.obs[:, 1] == LIMIT).any()  # the auto-reset step is not a transition
    last = batch.next_obs[:, 1] == LIMIT  # the truncated episodes' last transitions
    assert last.sum() >= 10 and torch.equal(batch.terminated[last], torch.zeros(int(last.sum())))
