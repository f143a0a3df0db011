"""Replay buffer of preallocated tensors on the training device.

Layout: one row per (vector step, env), stored as a stream per env. Row (t, i) holds the
observation env i acted on at step t, the action, the reward and the terminated flag that the
step returned. The next observation is the observation of row (t + 1, i), so observations are
stored once (an Atari frame stack costs one observation per transition, not two).

Rows that are not real transitions are never sampled:
- the auto-reset row (its "next observation" is the first of a new episode), and
- the newest row of each env (its next observation is not written yet).
The sampleable rows are kept, in time order, in a ring of row indices (`_sampleable`). Rows are
overwritten oldest first, so the entries of an overwritten step are always at the head of that
ring, and the host knows how many there are without reading the device.

Sampling draws every index of k mini-batches with one `torch.randint` on the device from a
seeded generator (uniform over sampleable rows, with replacement) and gathers.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from fastrl.config import ConfigError


@dataclass
class Batch:
    obs: torch.Tensor  # [..., *obs_shape]
    actions: torch.Tensor  # [..., *action_shape]
    rewards: torch.Tensor  # [...] float32
    next_obs: torch.Tensor  # [..., *obs_shape]
    terminated: torch.Tensor  # [...] float32

    def __getitem__(self, i: int) -> Batch:
        return Batch(self.obs[i], self.actions[i], self.rewards[i], self.next_obs[i], self.terminated[i])


def bytes_per_row(obs_shape: tuple[int, ...], obs_dtype: torch.dtype,
                  action_shape: tuple[int, ...], action_dtype: torch.dtype) -> int:
    obs = math.prod(obs_shape) * torch.empty((), dtype=obs_dtype).element_size()
    act = math.prod(action_shape) * torch.empty((), dtype=action_dtype).element_size()
    # reward (f32) + terminated (f32) + one int64 entry in the sampleable-row ring
    return obs + act + 4 + 4 + 8


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_fits(capacity: int, num_envs: int, row_bytes: int, device: torch.device) -> None:
    """Refuse, before allocating, a buffer that will not fit in the device's free memory."""
    needed = math.ceil(capacity / num_envs) * num_envs * row_bytes
    free = available_bytes(device)
    if needed > 0.9 * free:
        where = "free GPU memory" if device.type == "cuda" else "available host RAM"
        raise ConfigError(
            f"--buffer-size: {capacity} transitions need {needed:,} bytes "
            f"({row_bytes} per transition) but {where} is {free:,} bytes; lower --buffer-size"
        )


class ReplayBuffer:
    def __init__(self, capacity: int, num_envs: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype,
                 action_shape: tuple[int, ...], action_dtype: torch.dtype,
                 device: torch.device | str = "cpu", seed: int = 0):
        if capacity < 2 * num_envs:
            raise ConfigError(f"--buffer-size: must hold at least two vector steps (>= {2 * num_envs})")
        self.device = torch.device(device)
        self.num_envs = num_envs
        self.steps = math.ceil(capacity / num_envs)  # time slots in the ring
        self.rows = self.steps * num_envs
        check_fits(capacity, num_envs, bytes_per_row(obs_shape, obs_dtype, action_shape, action_dtype), self.device)
        self.obs = torch.zeros((self.rows, *obs_shape), dtype=obs_dtype, device=self.device)
        self.actions = torch.zeros((self.rows, *action_shape), dtype=action_dtype, device=self.device)
        self.rewards = torch.zeros(self.rows, dtype=torch.float32, device=self.device)
        self.terminated = torch.zeros(self.rows, dtype=torch.float32, device=self.device)
        self._sampleable = torch.zeros(self.rows, dtype=torch.int64, device=self.device)
        self._head = 0  # ring position of the oldest sampleable entry
        self._size = 0  # number of sampleable entries
        self._count_per_slot = np.zeros(self.steps, dtype=np.int64)  # entries each time slot holds
        self._slot = 0  # next time slot to write
        self._written_steps = 0
        self._prev_valid = np.zeros(num_envs, dtype=bool)  # rows of the newest slot that are real
        self._env_offsets = np.arange(num_envs, dtype=np.int64)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        """Number of transitions that can be sampled."""
        return self._size

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size()
                   for t in (self.obs, self.actions, self.rewards, self.terminated, self._sampleable))

    @property
    def bytes_per_transition(self) -> float:
        return self.nbytes / self.rows

    def add(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
            terminated: torch.Tensor, valid: np.ndarray) -> None:
        """Write one vector step: `obs[i]` is what env i acted on with `actions[i]`; `valid[i]` is
        False when that step was an auto-reset step (not a real transition)."""
        slot = self._slot
        # The slot being overwritten holds the oldest rows: drop their ring entries (at the head).
        dropped = int(self._count_per_slot[slot])
        self._head = (self._head + dropped) % self.rows
        self._size -= dropped
        self._count_per_slot[slot] = 0
        rows = slice(slot * self.num_envs, (slot + 1) * self.num_envs)
        self.obs[rows] = obs
        self.actions[rows] = actions
        self.rewards[rows] = rewards
        self.terminated[rows] = terminated
        # Rows of the previous slot now have their next observation: the real ones become sampleable.
        if self._written_steps > 0:
            prev = (slot - 1) % self.steps
            new_rows = prev * self.num_envs + self._env_offsets[self._prev_valid]
            self._append_sampleable(new_rows)
            self._count_per_slot[prev] = len(new_rows)
        self._prev_valid = np.asarray(valid, dtype=bool).copy()
        self._slot = (slot + 1) % self.steps
        self._written_steps += 1

    def _append_sampleable(self, new_rows: np.ndarray) -> None:
        n = len(new_rows)
        if n == 0:
            return
        start = (self._head + self._size) % self.rows
        values = torch.from_numpy(new_rows).to(self.device, non_blocking=True)
        first = min(n, self.rows - start)
        self._sampleable[start:start + first] = values[:first]
        if first < n:
            self._sampleable[: n - first] = values[first:]
        self._size += n

    def sample_indices(self, num_batches: int, batch_size: int) -> torch.Tensor:
        """Row indices [num_batches, batch_size], uniform over sampleable rows, with replacement."""
        if self._size == 0:
            raise RuntimeError("sample() on a replay buffer with no complete transition")
        draw = torch.randint(self._head, self._head + self._size, (num_batches, batch_size),
                             generator=self.generator, device=self.device)
        if self._head + self._size > self.rows:
            draw = draw.remainder_(self.rows)
        return self._sampleable[draw]

    def gather(self, rows: torch.Tensor) -> Batch:
        next_rows = (rows + self.num_envs).remainder_(self.rows)
        return Batch(self.obs[rows], self.actions[rows], self.rewards[rows], self.obs[next_rows],
                     self.terminated[rows])

    def sample(self, num_batches: int, batch_size: int) -> Batch:
        """k mini-batches at once: every tensor has leading dims [num_batches, batch_size]."""
        return self.gather(self.sample_indices(num_batches, batch_size))

    # Checkpointing: the host-side bookkeeping travels with the tensors.
    def state_dict(self) -> dict:
        return {
            "obs": self.obs, "actions": self.actions, "rewards": self.rewards, "terminated": self.terminated,
            "sampleable": self._sampleable, "head": self._head, "size": self._size,
            "count_per_slot": torch.from_numpy(self._count_per_slot.copy()), "slot": self._slot,
            "written_steps": self._written_steps, "prev_valid": torch.from_numpy(self._prev_valid.copy()),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("obs", "actions", "rewards", "terminated"):
            getattr(self, name).copy_(state[name])
        self._sampleable.copy_(state["sampleable"])
        self._head, self._size = int(state["head"]), int(state["size"])
        self._count_per_slot = state["count_per_slot"].numpy().copy()
        self._slot, self._written_steps = int(state["slot"]), int(state["written_steps"])
        self._prev_valid = state["prev_valid"].numpy().copy()
        self.generator.set_state(state["generator"])
