import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fastrl.buffer import Batch, ReplayBuffer, available_bytes
from fastrl.config import ConfigError
from fastrl.envs import lookup_spec, TorchVecEnv
from tests.counter_env import ENV_ID


def make_buffer(capacity=40, num_envs=4, obs_dim=2, seed=0):
    return ReplayBuffer(capacity, num_envs, (obs_dim,), torch.float32, (), torch.int64, "cpu", seed=seed)


def add_step(buf, t, num_envs, valid=None):
    """Row (t, i) gets obs [t, i]; action t; reward 10*t + i."""
    obs = torch.tensor([[t, i] for i in range(num_envs)], dtype=torch.float32)
    buf.add(obs, torch.full((num_envs,), t), torch.tensor([10.0 * t + i for i in range(num_envs)]),
            torch.zeros(num_envs), np.ones(num_envs, bool) if valid is None else valid)


def test_next_obs_is_the_following_step_of_the_same_env():
    buf = make_buffer()
    for t in range(5):
        add_step(buf, t, 4)
    assert len(buf) == 4 * 4  # the newest step has no next obs yet
    b = buf.sample(1, 256)
    assert torch.equal(b.next_obs[..., 0], b.obs[..., 0] + 1)
    assert torch.equal(b.next_obs[..., 1], b.obs[..., 1])
    assert torch.equal(b.rewards, 10 * b.obs[..., 0] + b.obs[..., 1])
    assert torch.equal(b.actions.float(), b.obs[..., 0])


def test_wraparound_keeps_only_the_newest_steps():
    buf = make_buffer(capacity=40, num_envs=4)  # 10 time slots
    for t in range(37):
        add_step(buf, t, 4)
    assert len(buf) == 9 * 4  # 10 slots, the newest of which is not yet sampleable
    b = buf.sample(1, 4096)
    steps = b.obs[..., 0]
    assert steps.min() == 27 and steps.max() == 35
    assert torch.equal(b.next_obs[..., 0], steps + 1)
    assert set(steps.unique().tolist()) == set(range(27, 36))


def test_invalid_rows_are_never_sampled_across_wraparound():
    buf = make_buffer(capacity=40, num_envs=4)
    rng = np.random.default_rng(0)
    invalid = set()
    for t in range(73):
        valid = rng.random(4) > 0.3
        invalid |= {(t, i) for i in range(4) if not valid[i]}
        add_step(buf, t, 4, valid)
        if t > 3:
            b = buf.sample(1, 512)
            seen = {(int(s), int(e)) for s, e in b.obs[0].tolist()}
            assert not (seen & invalid)
            assert torch.equal(b.next_obs[..., 0], b.obs[..., 0] + 1)
    kept = {(t, i) for t in range(64, 72) for i in range(4)} - invalid
    assert len(buf) == len(kept) + sum((63, i) not in invalid for i in range(4))


def test_sampling_is_uniform_over_sampleable_rows():
    """Chi-square goodness of fit: fails if some rows are drawn more often than others."""
    buf = make_buffer(capacity=64, num_envs=4, seed=123)
    valid_pattern = [np.array([True, False, True, True]), np.ones(4, bool)]
    for t in range(30):  # wraps around (16 slots)
        add_step(buf, t, 4, valid_pattern[t % 2])
    rows = buf.sample_rows(200, 256).reshape(-1)
    counts = torch.bincount(rows).double()
    observed = counts[counts > 0]
    assert len(observed) == len(buf)
    expected = rows.numel() / len(buf)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    dof = len(buf) - 1
    # Wilson–Hilferty: the 0.999 quantile of chi2(dof)
    z = 3.09
    limit = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
    assert chi2 < limit, (chi2, limit)


def test_sampling_is_reproducible_for_a_seed():
    a, b = make_buffer(seed=7), make_buffer(seed=7)
    for t in range(6):
        add_step(a, t, 4)
        add_step(b, t, 4)
    assert torch.equal(a.sample_rows(3, 17), b.sample_rows(3, 17))


def test_k_minibatches_come_from_one_draw():
    buf = make_buffer()
    for t in range(5):
        add_step(buf, t, 4)
    batch = buf.sample(8, 32)
    assert batch.obs.shape == (8, 32, 2) and batch.rewards.shape == (8, 32)
    assert batch[3].obs.shape == (32, 2)


def test_image_observations_are_stored_once():
    buf = ReplayBuffer(1000, 8, (4, 84, 84), torch.uint8, (), torch.int64, "cpu")
    assert buf.frames.dtype == torch.uint8
    assert buf.bytes_per_transition <= 1.1 * 84 * 84 * 4 + 64


def test_a_buffer_that_cannot_fit_is_refused_naming_the_bytes():
    with pytest.raises(ConfigError, match=r"--buffer-size: .* need [\d,]+ bytes"):
        ReplayBuffer(10**12, 1, (4, 84, 84), torch.uint8, (), torch.int64, "cpu")


def test_auto_reset_transitions_never_enter_the_buffer():
    """Through the real env wrapper: every sampleable transition goes from step t to step t+1 of
    the same episode of the same env; episode boundaries are never crossed."""
    spec = lookup_spec(ENV_ID)
    envs = TorchVecEnv(spec, 3, seed=5, device=torch.device("cpu"))
    buf = ReplayBuffer(3 * 400, 3, spec.obs_shape, spec.obs_dtype, (), torch.int64, "cpu")
    obs = envs.reset()
    valid_rows = []
    for _ in range(300):
        actions = torch.randint(0, 2, (3,))
        step = envs.step(actions)
        valid_rows.append(int((~step.is_reset_step).sum()))
        buf.add(obs, actions, step.reward, step.terminated, valid=~step.is_reset_step)
        obs = step.next_obs
    assert 300 * 3 - sum(valid_rows) > 10  # episodes did end
    b = buf.gather(buf.sampleable_rows())
    assert torch.equal(b.next_obs[:, 0], b.obs[:, 0])  # same episode
    assert torch.equal(b.next_obs[:, 1], b.obs[:, 1] + 1)  # next step
    assert torch.equal(b.next_obs[:, 2], b.obs[:, 2])  # same env
    # reward = action + t(next): rows line up
    assert torch.equal(b.rewards, b.actions.float() + b.next_obs[:, 1])
    assert len(buf) == sum(valid_rows[:-1])  # every real transition but the newest step's


def test_envpool_cartpole_transitions_never_cross_an_episode():
    """envpool's auto-reset step: the final obs of an episode is only ever a next_obs, and an obs of
    a sampleable row is always inside CartPole's bounds (|x| <= 2.4, |theta| <= 12 degrees)."""
    spec = lookup_spec("CartPole-v1")
    assert spec.backend == "envpool"
    envs = TorchVecEnv(spec, 4, seed=0, device=torch.device("cpu"))
    buf = ReplayBuffer(4 * 1000, 4, spec.obs_shape, spec.obs_dtype, (), torch.int64, "cpu")
    obs = envs.reset()
    for _ in range(800):
        actions = torch.randint(0, 2, (4,))
        step = envs.step(actions)
        buf.add(obs, actions, step.reward, step.terminated, valid=~step.is_reset_step)
        obs = step.next_obs
    b = buf.gather(buf.sampleable_rows())
    theta_limit = 12 * 2 * math.pi / 360
    inside = lambda o: (o[:, 0].abs() <= 2.4) & (o[:, 2].abs() <= theta_limit)  # noqa: E731
    assert bool(inside(b.obs).all())
    ended = b.terminated == 1
    assert int(ended.sum()) > 20
    assert not bool(inside(b.next_obs[ended]).any())
    assert bool(inside(b.next_obs[~ended]).all())
    assert bool((b.rewards == 1).all())  # the reset step's reward (0) is never stored


@pytest.mark.parametrize("obs_dtype", [torch.uint8, torch.float32])
def test_image_and_vector_layouts_return_the_same_transitions(obs_dtype):
    """uint8 frames (scalars beside them) and packed float rows, with vector actions, across a wrap."""
    n, steps = 3, 7
    buf = ReplayBuffer(n * steps, n, (2, 3, 3), obs_dtype, (2,), torch.float32, "cpu", seed=1)
    for t in range(19):
        obs = torch.stack([torch.full((2, 3, 3), 10 * t + i) for i in range(n)]).to(obs_dtype)
        actions = torch.tensor([[t, -i] for i in range(n)], dtype=torch.float32)
        buf.add(obs, actions, torch.full((n,), float(t)), torch.full((n,), float(t % 2)), np.ones(n, bool))
    b = buf.sample(2, 64)
    assert b.obs.dtype == obs_dtype and b.obs.shape == (2, 64, 2, 3, 3) and b.actions.shape == (2, 64, 2)
    t = b.rewards
    env = -b.actions[..., 1]
    assert torch.equal(b.actions[..., 0], t)
    assert torch.equal(b.obs[..., 0, 0, 0].float(), 10 * t + env)
    assert torch.equal(b.next_obs[..., 0, 0, 0].float(), 10 * (t + 1) + env)
    assert torch.equal(b.terminated, t % 2)
    assert int(t.min()) == 19 - steps and int(t.max()) == 17


def test_a_chunk_of_steps_equals_the_same_steps_added_one_by_one():
    rng = np.random.default_rng(3)
    n, total = 4, 41
    obs = torch.randn(total, n, 3)
    actions = torch.randint(0, 5, (total, n))
    rewards, terminated = torch.randn(total, n), (torch.rand(total, n) < 0.2).float()
    valid = rng.random((total, n)) > 0.25
    one, chunked = make_buffer(capacity=36, num_envs=n, obs_dim=3), make_buffer(capacity=36, num_envs=n, obs_dim=3)
    for t in range(total):
        one.add(obs[t], actions[t], rewards[t], terminated[t], valid[t])
    for start, stop in ((0, 1), (1, 8), (8, 9), (9, 17), (17, 25), (25, 33), (33, 41)):  # chunks wrap the ring
        chunked.add(obs[start:stop], actions[start:stop], rewards[start:stop], terminated[start:stop],
                    valid[start:stop])
    assert len(one) == len(chunked) > 0
    with pytest.raises(ValueError, match="more than 9 steps"):
        chunked.add(obs[:9], actions[:9], rewards[:9], terminated[:9], valid[:9])
    assert torch.equal(one.sampleable_rows(), chunked.sampleable_rows())
    a, b = one.gather(one.sampleable_rows()), chunked.gather(chunked.sampleable_rows())
    for name in ("obs", "actions", "rewards", "next_obs", "terminated"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_unbind_splits_stacked_batches():
    buf = make_buffer()
    for t in range(5):
        add_step(buf, t, 4)
    stacked = buf.sample(3, 8)
    parts = stacked.unbind()
    assert len(parts) == 3 and torch.equal(parts[2].next_obs, stacked[2].next_obs)


@pytest.mark.parametrize("obs_dtype,obs_shape,action_shape", [
    (torch.float32, (3,), ()), (torch.float32, (3,), (2,)), (torch.uint8, (2, 2), ()), (torch.uint8, (2, 2), (2,)),
])
@pytest.mark.parametrize("num_batches", [1, 3])
def test_sample_batches_equals_the_stacked_sample_unbound(obs_dtype, obs_shape, action_shape, num_batches):
    def filled(seed):
        buf = ReplayBuffer(40, 4, obs_shape, obs_dtype, action_shape, torch.float32, "cpu", seed=seed)
        gen = torch.Generator().manual_seed(5)
        for _ in range(13):
            buf.add((torch.rand(4, *obs_shape, generator=gen) * 200).to(obs_dtype),
                    torch.randint(0, 9, (4, *action_shape), generator=gen).float(), torch.randn(4, generator=gen),
                    (torch.rand(4, generator=gen) < 0.3).float(), np.ones(4, bool))
        return buf
    listed, stacked = filled(7).sample_batches(num_batches, 16), filled(7).sample(num_batches, 16).unbind()
    assert len(listed) == len(stacked) == num_batches
    for mine, ref in zip(listed, stacked):
        assert mine.obs.shape == (16, *obs_shape) and mine.actions.shape == (16, *action_shape)
        for name in ("obs", "actions", "rewards", "next_obs", "terminated"):
            assert torch.equal(getattr(mine, name), getattr(ref, name)), name


@pytest.mark.parametrize("obs_dtype", [torch.uint8, torch.float32])
def test_device_write_path_equals_the_numpy_view_path(obs_dtype):
    """The torch-view writes used on CUDA store exactly what the CPU numpy-view writes store, one
    step at a time and in chunks, across wraps and auto-reset rows."""
    rng = np.random.default_rng(5)
    n, total = 3, 40
    obs = torch.randint(0, 200, (total, n, 2, 2)).to(obs_dtype)
    actions = torch.randn(total, n, 2)
    rewards, terminated = torch.randn(total, n), (torch.rand(total, n) < 0.2).float()
    valid = rng.random((total, n)) > 0.25
    bufs = [ReplayBuffer(n * 9, n, (2, 2), obs_dtype, (2,), torch.float32, "cpu", seed=0, host_views=host)
            for host in (True, False)]
    assert bufs[0]._frames_np is not None and bufs[1]._frames_np is None
    for buf in bufs:
        for t in range(24):
            buf.add(obs[t], actions[t], rewards[t], terminated[t], valid[t])
        buf.add(obs[24:31], actions[24:31], rewards[24:31], terminated[24:31], valid[24:31])
        for t in range(31, total):
            buf.add(obs[t], actions[t], rewards[t], terminated[t], valid[t])
    assert torch.equal(bufs[0].frames, bufs[1].frames)
    if obs_dtype == torch.uint8:
        assert torch.equal(bufs[0].scalars, bufs[1].scalars)
    assert torch.equal(bufs[0].sampleable_rows(), bufs[1].sampleable_rows())
    assert len(bufs[0]) == len(bufs[1]) > 0


@pytest.mark.parametrize("layout", [
    dict(), dict(n_step=3, gamma=0.9), dict(prioritized=True, per_backend="torch"),
    dict(frame_stack=2, n_step=2, gamma=0.9, prioritized=True, per_backend="torch"),
], ids=["one-step", "n-step", "prioritized", "stacked-n-step-prioritized"])
def test_device_write_path_copies_no_host_index_arrays(layout, monkeypatch):
    """Steps where every env made a real transition write through slices and device-side ids: no
    numpy array becomes a tensor (on CUDA: a host-to-device copy) per step or per chunk."""
    n = 4
    buf = ReplayBuffer(n * 30, n, (4, 3), torch.float32, (), torch.int64, "cpu", host_views=False, **layout)
    step = (torch.ones(n, 4, 3), torch.zeros(n, dtype=torch.int64), torch.ones(n), torch.zeros(n))
    chunk = tuple(x.expand(5, *x.shape) for x in step)
    buf.add(*step, np.ones(n, bool))  # the first step starts every stack
    calls = []
    real = torch.from_numpy
    monkeypatch.setattr(torch, "from_numpy", lambda a: calls.append(a.shape) or real(a))
    for _ in range(40):
        buf.add(*step, np.ones(n, bool))
    buf.add(*chunk, np.ones((5, n), bool))
    assert calls == []
    buf.add(*step, np.array([True, False, True, True]))  # the rare step whose flags or rows are copied
    buf.add(*step, np.ones(n, bool))
    assert len(calls) > 0
    assert len(buf) > 0


def test_free_device_memory_counts_what_pytorch_holds_cached(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3_000, 80_000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 50_000)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 20_000)
    assert available_bytes(torch.device("cuda")) == 3_000 + 30_000


def test_a_checkpointed_buffer_from_before_nstep_replay_loads_and_goes_on():
    """The TD3 Pendulum checkpoint of 26d69cf (its buffer kept only the newest step's flags)."""
    state = torch.load(Path(__file__).parent / "data/legacy-26d69cf/td3/checkpoint.pt", weights_only=True)["buffer"]
    assert "prev_valid" in state and "valid_history" not in state
    buf = ReplayBuffer(1000, 1, (3,), torch.float32, (1,), torch.float32, "cpu")
    buf.load_state_dict(state)
    assert len(buf) == state["size"] > 0
    rows = buf.sampleable_rows().clone()
    batch = buf.gather(rows)
    follows = rows[1:] == rows[:-1] + 1  # one env: consecutive rows are consecutive steps
    assert follows.sum() > 300 and torch.equal(batch.next_obs[:-1][follows], batch.obs[1:][follows])
    buf.add(torch.zeros(1, 3), torch.zeros(1, 1), torch.zeros(1), torch.zeros(1), np.ones(1, bool))
    assert len(buf) == len(rows) + int(state["prev_valid"][0])
    assert torch.equal(buf.sampleable_rows()[: len(rows)], rows)


def test_batch_indexing_and_unbind_carry_the_optional_fields():
    k, b = 3, 5
    full = Batch(*(torch.randn(k, b) for _ in range(5)), discount=torch.rand(k, b), weights=torch.rand(k, b),
                 indices=torch.arange(k * b).view(k, b))
    plain = Batch(*(torch.randn(k, b) for _ in range(5)))
    for stacked in (full, plain):
        parts = stacked.unbind()
        assert len(parts) == k
        for i, part in enumerate(parts):
            for mine, whole, indexed in zip(part._fields(), stacked._fields(), stacked[i]._fields()):
                if whole is None:
                    assert mine is None and indexed is None
                else:
                    assert torch.equal(mine, whole[i]) and torch.equal(indexed, whole[i])
