"""Frame-deduplicated image stacks: the stacks the buffer rebuilds equal envpool's own, bit for bit."""

import numpy as np
import pytest
import torch

from fastrl.buffer import ReplayBuffer, bytes_per_row
from fastrl.envs import lookup_spec
from fastrl.frame_stack import frame_rows, history_lengths
from tests.fake_replay import Stream, fake_stream, nstep_reference, row_times

ATARI = (4, 84, 84)


def test_envpool_atari_stacks_are_rebuilt_bit_for_bit_across_lives_truncations_and_wraps():
    """Breakout with episodic_life (a life lost ends the learner's episode, but envpool keeps the
    stack going) and a 60-step time limit (a truncation: envpool restarts the stack with the reset
    frame repeated), 2 envs, a 40-slot buffer wrapped 7 times; n_step 3 and one-step buffers, both
    write paths; every sampleable row checked at 9 points."""
    envpool = pytest.importorskip("envpool")
    num_envs, num_steps, gamma = 2, 290, 0.9
    envs = envpool.make_gymnasium("Breakout-v5", num_envs=num_envs, episodic_life=True, max_episode_steps=60, seed=3)
    buffers = [ReplayBuffer(40 * num_envs, num_envs, ATARI, torch.uint8, (), torch.int64, "cpu", frame_stack=4,
                            n_step=n_step, gamma=gamma, host_views=host) for n_step in (1, 3) for host in (True, False)]
    rng = np.random.default_rng(0)
    obs, _ = envs.reset()
    record = {k: [] for k in ("obs", "actions", "rewards", "terminated", "valid")}
    ended = np.zeros(num_envs, dtype=bool)
    seen = {"life lost": 0, "truncated": 0, "reset stacks": 0, "continued stacks": 0, "rows": 0}
    for t in range(num_steps):
        actions = rng.integers(0, 4, num_envs)
        next_obs, rewards, terminated, truncated, info = envs.step(actions)
        step = (obs.copy(), actions, rewards.astype(np.float32), terminated.astype(np.float32), ~ended)
        for key, value in zip(record, step):
            record[key].append(value)
        for buf in buffers:
            buf.add(*(torch.from_numpy(v) for v in step[:4]), step[4])
        seen["life lost"] += int((terminated & (info["lives"] > 0)).sum())
        seen["truncated"] += int(truncated.sum())
        ended = terminated | truncated
        obs = next_obs
        if t % 32 == 31:
            stream = Stream(*(np.stack(record[k]) for k in record))
            for buf in buffers:
                counts = check_rows(buf, stream, gamma)
                for key in counts:
                    seen[key] += counts[key]
    assert seen["life lost"] >= 6 and seen["truncated"] >= 4, seen
    assert seen["reset stacks"] > 20 and seen["continued stacks"] > 20 and seen["rows"] > 1500, seen


def check_rows(buf: ReplayBuffer, stream: Stream, gamma: float) -> dict[str, int]:
    written = stream.num_steps
    rows = buf.sampleable_rows()
    batch = buf.gather(rows)
    counts = {"reset stacks": 0, "continued stacks": 0, "rows": len(rows)}
    envs, times = row_times(rows.numpy(), buf._stride, buf._lead, buf.steps, written)
    for k, (e, t) in enumerate(zip(envs.tolist(), times.tolist())):
        ret, _, terminated, m = nstep_reference(stream, e, t, buf.n_step, gamma)
        assert np.array_equal(batch.obs[k].numpy(), stream.obs[t, e]), (e, t)
        assert np.array_equal(batch.next_obs[k].numpy(), stream.obs[t + m, e]), (e, t, m)
        assert float(batch.terminated[k]) == terminated
        assert float(batch.rewards[k]) == pytest.approx(ret, abs=1e-6)
        starts = [t - j for j in range(1, 4) if t - j > 0 and not stream.valid[t - j - 1, e]]
        if starts:  # this stack reaches back to an episode's first observation
            first = stream.obs[starts[0], e]
            counts["reset stacks" if all(np.array_equal(f, first[0]) for f in first) else "continued stacks"] += 1
    return counts


def test_envpool_repeats_the_reset_frame_and_continues_the_stack_after_a_life_lost():
    """What the buffer's layout assumes of envpool (1.2.5 measured), checked directly."""
    envpool = pytest.importorskip("envpool")
    envs = envpool.make_gymnasium("Breakout-v5", num_envs=1, episodic_life=True, max_episode_steps=40, seed=1)
    obs, _ = envs.reset()
    assert all(np.array_equal(obs[0, k], obs[0, 3]) for k in range(3))  # the reset frame, 4 times
    rng = np.random.default_rng(1)
    kinds = set()
    ended, life_lost = False, False
    for _ in range(200):
        next_obs, _, terminated, truncated, info = envs.step(rng.integers(0, 4, 1))
        if ended and life_lost:  # the reset step after a life lost: the stack shifts on
            assert np.array_equal(next_obs[0, :3], obs[0, 1:])
            kinds.add("life")
        elif ended:  # after a truncation: the stack restarts from one frame
            assert all(np.array_equal(next_obs[0, k], next_obs[0, 3]) for k in range(3))
            kinds.add("reset")
        else:
            assert np.array_equal(next_obs[0, :3], obs[0, 1:])  # one new frame a step
        ended, life_lost = bool(terminated[0] or truncated[0]), bool(terminated[0] and info["lives"][0] > 0)
        obs = next_obs
    assert kinds == {"life", "reset"}


def test_one_frame_per_row_fits_the_byte_budget_and_the_breakout_preset_fits_in_24_gib():
    for kwargs in (dict(), dict(n_step=3, gamma=0.99), dict(n_step=3, gamma=0.99, prioritized=True)):
        buf = ReplayBuffer(10_000, 8, ATARI, torch.uint8, (), torch.int64, "cpu", frame_stack=4, **kwargs)
        assert buf.bytes_per_transition <= 1.1 * 84 * 84 + 64, kwargs
        assert buf.frames.shape[1] == 84 * 84
    one_frame = bytes_per_row(ATARI, torch.uint8, (), frame_stack=4, n_step=3, prioritized=True)
    assert 1_000_000 * one_frame < 8 * 2**30 < 24 * 2**30 < 1_000_000 * bytes_per_row(ATARI, torch.uint8, ())


def test_the_layout_is_automatic_for_envpool_atari():
    assert lookup_spec("Breakout-v5").frame_stack == 4
    assert lookup_spec("CartPole-v1").frame_stack == 1


def test_a_stack_that_cannot_be_rebuilt_is_refused():
    """A zero-padded stack at an episode start (not envpool's) would be rebuilt wrong: refused."""
    stream = fake_stream(seed=1, num_steps=12, num_envs=2, frame_stack=4)
    buf = ReplayBuffer(40, 2, stream.obs.shape[2:], torch.uint8, (), torch.int64, "cpu", frame_stack=4)
    for t in range(12):
        buf.add(*(torch.from_numpy(getattr(stream, k)[t]) for k in ("obs", "actions", "rewards", "terminated")),
                stream.valid[t])
    zeros = (torch.zeros(2, dtype=torch.int64), torch.zeros(2), torch.zeros(2))
    reset = torch.full((2, *stream.obs.shape[2:]), 7, dtype=torch.uint8)  # one frame repeated: fine anywhere
    buf.add(reset, *zeros, np.array([True, False]))  # env 1 ends an episode here
    padded = reset.clone()
    padded[1, :6] = 0  # env 1 starts the next one with three zero frames before its newest
    with pytest.raises(ValueError, match="frame_stack=4: env 1 started an episode with a stack that"):
        buf.add(padded, *zeros, np.array([True, True]))


def test_frame_rows_repeat_the_first_frame_of_a_young_stack():
    rows = torch.tensor([10, 10, 10, 10])
    history = torch.tensor([0, 1, 2, 3])
    assert frame_rows(rows, history, 4).tolist() == [[10, 10, 10, 10], [9, 9, 9, 10], [8, 8, 9, 10], [7, 8, 9, 10]]
    assert frame_rows(rows, history, 4, 5)[:, 1:].tolist() == [[10, 10, 10, 11], [9, 9, 10, 11], [8, 9, 10, 11],
                                                               [8, 9, 10, 11]]


@pytest.mark.parametrize("as_torch", [False, True])
def test_history_lengths_restart_at_resets_and_saturate(as_torch):
    resets = np.array([[False, True], [False, False], [True, False], [False, False], [False, False]])
    previous = np.array([1, -1])
    if as_torch:
        resets, previous = torch.from_numpy(resets), torch.from_numpy(previous)
    history = history_lengths(previous, resets, 4)
    assert np.asarray(history).tolist() == [[2, 0], [3, 1], [0, 2], [1, 3], [2, 3]]
