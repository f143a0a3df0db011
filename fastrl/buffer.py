"""Replay buffer of preallocated tensors on the training device.

Layout: each env owns a contiguous stream of rows (env-major). Row (e, t) holds the observation
env e acted on at its t-th stored step, and the reward, terminated flag and action of that step.
The next observation of row (e, t) is the observation of row (e, t + 1), so observations are stored
once (an Atari frame stack costs one observation per transition, not two), and a transition is
read by ONE gather of two adjacent rows through a strided "pair view" of the storage. Each stream
has one spare slot at its end that mirrors slot 0, so the pair of the last slot wraps without a
modulo.

For vector observations the row is packed: [obs | reward | terminated | action] in one float32
tensor, so a whole mini-batch is one index_select. Image observations keep their dtype (uint8)
and the scalars live in a small float tensor beside them.

Rows that are not real transitions are never sampled:
- the auto-reset row (its "next observation" is the first of a new episode), and
- the newest row of each env (its next observation is not written yet).
The sampleable rows are kept, in time order, in a ring of row ids. Slots are overwritten oldest
first, so the entries of an overwritten slot are always at the head of that ring, and the host
knows how many without reading the device. The ring is stored twice over (entry i at i and
i + capacity) so that any window [head, head + size) is contiguous: no modulo when sampling.

Sampling draws every index of k mini-batches with one `torch.randint` on the device from a seeded
generator (uniform over sampleable rows, with replacement) and gathers.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from fastrl.settings import ConfigError


@dataclass
class Batch:
    obs: torch.Tensor  # [..., *obs_shape]
    actions: torch.Tensor  # [..., *action_shape]; float32 (discrete actions as whole numbers)
    rewards: torch.Tensor  # [...] float32
    next_obs: torch.Tensor  # [..., *obs_shape]
    terminated: torch.Tensor  # [...] float32
    discount: torch.Tensor | None = None  # [...] γ^m to bootstrap with (n-step returns); None: γ
    weights: torch.Tensor | None = None  # [...] importance weights (prioritized replay); None: uniform
    indices: torch.Tensor | None = None  # [...] row ids, for priority updates

    def __getitem__(self, i: int) -> Batch:
        return Batch(*(None if f is None else f[i] for f in self._fields()))

    def _fields(self) -> tuple[torch.Tensor | None, ...]:
        return (self.obs, self.actions, self.rewards, self.next_obs, self.terminated, self.discount, self.weights,
                self.indices)

    def unbind(self) -> list[Batch]:
        """Split k stacked mini-batches into k batches with 5 view ops in all, not 5 per batch."""
        return [Batch(*fields) for fields in zip(self.obs.unbind(0), self.actions.unbind(0), self.rewards.unbind(0),
                                                 self.next_obs.unbind(0), self.terminated.unbind(0))]


def _packs_scalars(obs_dtype: torch.dtype) -> bool:
    return obs_dtype == torch.float32


def bytes_per_row(obs_shape: tuple[int, ...], obs_dtype: torch.dtype, action_shape: tuple[int, ...],
                  action_dtype: torch.dtype | None = None) -> int:
    """Bytes one transition costs: observation, reward, terminated, action, and two ring entries."""
    obs = math.prod(obs_shape) * torch.empty((), dtype=obs_dtype).element_size()
    scalars = 4 * (2 + math.prod(action_shape))
    return obs + scalars + 2 * 8


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
    needed = (math.ceil(capacity / num_envs) + 1) * num_envs * row_bytes
    free = available_bytes(device)
    if needed > 0.9 * free:
        where = "free GPU memory" if device.type == "cuda" else "available host RAM"
        raise ConfigError(
            f"--buffer-size: {capacity} transitions need {needed:,} bytes "
            f"({row_bytes} per transition) but {where} is {free:,} bytes; lower --buffer-size"
        )


class ReplayBuffer:
    def __init__(self, capacity: int, num_envs: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype,
                 action_shape: tuple[int, ...], action_dtype: torch.dtype | None = None,
                 device: torch.device | str = "cpu", seed: int = 0):
        if capacity < 2 * num_envs:
            raise ConfigError(f"--buffer-size: must hold at least two vector steps (>= {2 * num_envs})")
        self.device = torch.device(device)
        self.num_envs = num_envs
        self.obs_shape = tuple(obs_shape)
        self.action_shape = tuple(action_shape)
        self.steps = math.ceil(capacity / num_envs)  # time slots per env stream
        self.capacity = self.steps * num_envs
        self._stride = self.steps + 1  # rows per env stream, including the mirror slot
        check_fits(capacity, num_envs, bytes_per_row(obs_shape, obs_dtype, action_shape), self.device)

        obs_size = math.prod(obs_shape)
        act_size = math.prod(action_shape)
        self._obs_size, self._act_size = obs_size, act_size
        self._packed = _packs_scalars(obs_dtype)
        total_rows = num_envs * self._stride + 1  # +1: the pair view of the very last row
        scalar_width = 2 + act_size  # reward, terminated, action...
        if self._packed:
            self._row_width = obs_size + scalar_width
            self.frames = torch.zeros((total_rows, self._row_width), dtype=torch.float32, device=self.device)
            self.scalars = None
        else:
            self._row_width = obs_size
            self.frames = torch.zeros((total_rows, obs_size), dtype=obs_dtype, device=self.device)
            self.scalars = torch.zeros((total_rows, scalar_width), dtype=torch.float32, device=self.device)
        # pairs[r] = row r followed by row r + 1: (obs, next obs) in one gather.
        self._pairs = self.frames.as_strided((total_rows - 1, 2 * self._row_width), (self._row_width, 1))
        self._ring = torch.zeros(2 * self.capacity, dtype=torch.int64, device=self.device)
        on_cpu = self.device.type == "cpu"
        # On CPU the storage is host memory: numpy views write a vector step ~5x cheaper than copy_.
        self._frames_np = self.frames.numpy() if on_cpu else None
        self._scalars_np = self.scalars.numpy() if (on_cpu and self.scalars is not None) else None
        self._ring_np = self._ring.numpy() if on_cpu else None
        # [num_envs, stride, width] views: a vector step's rows are one basic slice [:, slot].
        stream_rows = num_envs * self._stride
        self._streams_np = (self._frames_np[:stream_rows].reshape(num_envs, self._stride, -1)
                            if on_cpu else None)
        self._scalar_streams_np = (self._scalars_np[:stream_rows].reshape(num_envs, self._stride, -1)
                                   if self._scalars_np is not None else None)

        self._head = 0  # ring position of the oldest sampleable entry
        self._size = 0  # number of sampleable entries
        self._count_per_slot = np.zeros(self.steps, dtype=np.int64)
        self._slot = 0  # next time slot to write
        self._written_steps = 0
        self._prev_valid = np.zeros(num_envs, dtype=bool)
        self._env_base = np.arange(num_envs, dtype=np.int64) * self._stride
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        """Number of transitions that can be sampled."""
        return self._size

    @property
    def nbytes(self) -> int:
        tensors = [self.frames, self._ring] + ([self.scalars] if self.scalars is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def bytes_per_transition(self) -> float:
        return self.nbytes / self.capacity

    # --- writing ---
    def _write_rows(self, rows: np.ndarray, obs: torch.Tensor, scalars: list[torch.Tensor]) -> None:
        """Write len(rows) rows; `obs` and each scalar tensor have len(rows) leading elements."""
        n = len(rows)
        if self._frames_np is not None:
            obs_np = obs.reshape(n, -1).numpy()
            if self._packed:
                self._frames_np[rows, : self._obs_size] = obs_np
                col, target = self._obs_size, self._frames_np
            else:
                self._frames_np[rows] = obs_np
                col, target = 0, self._scalars_np
            for value in scalars:
                value = value.reshape(n, -1).numpy()
                target[rows, col: col + value.shape[1]] = value
                col += value.shape[1]
            return
        index = torch.from_numpy(rows).to(self.device, non_blocking=True)
        packed_scalars = torch.cat([v.reshape(n, -1).float() for v in scalars], dim=1)
        if self._packed:
            self.frames.index_copy_(0, index, torch.cat([obs.reshape(n, -1).float(), packed_scalars], dim=1))
        else:
            self.frames.index_copy_(0, index, obs.reshape(n, -1))
            self.scalars.index_copy_(0, index, packed_scalars)

    def add(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
            terminated: torch.Tensor, valid: np.ndarray) -> None:
        """Write one vector step ([num_envs, ...] inputs) or S of them ([S, num_envs, ...]).

        `obs[i]` is what env i acted on with `actions[i]`; `valid[i]` is False when that step was
        an auto-reset step (not a real transition). Bookkeeping is vectorized over the S steps, so
        a rollout chunk costs about as much as one step."""
        valid = np.asarray(valid, dtype=bool)
        if valid.ndim == 1:
            self._add_step(obs, actions, rewards, terminated, valid)
            return
        chunk = valid.ndim == 2
        num_steps = valid.shape[0] if chunk else 1
        if num_steps >= self.steps:
            # (the previous newest slot would be overwritten by the chunk it is completed by)
            raise ValueError(f"a chunk of {num_steps} steps needs a buffer of more than {num_steps} steps "
                             f"per env; this one has {self.steps}")
        valid = valid.reshape(num_steps, self.num_envs)
        slots = (self._slot + np.arange(num_steps)) % self.steps
        # The slots being overwritten hold the oldest rows: drop their ring entries (at the head).
        dropped = int(self._count_per_slot[slots].sum())
        self._head = (self._head + dropped) % self.capacity
        self._size -= dropped
        self._count_per_slot[slots] = 0

        rows = (slots[:, None] + self._env_base[None, :]).reshape(-1)
        n_rows = len(rows)
        scalars = [rewards.reshape(n_rows), terminated.reshape(n_rows), actions.reshape(n_rows, -1)]
        obs = obs.reshape(n_rows, -1)
        self._write_rows(rows, obs, scalars)
        if (slots == 0).any():  # keep the mirror slot equal to slot 0
            at = int(np.flatnonzero(slots == 0)[0]) * self.num_envs
            part = slice(at, at + self.num_envs)
            self._write_rows(self._env_base + self.steps, obs[part], [v[part] for v in scalars])

        # A row becomes sampleable once the row after it is written: the previous newest step and
        # all but the last of these steps, where real. Appended oldest first, as the ring requires.
        done_valid = np.concatenate([self._prev_valid[None, :], valid[:-1]]) if self._written_steps else valid[:-1]
        done_slots = np.concatenate([[self._slot - 1], slots[:-1]]) % self.steps if self._written_steps else slots[:-1]
        counts = done_valid.sum(axis=1)
        new_rows = (done_slots[:, None] + self._env_base[None, :])[done_valid]
        self._append_sampleable(new_rows)
        self._count_per_slot[done_slots] = counts
        self._prev_valid = valid[-1].copy()
        self._slot = int((self._slot + num_steps) % self.steps)
        self._written_steps += num_steps

    def _add_step(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                  terminated: torch.Tensor, valid: np.ndarray) -> None:
        """`add` of one vector step, the trainer's every-step call: the same bookkeeping as a chunk
        of one, in scalar and slice operations (a vector step of 8 envs is a few us, not ~40)."""
        slot, n = self._slot, self.num_envs
        dropped = int(self._count_per_slot[slot])
        if dropped:  # the slot's old rows are the oldest ring entries: drop them from the head
            self._head = (self._head + dropped) % self.capacity
            self._size -= dropped
            self._count_per_slot[slot] = 0
        self._write_step(slot, obs, actions, rewards, terminated)
        if slot == 0:  # keep the mirror slot equal to slot 0
            self._write_step(self.steps, obs, actions, rewards, terminated)
        if self._written_steps:  # the previous step's rows now have their next observation
            previous = slot - 1 if slot else self.steps - 1
            prev_valid = self._prev_valid
            all_valid = np.count_nonzero(prev_valid) == n  # ~10x cheaper than ndarray.all() here
            new_rows = self._env_base + previous if all_valid else self._env_base[prev_valid] + previous
            self._append_sampleable(new_rows)
            self._count_per_slot[previous] = len(new_rows)
        self._prev_valid = valid.reshape(n).copy()
        self._slot = slot + 1 if slot + 1 < self.steps else 0
        self._written_steps += 1

    def _write_step(self, slot: int, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                    terminated: torch.Tensor) -> None:
        """Write time slot `slot` of every env stream: rows slot, stride + slot, ... On CPU through
        basic slicing of a [num_envs, stride, width] numpy view (no index arrays); on a device
        through the chunk path's index_copy."""
        n, d = self.num_envs, self._obs_size
        if self._streams_np is None:
            self._write_rows(self._env_base + slot, obs.reshape(n, -1),
                             [rewards.reshape(n), terminated.reshape(n), actions.reshape(n, -1)])
            return
        # numpy reshapes: ~0.1 us each against ~1 us for a torch reshape
        rows = self._streams_np[:, slot]
        if self._packed:
            rows[:, :d] = obs.numpy().reshape(n, d)
            scalars, col = rows, d
        else:
            rows[:] = obs.numpy().reshape(n, d)
            scalars, col = self._scalar_streams_np[:, slot], 0
        scalars[:, col] = rewards.numpy().reshape(n)
        scalars[:, col + 1] = terminated.numpy().reshape(n)
        scalars[:, col + 2:] = actions.numpy().reshape(n, -1)

    def _append_sampleable(self, new_rows: np.ndarray) -> None:
        n = len(new_rows)
        if n == 0:
            return
        start = (self._head + self._size) % self.capacity
        if self._ring_np is not None and start + n <= self.capacity:  # no wrap: two slice copies
            self._ring_np[start: start + n] = new_rows
            self._ring_np[start + self.capacity: start + self.capacity + n] = new_rows
            self._size += n
            return
        positions = (start + np.arange(n)) % self.capacity
        both = np.concatenate([positions, positions + self.capacity])
        values = np.concatenate([new_rows, new_rows])
        if self._ring_np is not None:
            self._ring_np[both] = values
        else:
            self._ring.index_copy_(0, torch.from_numpy(both).to(self.device, non_blocking=True),
                                   torch.from_numpy(values).to(self.device, non_blocking=True))
        self._size += n

    # --- sampling ---
    def sample_rows(self, num_batches: int, batch_size: int) -> torch.Tensor:
        """Row ids [num_batches, batch_size], uniform over sampleable rows, with replacement."""
        return self._draw_rows(num_batches * batch_size).view(num_batches, batch_size)

    def _draw_rows(self, n: int) -> torch.Tensor:
        if self._size == 0:
            raise RuntimeError("sample() on a replay buffer with no complete transition")
        draw = torch.randint(self._head, self._head + self._size, (n,), generator=self.generator, device=self.device)
        return self._ring.index_select(0, draw)

    def gather(self, rows: torch.Tensor) -> Batch:
        lead = rows.shape
        stacked = len(lead) != 1  # [k, B] rows: the gathered rows get their leading dims back
        flat = rows.reshape(-1) if stacked else rows
        pairs = self._pairs.index_select(0, flat)
        if stacked:
            pairs = pairs.view(*lead, 2 * self._row_width)
        d, a = self._obs_size, self._act_size
        # One split_with_sizes and one unbind: each torch call here costs ~1-3 us warm and ~10 us in
        # the training loop's cold caches, so the fields come out of the fewest calls.
        if self._packed:
            obs, reward_terminated, actions, next_obs, _ = pairs.split_with_sizes([d, 2, a, d, 2 + a], dim=-1)
        else:
            obs, next_obs = pairs.split_with_sizes([d, d], dim=-1)
            scalars = self.scalars.index_select(0, flat)
            if stacked:
                scalars = scalars.view(*lead, 2 + a)
            reward_terminated, actions = scalars.split_with_sizes([2, a], dim=-1)
        rewards, terminated = reward_terminated.unbind(-1)
        if len(self.obs_shape) != 1:
            obs, next_obs = obs.view(*lead, *self.obs_shape), next_obs.view(*lead, *self.obs_shape)
        if self.action_shape != (a,):  # discrete actions: () per transition
            actions = actions.view(*lead, *self.action_shape)
        return Batch(obs, actions, rewards, next_obs, terminated)

    def sample(self, num_batches: int, batch_size: int) -> Batch:
        """k mini-batches at once: every tensor has leading dims [num_batches, batch_size]."""
        return self.gather(self.sample_rows(num_batches, batch_size))

    def sample_batches(self, num_batches: int, batch_size: int) -> list[Batch]:
        """The same k mini-batches (same draw, same rows) as a list of [batch_size] batches; for k = 1
        without the stacked dimension, whose views and unbind would cost more than the gather."""
        if num_batches == 1:
            return [self.gather(self._draw_rows(batch_size))]
        return self.sample(num_batches, batch_size).unbind()

    def sampleable_rows(self) -> torch.Tensor:
        """Every sampleable row id, oldest first (for tests and inspection)."""
        return self._ring[self._head: self._head + self._size]

    # --- checkpointing: the host-side bookkeeping travels with the tensors ---
    def state_dict(self) -> dict:
        return {
            "frames": self.frames, "scalars": self.scalars if self.scalars is not None else torch.empty(0),
            "ring": self._ring, "head": self._head, "size": self._size,
            "count_per_slot": torch.from_numpy(self._count_per_slot.copy()), "slot": self._slot,
            "written_steps": self._written_steps, "prev_valid": torch.from_numpy(self._prev_valid.copy()),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.frames.copy_(state["frames"])
        if self.scalars is not None:
            self.scalars.copy_(state["scalars"])
        self._ring.copy_(state["ring"])
        self._head, self._size = int(state["head"]), int(state["size"])
        self._count_per_slot = state["count_per_slot"].numpy().copy()
        self._slot, self._written_steps = int(state["slot"]), int(state["written_steps"])
        self._prev_valid = state["prev_valid"].numpy().copy()
        self.generator.set_state(state["generator"])
