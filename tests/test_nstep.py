"""n-step replay (and frame-deduplicated stacks) against a plain-Python reference: every sampleable
row of a buffer fed random episodes with terminations, life losses, truncations and auto-resets,
across ring wraparounds, one step at a time and in chunks, through both write paths."""

from collections import Counter

import numpy as np
import pytest
import torch

from fastrl.buffer import ReplayBuffer
from fastrl.config import ConfigError
from fastrl.nstep import gamma_powers, nstep_targets
from tests.fake_replay import Stream, expected_sampleable, fake_stream, nstep_reference, row_times

GAMMA = 0.9


def make(stream: Stream, steps: int, frame_stack: int, n_step: int, host_views: bool | None,
         device: torch.device | str = "cpu") -> ReplayBuffer:
    num_envs = stream.valid.shape[1]
    obs_dtype = torch.uint8 if frame_stack > 1 else torch.float32
    return ReplayBuffer(steps * num_envs, num_envs, stream.obs.shape[2:], obs_dtype, (), torch.int64, device,
                        seed=0, frame_stack=frame_stack, n_step=n_step, gamma=GAMMA, host_views=host_views)


def add(buf: ReplayBuffer, stream: Stream, start: int, stop: int) -> None:
    """Steps start..stop-1, as one step when stop = start + 1 and as a chunk otherwise."""
    part = slice(start, stop) if stop - start > 1 else start
    buf.add(*(torch.from_numpy(getattr(stream, k)[part]).to(buf.device) for k in ("obs", "actions", "rewards",
                                                                                  "terminated")), stream.valid[part])


def check_against_reference(buf: ReplayBuffer, stream: Stream, written: int) -> Counter:
    """Checks every sampleable row; counts the kinds of rows checked."""
    kinds = Counter()
    rows = buf.sampleable_rows()
    env, t = row_times(rows.numpy(), buf._stride, buf._lead, buf.steps, written)
    assert set(zip(env.tolist(), t.tolist())) == expected_sampleable(stream, written, buf.steps, buf._lead, buf.n_step)
    assert len(set(rows.tolist())) == len(rows)
    batch = buf.gather(rows)
    for k, (e, u) in enumerate(zip(env.tolist(), t.tolist())):
        ret, discount, terminated, m = nstep_reference(stream, e, u, buf.n_step, GAMMA)
        assert np.array_equal(batch.obs[k].numpy(), stream.obs[u, e]), (e, u)
        assert np.array_equal(batch.next_obs[k].numpy(), stream.obs[u + m, e]), (e, u, m)
        assert int(batch.actions[k]) == stream.actions[u, e]
        assert float(batch.terminated[k]) == terminated
        assert float(batch.rewards[k]) == pytest.approx(ret, rel=1e-6, abs=1e-6)
        if buf.n_step > 1:
            assert float(batch.discount[k]) == np.float32(discount)
        kinds["row"] += 1
        kinds["terminated" if terminated else "cut" if m < buf.n_step else "full"] += 1
        starts = [u - j for j in range(buf.frame_stack) if u - j > 0 and not stream.valid[u - j - 1, e]]
        if starts:  # the stack reaches back to an episode start: after a reset or a life lost
            kinds["after life lost" if stream.terminated[starts[0] - 2, e] else "after reset"] += 1
    if buf.n_step == 1:
        assert batch.discount is None
    return kinds


@pytest.mark.parametrize("host_views", [True, False], ids=["numpy-views", "torch-views"])
@pytest.mark.parametrize("frame_stack", [1, 4])
@pytest.mark.parametrize("n_step", [1, 3])
def test_every_sampleable_row_matches_the_reference(n_step, frame_stack, host_views):
    stream = fake_stream(seed=10 * n_step + frame_stack, num_steps=130, num_envs=3, frame_stack=frame_stack)
    assert (~stream.valid).sum() > 20 and stream.terminated.sum() > 10  # many boundaries of each kind
    one, chunked = (make(stream, 19, frame_stack, n_step, host_views) for _ in range(2))
    bounds = [0, 1, 2, 9, 10, 21, 22, 33, 46, 47, 60, 61, 74, 87, 100, 101, 114, 115, 127, 130]
    checked = Counter()
    for start, stop in zip(bounds, bounds[1:]):  # chunks of up to 13 steps: they wrap the 19-slot ring
        for t in range(start, stop):
            add(one, stream, t, t + 1)
        add(chunked, stream, start, stop)
        if stop > 25:
            checked += check_against_reference(one, stream, stop)
            assert torch.equal(one.sampleable_rows(), chunked.sampleable_rows())
            assert torch.equal(one.frames, chunked.frames)
            assert torch.equal(one.scalars, chunked.scalars) if one.scalars is not None else True
    assert checked["row"] > 300 and min(checked[k] for k in ("terminated", "full", "after reset")) > 10, checked
    if n_step > 1:
        assert checked["cut"] > 10, checked  # windows cut short by a truncation
    if frame_stack > 1:
        assert checked["after life lost"] > 10, checked


def test_sampled_batches_carry_the_window_fields_in_their_shapes():
    stream = fake_stream(seed=3, num_steps=40, num_envs=2, frame_stack=4)
    buf = make(stream, 30, 4, 3, True)
    add(buf, stream, 0, 20)
    add(buf, stream, 20, 25)
    batch = buf.sample(2, 8)
    assert batch.obs.shape == batch.next_obs.shape == (2, 8, 8, 2, 3) and batch.obs.dtype == torch.uint8
    assert batch.rewards.shape == batch.discount.shape == batch.terminated.shape == batch.actions.shape == (2, 8)
    assert batch.weights is None and batch.indices is None
    parts = buf.sample_batches(3, 4)
    assert len(parts) == 3 and parts[1].discount.shape == (4,)
    assert torch.all((batch.discount > 0) & (batch.discount <= GAMMA))


def test_nstep_targets_cut_at_terminations_and_non_transitions():
    powers = gamma_powers(0.5, 3, torch.device("cpu"))
    rewards = torch.tensor([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0], [1.0, 2.0, 4.0], [1.0, 2.0, 4.0]])
    terminated = torch.tensor([[0.0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]])
    real = torch.tensor([[1.0, 1, 1], [1, 1, 1], [1, 1, 1], [1, 0, 1]])
    ret, discount, term, m = nstep_targets(rewards, terminated, real, powers)
    assert ret.tolist() == [3.0, 2.0, 1.0, 1.0]  # 1 + 1 + 1; 1 + 1 (ends); 1 (ends); 1 (row t+1 not real)
    assert m.tolist() == [3, 2, 1, 1] and discount.tolist() == [0.125, 0.25, 0.5, 0.5]
    assert term.tolist() == [0.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_step=0), "--n-step: must be a positive integer"),
    (dict(n_step=3), r"--gamma: n-step returns \(--n-step 3\) need a discount in \[0, 1\]"),
    (dict(n_step=3, gamma=1.5), "--gamma"),
    (dict(frame_stack=3), "--frame-stack: must be 1, or a positive integer that divides"),
])
def test_bad_window_settings_are_refused_naming_the_flag(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ReplayBuffer(100, 2, (4, 84, 84), torch.uint8, (), torch.int64, "cpu", **kwargs)


def test_a_buffer_too_short_for_its_windows_is_refused():
    with pytest.raises(ConfigError, match=r"--buffer-size: must hold at least 7 vector steps \(>= 14\)"):
        ReplayBuffer(12, 2, (4, 84, 84), torch.uint8, (), torch.int64, "cpu", frame_stack=4, n_step=3, gamma=0.9)


@pytest.mark.parametrize("host_views", [True, False], ids=["numpy-views", "torch-views"])
def test_a_stacked_nstep_buffer_resumes_from_its_state_dict_exactly(host_views):
    stream = fake_stream(seed=5, num_steps=80, num_envs=2, frame_stack=4)
    straight, resumed = make(stream, 20, 4, 3, host_views), make(stream, 20, 4, 3, host_views)
    for t in range(50):
        add(straight, stream, t, t + 1)
    resumed.load_state_dict({k: v.clone() if isinstance(v, torch.Tensor) else v
                             for k, v in straight.state_dict().items()})
    for buf in (straight, resumed):
        for t in range(50, 80):
            add(buf, stream, t, t + 1)
    assert torch.equal(straight.frames, resumed.frames) and torch.equal(straight.scalars, resumed.scalars)
    assert torch.equal(straight.sampleable_rows(), resumed.sampleable_rows())
    a, b = straight.sample(2, 16), resumed.sample(2, 16)
    assert torch.equal(a.obs, b.obs) and torch.equal(a.next_obs, b.next_obs) and torch.equal(a.rewards, b.rewards)


@pytest.mark.parametrize("frame_stack,n_step", [(1, 3), (4, 1), (4, 3)])
def test_a_cuda_buffer_stores_and_gathers_what_the_cpu_buffer_does(frame_stack, n_step, cuda_device):
    stream = fake_stream(seed=2, num_steps=100, num_envs=3, frame_stack=frame_stack)
    cpu, cuda = make(stream, 19, frame_stack, n_step, None), make(stream, 19, frame_stack, n_step, None, cuda_device)
    for buf in (cpu, cuda):
        for start, stop in ((0, 1), (1, 13), (13, 14), (14, 27), (27, 40)):
            add(buf, stream, start, stop)
        for t in range(40, 100):
            add(buf, stream, t, t + 1)
    assert torch.equal(cpu.frames, cuda.frames.cpu()) and torch.equal(cpu.scalars, cuda.scalars.cpu())
    assert torch.equal(cpu.sampleable_rows(), cuda.sampleable_rows().cpu())
    rows = cpu.sampleable_rows()
    a, b = cpu.gather(rows), cuda.gather(rows.to(cuda_device))
    for name in ("obs", "actions", "rewards", "next_obs", "terminated", "discount"):
        mine, ref = getattr(b, name), getattr(a, name)
        assert (mine is None and ref is None) or torch.allclose(mine.cpu(), ref, rtol=1e-6, atol=1e-6), name
