"""Replay buffer throughput: one vector-step `add`, and `sample` by batch size and capacity.

Transitions are MuJoCo-shaped (HalfCheetah: 17 float obs, 6 float actions) so that a 1e6 buffer
is the size people actually train with.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.common import synchronized
from fastrl.buffer import ReplayBuffer

OBS_SHAPE, ACTION_SHAPE = (17,), (6,)
# Filling uses many envs so a 1e6 buffer takes ~1000 adds, not 1e6; sampling cost does not depend
# on num_envs (it only sets the next-observation row offset).
FILL_ENVS = 1_000


def make_buffer(capacity: int, num_envs: int, device: torch.device) -> ReplayBuffer:
    return ReplayBuffer(capacity, num_envs, OBS_SHAPE, torch.float32, ACTION_SHAPE, torch.float32, device, seed=0)


def vector_step(num_envs: int, device: torch.device, seed: int = 0) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn((num_envs, *OBS_SHAPE), generator=gen).to(device)
    actions = torch.rand((num_envs, *ACTION_SHAPE), generator=gen).to(device)
    rewards = torch.randn(num_envs, generator=gen).to(device)
    terminated = torch.zeros(num_envs, device=device)
    return obs, actions, rewards, terminated, np.ones(num_envs, dtype=bool)


_filled: dict[tuple[int, str], ReplayBuffer] = {}


def filled_buffer(capacity: int, device: torch.device) -> ReplayBuffer:
    """A full buffer, built once per (capacity, device) for all batch sizes."""
    key = (capacity, str(device))
    if key not in _filled:
        buffer = make_buffer(capacity, FILL_ENVS, device)
        step = vector_step(FILL_ENVS, device)
        for _ in range(buffer.steps + 1):
            buffer.add(*step)
        _filled[key] = buffer
    return _filled[key]


@pytest.mark.parametrize("num_envs", [1, 8, 64, 256])
def test_add(benchmark, device, num_envs):
    benchmark.group = f"buffer-add-{device.type}"
    buffer = make_buffer(100_000, num_envs, device)
    step = vector_step(num_envs, device)
    buffer.add(*step)  # past the first-write branch
    benchmark.extra_info["transitions_per_call"] = num_envs
    benchmark(synchronized(buffer.add, device), *step)


@pytest.mark.parametrize("batch_size", [32, 256, 2048, 8192])
@pytest.mark.parametrize("capacity", [10_000, 1_000_000], ids=["cap1e4", "cap1e6"])
def test_sample(benchmark, device, capacity, batch_size):
    benchmark.group = f"buffer-sample-{device.type}"
    buffer = filled_buffer(capacity, device)
    assert len(buffer) >= capacity - 2 * FILL_ENVS  # it really is (nearly) full
    benchmark.extra_info["transitions_per_call"] = batch_size
    benchmark(synchronized(buffer.sample, device), 1, batch_size)


# The trainer draws all k mini-batches of a train phase in one call; this pair shows why.
@pytest.mark.parametrize("how", ["one-call", "k-calls"])
def test_sample_k_batches(benchmark, device, how):
    benchmark.group = f"buffer-sample-64x128-{device.type}"
    buffer = filled_buffer(10_000, device)

    def k_calls():
        return [buffer.sample(1, 128) for _ in range(64)]

    fn = (lambda: buffer.sample(64, 128)) if how == "one-call" else k_calls
    benchmark(synchronized(fn, device))


# --- the replay paths for real workloads: frame stacks, n-step windows, prioritized replay ---

ATARI_SHAPE = (4, 84, 84)
ATARI_ENVS = 64


def atari_buffer(capacity: int, device: torch.device, layout: str) -> ReplayBuffer:
    """A full Atari-shaped buffer (4x84x84 uint8 stacks, discrete actions): the old layout storing
    the whole stack per row, or one frame per row (with n-step windows of 3)."""
    kwargs = {"full-stack": {}, "frame-stack": dict(frame_stack=4),
              "frame-stack-nstep3": dict(frame_stack=4, n_step=3, gamma=0.99)}[layout]
    buffer = ReplayBuffer(capacity, ATARI_ENVS, ATARI_SHAPE, torch.uint8, (), torch.int64, device, seed=0, **kwargs)
    gen = torch.Generator().manual_seed(0)
    frame = torch.randint(0, 256, (ATARI_ENVS, 1, 84, 84), generator=gen, dtype=torch.uint8)
    obs = frame.expand(ATARI_ENVS, 4, 84, 84).contiguous().to(device)  # a reset stack: valid in every layout
    actions = torch.randint(0, 4, (ATARI_ENVS,), generator=gen).to(device)
    rewards, terminated = torch.ones(ATARI_ENVS, device=device), torch.zeros(ATARI_ENVS, device=device)
    for _ in range(buffer.steps + 1):
        buffer.add(obs, actions, rewards, terminated, np.ones(ATARI_ENVS, dtype=bool))
    return buffer


@pytest.mark.parametrize("batch_size", [32, 256])
@pytest.mark.parametrize("layout", ["full-stack", "frame-stack", "frame-stack-nstep3"])
def test_sample_atari(benchmark, device, layout, batch_size):
    benchmark.group = f"buffer-sample-atari-{device.type}"
    buffer = atari_buffer(20_000, device, layout)
    benchmark.extra_info["bytes_per_transition"] = buffer.bytes_per_transition
    benchmark.extra_info["transitions_per_call"] = batch_size
    benchmark(synchronized(buffer.sample, device), 1, batch_size)


_filled_variant: dict[tuple[str, str], ReplayBuffer] = {}


def filled_variant(device: torch.device, variant: str) -> ReplayBuffer:
    """A full 1e6 HalfCheetah-shaped buffer with n-step windows or prioritized replay."""
    key = (variant, str(device))
    if key not in _filled_variant:
        kwargs = {"nstep3": dict(n_step=3, gamma=0.99), "per-numba": dict(prioritized=True, per_backend="numba"),
                  "per-torch": dict(prioritized=True, per_backend="torch"),
                  "per-numpy": dict(prioritized=True, per_backend="numpy")}[variant]
        buffer = ReplayBuffer(1_000_000, FILL_ENVS, OBS_SHAPE, torch.float32, ACTION_SHAPE, torch.float32, device,
                              seed=0, **kwargs)
        step = vector_step(FILL_ENVS, device)
        for _ in range(buffer.steps + 1):
            buffer.add(*step)
        _filled_variant[key] = buffer
    return _filled_variant[key]


@pytest.mark.parametrize("batch_size", [256, 2048])
def test_sample_nstep(benchmark, device, batch_size):
    benchmark.group = f"buffer-sample-nstep3-{device.type}"
    buffer = filled_variant(device, "nstep3")
    benchmark.extra_info["transitions_per_call"] = batch_size
    benchmark(synchronized(buffer.sample, device), 1, batch_size)


@pytest.mark.parametrize("backend", ["numba", "torch", "numpy"])
def test_prioritized_sample_and_update(benchmark, device, backend):
    """sample(256) and the priority update of its 256 rows, from a full 1e6 prioritized buffer."""
    if device.type != "cpu" and backend != "torch":
        pytest.skip(f"the {backend} sum tree runs on the CPU only")
    benchmark.group = f"buffer-per-sample-update-256-{device.type}"
    buffer = filled_variant(device, f"per-{backend}")
    td = torch.rand(256, generator=torch.Generator().manual_seed(0)).to(device)

    def sample_and_update():
        batch = buffer.sample_batches(1, 256, beta=0.4)[0]
        buffer.update_priorities(batch.indices, td)
        return batch

    benchmark.extra_info["transitions_per_call"] = 256
    benchmark(synchronized(sample_and_update, device))
