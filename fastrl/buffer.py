"""Replay buffer of preallocated tensors on the training device.

Layout: each env owns a contiguous stream of rows (env-major). Row (e, t) holds the observation
env e acted on at its t-th stored step, and the reward, terminated flag and action of that step.
The next observation of row (e, t) is the observation of row (e, t + 1), so observations are stored
once, and a one-step transition is read by ONE gather through a strided "pair view" of the
storage: row (e, t) and the observation of row (e, t + 1), contiguous in memory. Each stream has
`n_step` spare slots at its end that mirror its first slots, so a window that runs past the last
slot needs no modulo, and, with frame stacks, S - 1 spare slots at its start that mirror its last
slots, for the stacks of the first slots.

For vector observations the row is packed: [obs | reward | terminated | action] in one float32
tensor, so a whole mini-batch is one index_select. Image observations keep their dtype (uint8)
and the scalars live in a small float tensor beside them.

Frame stacks (`frame_stack=S`, Atari's 4x84x84 uint8): a row stores only the newest frame of its
stack (84x84 bytes, not 4x84x84) and the stack's history length; `fastrl.frame_stack` rebuilds the
stack, and the next observation's, with one gather, exactly as envpool built them.

n-step returns (`n_step=n`, `gamma`) are computed at sample time from the n rows after the sampled
one (`fastrl.nstep`): no second copy of the data. Batches then carry `discount` = gamma^m.

Prioritized replay (`prioritized=True`): rows are drawn from a sum tree over the row ids in
proportion to their priorities (`fastrl.priorities`); batches carry importance `weights` and the
row `indices` to pass back to `update_priorities`. On the numba tree (CPU) with packed one-step
rows, the tree's last numba call also copies the drawn pairs out: no index_select.

Rows that are not real transitions are stored but never sampled:
- the auto-reset row: the step taken on it was the env's auto-reset step, which ignored the action,
  paid no reward and returned the first observation of a new episode. The row itself holds the old
  episode's final observation (the next observation of its last real transition), and the row after
  it the new episode's first observation (with frame stacks, the first frame of the new episode);
- the cut row `fastrl.train.end_segment` writes at a checkpoint cut (the same, for a cut);
- the newest n rows of each env: a row becomes sampleable only once every row of its n-step window
  is written, even when an episode end will cut the window shorter. So a row becomes sampleable
  exactly n steps after it was written, whatever its window (the ring below stays in time order),
  and a row's window is the same whenever it is drawn (never a short window that grows later);
- with frame stacks, the oldest S - 1 time slots: their stacks reach into the slot being overwritten.
The sampleable rows are kept, in time order, in a ring of row ids. Slots are overwritten oldest
first, so the entries of an overwritten slot are always at the head of that ring, and the host
knows how many without reading the device. The ring is stored twice over (entry i at i and
i + capacity) so that any window [head, head + size) is contiguous: no modulo when sampling.

Sampling draws every index of k mini-batches at once on the device from a seeded generator
(uniform over sampleable rows with replacement, or from the sum tree) and gathers.

Writes are basic slices of [num_envs, stride, width] views of the storage, on CPU through numpy
views (cheaper than torch calls for a few rows), on a device through torch views: no index array
is built on the host and copied to the device for a step, except the rare step where some env's
step was not a real transition.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from fastrl.settings import ConfigError
from fastrl.frame_stack import frame_rows, history_lengths, repeats_one_frame
from fastrl.nstep import gamma_powers, nstep_targets
from fastrl.priorities import Priorities


@dataclass
class Batch:
    obs: torch.Tensor  # [..., *obs_shape]
    actions: torch.Tensor  # [..., *action_shape]; float32 (discrete actions as whole numbers)
    rewards: torch.Tensor  # [...] float32; with n-step replay the discounted n-step return
    next_obs: torch.Tensor  # [..., *obs_shape]; with n-step replay the observation bootstrapped from
    terminated: torch.Tensor  # [...] float32; with n-step replay: the window ended in a termination
    discount: torch.Tensor | None = None  # [...] float32 gamma^m of each n-step window; None: one step
    weights: torch.Tensor | None = None  # [...] float32 importance weights (prioritized replay)
    indices: torch.Tensor | None = None  # [...] int64 buffer rows, for `ReplayBuffer.update_priorities`

    def _fields(self) -> tuple:
        return (self.obs, self.actions, self.rewards, self.next_obs, self.terminated, self.discount, self.weights,
                self.indices)

    def __getitem__(self, i: int) -> Batch:
        return Batch(*(None if field is None else field[i] for field in self._fields()))

    def unbind(self) -> list[Batch]:
        """Split k stacked mini-batches into k batches with one unbind per field, not one per batch."""
        columns = [itertools.repeat(None) if field is None else field.unbind(0) for field in self._fields()]
        return [Batch(*fields) for fields in zip(*columns)]


def _packs_scalars(obs_dtype: torch.dtype, frame_stack: int) -> bool:
    return obs_dtype == torch.float32 and frame_stack == 1


def _scalar_width(action_size: int, frame_stack: int, n_step: int) -> int:
    """reward, terminated, action..., then 'real transition' (n-step windows) and the stack history."""
    return 2 + action_size + (n_step > 1) + (frame_stack > 1)


def bytes_per_row(obs_shape: tuple[int, ...], obs_dtype: torch.dtype, action_shape: tuple[int, ...],
                  action_dtype: torch.dtype | None = None, *, frame_stack: int = 1, n_step: int = 1,
                  prioritized: bool = False) -> int:
    """Bytes one transition costs: its observation (or newest frame), scalars, two ring entries and,
    prioritized, 32 bytes of sum tree (a bound from 4 rows up: a large buffer's tree holds ~9 bytes a row)."""
    obs = math.prod(obs_shape) // frame_stack * torch.empty((), dtype=obs_dtype).element_size()
    scalars = 4 * _scalar_width(math.prod(action_shape), frame_stack, n_step)
    return obs + scalars + 2 * 8 + (32 if prioritized else 0)


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        # Memory PyTorch's caching allocator holds but no tensor uses is free to this process too.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free) + int(cached)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_fits(capacity: int, num_envs: int, row_bytes: int, device: torch.device, extra_slots: int = 1) -> None:
    """Refuse, before allocating, a buffer that will not fit in the device's free memory.
    `extra_slots`: the mirror slots per env stream (n_step + frame_stack - 1)."""
    needed = (math.ceil(capacity / num_envs) + extra_slots) * num_envs * row_bytes
    free = available_bytes(device)
    if needed > 0.9 * free:
        where = "free GPU memory" if device.type == "cuda" else "available host RAM"
        raise ConfigError(
            f"--buffer-size: {capacity} transitions need {needed:,} bytes "
            f"({row_bytes} per transition) but {where} is {free:,} bytes; lower --buffer-size"
        )


def _check_options(obs_shape: tuple[int, ...], frame_stack: int, n_step: int, gamma: float | None,
                   prioritized: bool, per_alpha: float, per_eps: float) -> None:
    def is_int(value) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not is_int(frame_stack) or frame_stack < 1 or (frame_stack > 1 and (
            len(obs_shape) < 2 or obs_shape[0] % frame_stack)):
        raise ConfigError(f"--frame-stack: must be 1, or a positive integer that divides the leading dim of "
                          f"observations of shape {tuple(obs_shape)}; got {frame_stack!r}")
    if not is_int(n_step) or n_step < 1:
        raise ConfigError(f"--n-step: must be a positive integer, got {n_step!r}")
    if n_step > 1 and (gamma is None or not 0.0 <= gamma <= 1.0):
        raise ConfigError(f"--gamma: n-step returns (--n-step {n_step}) need a discount in [0, 1], got {gamma!r}")
    if prioritized and not (math.isfinite(per_alpha) and per_alpha >= 0):
        raise ConfigError(f"--per-alpha: must be a finite number >= 0, got {per_alpha!r}")
    if prioritized and not (math.isfinite(per_eps) and per_eps > 0):
        raise ConfigError(f"--per-eps: must be > 0 (a row of priority 0 is never drawn again), got {per_eps!r}")


class ReplayBuffer:
    def __init__(self, capacity: int, num_envs: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype,
                 action_shape: tuple[int, ...], action_dtype: torch.dtype | None = None,
                 device: torch.device | str = "cpu", seed: int = 0, *, frame_stack: int = 1, n_step: int = 1,
                 gamma: float | None = None, prioritized: bool = False, per_alpha: float = 0.6,
                 per_eps: float = 1e-6, per_backend: str = "auto", host_views: bool | None = None):
        """`frame_stack`: observations are stacks of this many frames along their leading dim, stored
        one frame per row (envpool's Atari: `EnvSpec.frame_stack`). `n_step`, `gamma`: n-step
        returns. `prioritized`, `per_alpha`, `per_eps`: proportional prioritized replay, its tree on
        `per_backend` ("auto": numba on CPU, torch elsewhere; "torch" and "numpy" also run on CPU).
        `host_views`: write through numpy views of the storage (the default on CPU) or through
        torch views (the default elsewhere; False on CPU runs the device code path)."""
        _check_options(obs_shape, frame_stack, n_step, gamma, prioritized, per_alpha, per_eps)
        self.device = torch.device(device)
        self.num_envs = num_envs
        self.obs_shape = tuple(obs_shape)
        self.action_shape = tuple(action_shape)
        self.frame_stack, self.n_step, self.gamma = frame_stack, n_step, gamma
        self.prioritized = prioritized
        self._lead = frame_stack - 1  # mirror slots before each stream's slot 0
        min_steps = self._lead + n_step + 1
        if capacity < min_steps * num_envs:
            raise ConfigError(f"--buffer-size: must hold at least {min_steps} vector steps (>= {min_steps * num_envs})")
        self.steps = math.ceil(capacity / num_envs)  # time slots per env stream
        self.capacity = self.steps * num_envs
        self._stride = self._lead + self.steps + n_step  # rows per env stream, mirror slots included
        row_bytes = bytes_per_row(obs_shape, obs_dtype, action_shape, frame_stack=frame_stack, n_step=n_step,
                                  prioritized=prioritized)
        check_fits(capacity, num_envs, row_bytes, self.device, extra_slots=self._lead + n_step)

        self._obs_size = math.prod(obs_shape)
        self._frame_size = self._obs_size // frame_stack  # what a row stores of its observation
        self._act_size = math.prod(action_shape)
        self._real_col = 2 + self._act_size if n_step > 1 else None
        self._history_col = 2 + self._act_size + (n_step > 1) if frame_stack > 1 else None
        scalar_width = _scalar_width(self._act_size, frame_stack, n_step)
        self._packed = _packs_scalars(obs_dtype, frame_stack)
        total_rows = num_envs * self._stride + 1  # +1: the pair view of the very last row
        if self._packed:
            self._row_width = self._frame_size + scalar_width
            self.frames = torch.zeros((total_rows, self._row_width), dtype=torch.float32, device=self.device)
            self.scalars = None
        else:
            self._row_width = self._frame_size
            self.frames = torch.zeros((total_rows, self._frame_size), dtype=obs_dtype, device=self.device)
            self.scalars = torch.zeros((total_rows, scalar_width), dtype=torch.float32, device=self.device)
        # pairs[r] = row r followed by row r + 1's observation: (obs, [scalars,] next obs) in one gather.
        self._pair_width = self._row_width + self._frame_size
        self._pairs = self.frames.as_strided((total_rows - 1, self._pair_width), (self._row_width, 1))
        # windows[r] = the scalar columns of rows r .. r + n - 1: an n-step window in one gather.
        store, first_col = (self.frames, self._frame_size) if self._packed else (self.scalars, 0)
        width = store.shape[1]
        self._windows = store.as_strided((total_rows - n_step + 1, n_step, scalar_width), (width, width, 1), first_col)
        self._ring = torch.zeros(2 * self.capacity, dtype=torch.int64, device=self.device)

        if host_views and self.device.type != "cpu":
            raise ValueError(f"host_views=True needs a CPU buffer; this one is on {self.device}")
        self._host = self.device.type == "cpu" if host_views is None else bool(host_views)
        # [num_envs, stride, width] views: a vector step's rows are one basic slice [:, column].
        frames = self.frames.numpy() if self._host else self.frames
        self._frames_np = frames if self._host else None
        streams = frames[: num_envs * self._stride].reshape(num_envs, self._stride, -1)
        self._obs_streams = streams[:, :, : self._frame_size]
        if self._packed:
            self._scalar_streams = streams[:, :, self._frame_size:]
        else:
            scalars = self.scalars.numpy() if self._host else self.scalars
            self._scalar_streams = scalars[: num_envs * self._stride].reshape(num_envs, self._stride, -1)
        self._ring_w = self._ring.numpy() if self._host else self._ring  # what ring writes go through

        self._head = 0  # ring position of the oldest sampleable entry
        self._size = 0  # number of sampleable entries
        self._count_per_slot = np.zeros(self.steps, dtype=np.int64)
        self._slot = 0  # next time slot to write
        self._written_steps = 0
        self._valid_history = np.zeros((self.steps, num_envs), dtype=bool)  # per slot: real transitions
        self._env_base = np.arange(num_envs, dtype=np.int64) * self._stride + self._lead  # row of (env, slot 0)
        self._env_base_t = torch.from_numpy(self._env_base).to(self.device)
        self._real_ones = torch.ones((num_envs, 1), device=self.device)
        if frame_stack > 1:  # each env's newest stack history length; -1 before its first row
            self._stack_history = (np.full(num_envs, -1, dtype=np.int64) if self._host
                                   else torch.full((num_envs,), -1, dtype=torch.int64, device=self.device))
        self._gamma_powers = gamma_powers(gamma, n_step, self.device) if n_step > 1 else None
        self._priorities = (Priorities(total_rows, self.device, per_alpha, per_eps, per_backend)
                            if prioritized else None)
        # A numba tree copies the drawn one-step pairs out of the packed rows in its own last call.
        fused = (prioritized and self._priorities.tree.backend == "numba" and self._packed and self._host
                 and n_step == 1 and frame_stack == 1)
        self._pair_storage = self._frames_np.reshape(-1) if fused else None
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        """Number of transitions that can be sampled."""
        return self._size

    @property
    def nbytes(self) -> int:
        tensors = [self.frames, self._ring] + ([self.scalars] if self.scalars is not None else [])
        tree = self._priorities.tree.nbytes if self._priorities is not None else 0
        return sum(t.numel() * t.element_size() for t in tensors) + tree

    @property
    def bytes_per_transition(self) -> float:
        return self.nbytes / self.capacity

    # --- writing ---
    def add(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
            terminated: torch.Tensor, valid: np.ndarray) -> None:
        """Write one vector step ([num_envs, ...] inputs) or S of them ([S, num_envs, ...]).

        `obs[i]` is what env i acted on with `actions[i]`; `valid[i]` is False when that step was
        an auto-reset step (not a real transition). Bookkeeping is vectorized over the S steps, so
        a rollout chunk costs about as much as one step."""
        valid = np.asarray(valid, dtype=bool)
        if valid.ndim == 1:
            self._add_step(obs, actions, rewards, terminated, valid)
        else:
            self._add_chunk(obs, actions, rewards, terminated, valid)

    def _add_chunk(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                   terminated: torch.Tensor, valid: np.ndarray) -> None:
        num_steps, n = valid.shape[0], self.num_envs
        most = self.steps - self._lead - self.n_step
        if num_steps > most:
            # (the rows the chunk completes, or their stacks, would be overwritten by the chunk itself)
            raise ValueError(f"a chunk of {num_steps} steps needs a buffer of more than "
                             f"{num_steps + self._lead + self.n_step - 1} steps per env; this one has {self.steps}")
        valid = valid.reshape(num_steps, n)
        slots = (self._slot + np.arange(num_steps)) % self.steps
        removed = self._drop_slots((slots + self._lead) % self.steps)
        history = None
        if self.frame_stack > 1:
            starts = ~np.concatenate([self._previous_valid()[None], valid[:-1]])
            history, resets = self._history_block(obs, starts)
        self._write_chunk(self._slot, num_steps, obs, actions, rewards, terminated, valid, history)
        if history is not None and self._host:
            self._check_started_stacks(obs, starts & ~resets, history, slots)
        self._valid_history[slots] = valid

        # Rows become sampleable n steps after they were written (their window is then complete).
        first_done = self._written_steps - self.n_step
        done_times = np.arange(max(first_done, 0), first_done + num_steps)
        added = None
        if len(done_times):
            done_slots = done_times % self.steps
            done_valid = self._valid_history[done_slots]
            counts = done_valid.sum(axis=1)
            if self._host or not done_valid.all():
                new_rows = (done_slots[:, None] + self._env_base[None, :])[done_valid]
                added = torch.from_numpy(new_rows).to(self.device, non_blocking=True)
                self._append_sampleable(new_rows if self._host else added)
            else:
                slot_ids = (torch.arange(len(done_slots), device=self.device) + int(done_slots[0])) % self.steps
                added = (slot_ids[:, None] + self._env_base_t[None, :]).reshape(-1)
                self._append_sampleable(added)
            self._count_per_slot[done_slots] = counts
        self._update_priorities_of(removed, added)
        self._slot = int((self._slot + num_steps) % self.steps)
        self._written_steps += num_steps

    def _add_step(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                  terminated: torch.Tensor, valid: np.ndarray) -> None:
        """`add` of one vector step, the trainer's every-step call: the same bookkeeping as a chunk
        of one, in scalar and slice operations (a vector step of 8 envs is a few us, not ~40)."""
        slot, n = self._slot, self.num_envs
        removed = self._drop_slot((slot + self._lead) % self.steps if self._lead else slot)
        history = None
        if self.frame_stack > 1:
            starts = ~self._previous_valid()[None]
            history, resets = self._history_block(obs, starts)
        self._write_step(slot, obs, actions, rewards, terminated, valid, history)
        if history is not None and self._host:
            self._check_started_stacks(obs, starts & ~resets, history, np.array([slot]))
        self._valid_history[slot] = valid
        added = None
        if self._written_steps >= self.n_step:  # the row n steps back now has its whole window
            done = slot - self.n_step if slot >= self.n_step else slot - self.n_step + self.steps
            done_valid = self._valid_history[done]
            all_valid = np.count_nonzero(done_valid) == n  # ~10x cheaper than ndarray.all() here
            if self._host:
                new_rows = self._env_base + done if all_valid else self._env_base[done_valid] + done
                self._append_sampleable(new_rows)
                added = torch.from_numpy(new_rows) if self._priorities is not None else None
            else:
                new_rows = (self._env_base_t + done if all_valid
                            else torch.from_numpy(self._env_base[done_valid] + done).to(self.device, non_blocking=True))
                self._append_sampleable(new_rows)
                added = new_rows
            self._count_per_slot[done] = len(new_rows)
        self._update_priorities_of(removed, added)
        self._slot = slot + 1 if slot + 1 < self.steps else 0
        self._written_steps += 1

    def _previous_valid(self) -> np.ndarray:
        """Whether each env's previous row was a real transition (False before the first row)."""
        if self._written_steps == 0:
            return np.zeros(self.num_envs, dtype=bool)
        return self._valid_history[self._slot - 1]

    def _mirror_columns(self, slot: int) -> list[int]:
        """Stream columns other than the slot's own that mirror time slot `slot`."""
        columns = []
        if slot < self.n_step:
            columns.append(self._lead + self.steps + slot)
        if slot >= self.steps - self._lead:
            columns.append(slot - (self.steps - self._lead))
        return columns

    def _column_runs(self, first_slot: int, num_steps: int) -> list[tuple[int, int, int]]:
        """(first stream column, first step, end step) of each run of consecutive columns that
        steps first_slot .. first_slot + num_steps - 1 (wrapping) are written to, mirrors included."""
        runs, i = [], 0
        steps, lead = self.steps, self._lead
        while i < num_steps:
            slot = (first_slot + i) % steps
            length = min(num_steps - i, steps - slot)
            runs.append((lead + slot, i, i + length))
            end = min(slot + length, self.n_step)  # trailing mirrors of slots 0 .. n_step-1
            if slot < end:
                runs.append((lead + steps + slot, i, i + end - slot))
            begin = max(slot, steps - lead)  # leading mirrors of the last `lead` slots
            if begin < slot + length:
                runs.append((begin - (steps - lead), i + begin - slot, i + length))
            i += length
        return runs

    def _write_step(self, slot: int, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                    terminated: torch.Tensor, valid: np.ndarray, history) -> None:
        """Write time slot `slot` of every env stream (and the columns mirroring it)."""
        n, column = self.num_envs, self._lead + slot
        stored = self._stored_part(obs, (n,))
        if not self._host:
            block = self._scalar_block(rewards, terminated, actions, valid, history, (n,))
            for col in [column, *self._mirror_columns(slot)]:
                self._obs_streams[:, col] = stored
                self._scalar_streams[:, col] = block
            return
        # numpy views and reshapes: ~0.1 us each against ~1 us for torch's
        self._obs_streams[:, column] = stored
        scalars = self._scalar_streams[:, column]
        scalars[:, 0] = rewards.numpy().reshape(n)
        scalars[:, 1] = terminated.numpy().reshape(n)
        scalars[:, 2: 2 + self._act_size] = actions.numpy().reshape(n, -1)
        if self._real_col is not None:
            scalars[:, self._real_col] = valid
        if self._history_col is not None:
            scalars[:, self._history_col] = history[0]
        for col in self._mirror_columns(slot):
            self._obs_streams[:, col] = self._obs_streams[:, column]
            self._scalar_streams[:, col] = scalars

    def _write_chunk(self, first_slot: int, num_steps: int, obs: torch.Tensor, actions: torch.Tensor,
                     rewards: torch.Tensor, terminated: torch.Tensor, valid: np.ndarray, history) -> None:
        lead = (num_steps, self.num_envs)
        stored = self._stored_part(obs, lead)
        if self._host:
            block = np.empty((*lead, self._scalar_streams.shape[-1]), dtype=np.float32)
            block[..., 0] = rewards.numpy().reshape(lead)
            block[..., 1] = terminated.numpy().reshape(lead)
            block[..., 2: 2 + self._act_size] = actions.numpy().reshape(*lead, -1)
            if self._real_col is not None:
                block[..., self._real_col] = valid
            if self._history_col is not None:
                block[..., self._history_col] = history
        else:
            block = self._scalar_block(rewards, terminated, actions, valid, history, lead)
        for column, i, end in self._column_runs(first_slot, num_steps):
            self._obs_streams[:, column: column + end - i] = stored[i:end].swapaxes(0, 1)
            self._scalar_streams[:, column: column + end - i] = block[i:end].swapaxes(0, 1)

    def _stored_part(self, obs: torch.Tensor, lead: tuple[int, ...]):
        """What rows keep of `obs` [*lead, *obs_shape]: the whole observation, or the newest frame of
        its stack; numpy on host views."""
        obs = obs.numpy() if self._host else obs
        if self.frame_stack == 1:
            return obs.reshape(*lead, self._obs_size)
        return obs.reshape(*lead, self.frame_stack, self._frame_size)[..., -1, :]

    def _scalar_block(self, rewards: torch.Tensor, terminated: torch.Tensor, actions: torch.Tensor,
                      valid: np.ndarray, history: torch.Tensor | None, lead: tuple[int, ...]) -> torch.Tensor:
        """[*lead, scalar width] float32 on the device, for the torch-view writes."""
        parts = [rewards.reshape(*lead, 1).float(), terminated.reshape(*lead, 1).float(),
                 actions.reshape(*lead, -1).float()]
        if self._real_col is not None:
            if np.count_nonzero(valid) != valid.size:  # some env's step was not a real transition
                parts.append(torch.from_numpy(valid.reshape(*lead, 1).astype(np.float32)).to(self.device))
            else:
                parts.append(self._real_ones if lead == (self.num_envs,) else
                             torch.ones((*lead, 1), device=self.device))
        if history is not None:
            parts.append(history.reshape(*lead, 1).float())
        return torch.cat(parts, dim=-1)

    def _history_block(self, obs: torch.Tensor, starts: np.ndarray) -> tuple:
        """Stack history lengths [c, N] of c steps of stacks, and where the stack was reset;
        `starts` [c, N]: rows whose previous row was not a real transition (or that are the first),
        the only rows where a reset can happen."""
        lead = starts.shape
        any_start = bool(starts.any())
        if self._host:
            resets = np.zeros(lead, dtype=bool)
            if any_start:
                stacks = obs.numpy().reshape(*lead, self.frame_stack, self._frame_size)
                resets[starts] = repeats_one_frame(stacks[starts])
        elif any_start:
            stacks = obs.reshape(*lead, self.frame_stack, self._frame_size)
            resets = repeats_one_frame(stacks) & torch.from_numpy(starts).to(self.device)
        else:
            resets = torch.zeros(lead, dtype=torch.bool, device=self.device)
        history = history_lengths(self._stack_history, resets, self.frame_stack)
        self._stack_history = history[-1].copy() if self._host else history[-1]
        return history, resets

    def _check_started_stacks(self, obs: torch.Tensor, continued: np.ndarray, history: np.ndarray,
                              slots: np.ndarray) -> None:
        """Host views only (a device check would sync): a row that starts an episode without a reset
        stack (`continued`, [c, N]) must continue the stack stored before it, as envpool's stack does
        after a life lost. Anything else (zero padding, a first row that is no reset) could not be
        rebuilt: refuse it."""
        steps, envs = np.nonzero(continued)
        if len(steps) == 0:
            return
        rows = torch.from_numpy(slots[steps] + self._env_base[envs])
        ids = frame_rows(rows, torch.from_numpy(history[steps, envs]), self.frame_stack).numpy()
        rebuilt = self._frames_np[ids]
        given = obs.numpy().reshape(*continued.shape, self.frame_stack, self._frame_size)[steps, envs]
        bad = ~(rebuilt == given).reshape(len(steps), -1).all(axis=1)
        if bad.any():
            raise ValueError(f"frame_stack={self.frame_stack}: env {int(envs[bad][0])} started an episode with a "
                             "stack that neither repeats one frame nor continues its previous stack; only "
                             "stacks built as envpool's Atari builds them can be stored one frame per row")

    def _drop_slot(self, slot: int) -> torch.Tensor | None:
        """Make the rows of time slot `slot` unsampleable: they are the oldest ring entries."""
        dropped = int(self._count_per_slot[slot])
        if not dropped:
            return None
        return self._drop(dropped, [slot])

    def _drop_slots(self, slots: np.ndarray) -> torch.Tensor | None:
        dropped = int(self._count_per_slot[slots].sum())
        return self._drop(dropped, slots) if dropped else None

    def _drop(self, dropped: int, slots) -> torch.Tensor | None:
        start = self._head
        self._head = (self._head + dropped) % self.capacity
        self._size -= dropped
        self._count_per_slot[slots] = 0
        # The dropped rows, for their priorities: ring entries the appends after this cannot reach.
        return self._ring[start: start + dropped] if self._priorities is not None else None

    def _append_sampleable(self, new_rows) -> None:
        """Append row ids (numpy on host views, else a device tensor) to the ring, in two slices
        (four when they wrap): no index arrays."""
        n = len(new_rows)
        if n == 0:
            return
        start = (self._head + self._size) % self.capacity
        first = min(n, self.capacity - start)
        ring, cap = self._ring_w, self.capacity
        ring[start: start + first] = new_rows[:first]
        ring[start + cap: start + cap + first] = new_rows[:first]
        if first < n:
            ring[: n - first] = new_rows[first:]
            ring[cap: cap + n - first] = new_rows[first:]
        self._size += n

    def _update_priorities_of(self, removed: torch.Tensor | None, added: torch.Tensor | None) -> None:
        if self._priorities is None or (removed is None and added is None):
            return
        empty = self._ring[:0]
        self._priorities.replace(empty if removed is None else removed, empty if added is None else added)

    # --- sampling ---
    def sample_rows(self, num_batches: int, batch_size: int) -> torch.Tensor:
        """Row ids [num_batches, batch_size], uniform over sampleable rows with replacement (or, when
        prioritized, in proportion to their priorities)."""
        return self._draw_rows(num_batches * batch_size).view(num_batches, batch_size)

    def _draw_rows(self, n: int) -> torch.Tensor:
        if self._size == 0:
            raise RuntimeError("sample() on a replay buffer with no complete transition")
        if self._priorities is not None:
            return self._priorities.sample(n, self.generator)
        draw = torch.randint(self._head, self._head + self._size, (n,), generator=self.generator, device=self.device)
        return self._ring.index_select(0, draw)

    def gather(self, rows: torch.Tensor) -> Batch:
        """The transitions (n-step, with frame stacks rebuilt, as built) at `rows` ([B] or [k, B])."""
        if self.n_step == 1 and self.frame_stack == 1:
            return self._gather_pairs(rows)
        lead = rows.shape
        flat = rows.reshape(-1)
        size = flat.shape[0]
        window = self._windows.index_select(0, flat)  # [B, n, scalars]
        first = window[:, 0]
        actions = first[:, 2: 2 + self._act_size]
        if self.n_step > 1:
            rewards, discount, terminated, steps = nstep_targets(
                window[..., 0], window[..., 1], window[..., self._real_col], self._gamma_powers)
        else:
            rewards, terminated, discount, steps = first[:, 0], first[:, 1], None, None
        if self.frame_stack > 1:
            stack, history = self.frame_stack, first[:, self._history_col].long()
            if steps is None:  # the next stack is this one shifted by one frame: stack + 1 frames
                ids = frame_rows(flat, history, stack, stack + 1)
                frames = self.frames.index_select(0, ids.reshape(-1)).view(size, stack + 1, self._frame_size)
                obs, next_obs = frames[:, :stack], frames[:, 1:]
            else:  # inside one episode the history grows by one a row
                ids = torch.cat([frame_rows(flat, history, stack),
                                 frame_rows(flat + steps, torch.clamp(history + steps, max=stack - 1), stack)], dim=-1)
                frames = self.frames.index_select(0, ids.reshape(-1)).view(size, 2 * stack, self._frame_size)
                obs, next_obs = frames[:, :stack], frames[:, stack:]
        else:
            both = self.frames.index_select(0, torch.cat([flat, flat + steps]))
            obs, next_obs = both[:size, : self._obs_size], both[size:, : self._obs_size]
        obs, next_obs = obs.reshape(*lead, *self.obs_shape), next_obs.reshape(*lead, *self.obs_shape)
        fields = [rewards, terminated] + ([discount] if discount is not None else [])
        fields = [f.view(lead) for f in fields]
        return Batch(obs, actions.reshape(*lead, *self.action_shape), fields[0], next_obs, fields[1],
                     discount=fields[2] if discount is not None else None)

    def _gather_pairs(self, rows: torch.Tensor) -> Batch:
        lead = rows.shape
        stacked = len(lead) != 1  # [k, B] rows: the gathered rows get their leading dims back
        flat = rows.reshape(-1) if stacked else rows
        pairs = self._pairs.index_select(0, flat)
        scalars = None if self._packed else self.scalars.index_select(0, flat)
        return self._split_pairs(pairs, scalars, lead)

    def _split_pairs(self, pairs: torch.Tensor, scalars: torch.Tensor | None, lead: torch.Size) -> Batch:
        """The Batch of gathered pairs ([prod(lead), pair width]; and the scalar rows when they
        are not packed), with leading dims `lead`."""
        stacked = len(lead) != 1
        if stacked:
            pairs = pairs.view(*lead, self._pair_width)
        d, a = self._obs_size, self._act_size
        # One split_with_sizes and one unbind: each torch call here costs ~1-3 us warm and ~10 us in
        # the training loop's cold caches, so the fields come out of the fewest calls.
        if self._packed:
            obs, reward_terminated, actions, next_obs = pairs.split_with_sizes([d, 2, a, d], dim=-1)
        else:
            obs, next_obs = pairs.split_with_sizes([d, d], dim=-1)
            if stacked:
                scalars = scalars.view(*lead, 2 + a)
            reward_terminated, actions = scalars.split_with_sizes([2, a], dim=-1)
        rewards, terminated = reward_terminated.unbind(-1)
        if len(self.obs_shape) != 1:
            obs, next_obs = obs.view(*lead, *self.obs_shape), next_obs.view(*lead, *self.obs_shape)
        if self.action_shape != (a,):  # discrete actions: () per transition
            actions = actions.view(*lead, *self.action_shape)
        return Batch(obs, actions, rewards, next_obs, terminated)

    def _prioritized_batch(self, num_batches: int, batch_size: int, beta: float | torch.Tensor | None,
                           stacked: bool) -> Batch:
        """The rows drawn as by sample_rows, their transitions, weights and row ids; [batch_size]
        fields unless `stacked`."""
        if beta is None:
            raise ValueError("sample: a prioritized buffer needs beta, the importance-weight exponent (anneal it "
                             "from ~0.4 to 1)")
        if self._size == 0:
            raise RuntimeError("sample() on a replay buffer with no complete transition")
        shape = (num_batches, batch_size) if stacked else (batch_size,)
        if self._pair_storage is not None:
            rows, weights, pairs = self._priorities.sample_pairs(shape, self.generator, beta, self._pair_storage,
                                                                 self._row_width, self._pair_width)
            batch = self._split_pairs(torch.from_numpy(pairs), None, rows.shape)
        else:
            rows, weights = self._priorities.sample_weighted(shape, self.generator, beta)
            batch = self.gather(rows)
        batch.weights, batch.indices = weights, rows
        return batch

    def sample(self, num_batches: int, batch_size: int, beta: float | torch.Tensor | None = None) -> Batch:
        """k mini-batches at once: every tensor has leading dims [num_batches, batch_size]. `beta`:
        the importance-weight exponent, needed (only) by a prioritized buffer."""
        if self._priorities is not None:
            return self._prioritized_batch(num_batches, batch_size, beta, stacked=True)
        return self.gather(self.sample_rows(num_batches, batch_size))

    def sample_batches(self, num_batches: int, batch_size: int,
                       beta: float | torch.Tensor | None = None) -> list[Batch]:
        """The same k mini-batches (same draw, same rows) as a list of [batch_size] batches; for k = 1
        without the stacked dimension, whose views and unbind would cost more than the gather."""
        if num_batches == 1:
            if self._priorities is not None:
                return [self._prioritized_batch(1, batch_size, beta, stacked=False)]
            return [self.gather(self._draw_rows(batch_size))]
        return self.sample(num_batches, batch_size, beta).unbind()

    def update_priorities(self, indices: torch.Tensor, td_errors: torch.Tensor) -> None:
        """Set the priorities of the rows `indices` (a Batch's `indices`) to (|td_errors| + eps)^alpha.
        Rows no longer sampleable since they were drawn keep priority 0. Call it before the
        next `add` (which may overwrite drawn rows with new transitions); no host sync."""
        if self._priorities is None:
            raise RuntimeError("update_priorities: this replay buffer was built with prioritized=False")
        self._priorities.update(indices, td_errors)

    def priorities(self, rows: torch.Tensor) -> torch.Tensor:
        """The priorities (p^alpha, float64) of `rows`: 0 for rows that cannot be sampled."""
        if self._priorities is None:
            raise RuntimeError("priorities: this replay buffer was built with prioritized=False")
        return self._priorities.tree.values(rows)

    def sampleable_rows(self) -> torch.Tensor:
        """Every sampleable row id, oldest first (for tests and inspection)."""
        return self._ring[self._head: self._head + self._size]

    # --- checkpointing: the host-side bookkeeping travels with the tensors ---
    def state_dict(self) -> dict:
        state = {
            "frames": self.frames, "scalars": self.scalars if self.scalars is not None else torch.empty(0),
            "ring": self._ring, "head": self._head, "size": self._size,
            "count_per_slot": torch.from_numpy(self._count_per_slot.copy()), "slot": self._slot,
            "written_steps": self._written_steps, "valid_history": torch.from_numpy(self._valid_history.copy()),
            "generator": self.generator.get_state(),
        }
        if self.frame_stack > 1:
            state["stack_history"] = torch.as_tensor(self._stack_history).clone()
        if self._priorities is not None:
            state["priority_tree"] = self._priorities.tree.tree
            state["max_priority"] = self._priorities.max_priority
        return state

    def load_state_dict(self, state: dict) -> None:
        self.frames.copy_(state["frames"])
        if self.scalars is not None:
            self.scalars.copy_(state["scalars"])
        self._ring.copy_(state["ring"])
        self._head, self._size = int(state["head"]), int(state["size"])
        self._count_per_slot = state["count_per_slot"].numpy().copy()
        self._slot, self._written_steps = int(state["slot"]), int(state["written_steps"])
        if "valid_history" in state:
            self._valid_history = state["valid_history"].numpy().copy()
        else:  # written before n-step replay: only the newest row's flags, all one-step replay reads
            self._valid_history[:] = False
            if self._written_steps:
                self._valid_history[self._slot - 1] = state["prev_valid"].numpy()
        if self.frame_stack > 1:
            history = state["stack_history"]
            self._stack_history = history.numpy().copy() if self._host else history.to(self.device).clone()
        if self._priorities is not None:
            self._priorities.tree.load(state["priority_tree"])
            self._priorities.max_priority.copy_(state["max_priority"])
        self.generator.set_state(state["generator"])
