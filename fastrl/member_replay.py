"""Replay for stacked members: one `ReplayBuffer` per member, each with its own env streams,
generator (seeded as a single-agent run of the member's seed seeds its buffer) and discount, behind
the interface the train loop uses. Member e's envs are rows [e n, (e + 1) n) of every vector step;
its mini-batches come out at [e] of a batch [E, B, ...]."""

from __future__ import annotations


import numpy as np
import torch

from fastrl.buffer import Batch, ReplayBuffer


def stack_batches(batches: list[Batch], dim: int) -> Batch:
    """The members' batches stacked on a new member axis `dim`."""
    fields = [b._fields() for b in batches]
    return Batch(*(None if column[0] is None else torch.stack(column, dim) for column in zip(*fields)))


class MemberReplay:
    def __init__(self, buffers: list[ReplayBuffer]):
        self.buffers = buffers
        self.envs_per_member = buffers[0].num_envs

    def __len__(self) -> int:
        """Transitions every member can sample (the loop trains once each has some)."""
        return min(len(b) for b in self.buffers)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buffers)

    @property
    def bytes_per_transition(self) -> float:
        return self.nbytes / sum(b.capacity for b in self.buffers)

    def add(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, terminated: torch.Tensor,
            valid: np.ndarray) -> None:
        """One vector step of all members' envs ([E * n, ...])."""
        n = self.envs_per_member
        valid = np.asarray(valid, dtype=bool)
        for e, b in enumerate(self.buffers):
            rows = slice(e * n, (e + 1) * n)
            b.add(obs[rows], actions[rows], rewards[rows], terminated[rows], valid[rows])

    def sample_batches(self, num_batches: int, batch_size: int, beta: float | None = None) -> list[Batch]:
        """k mini-batches of [E, B, ...]: member e's k draws come from its own buffer and generator."""
        if num_batches == 1:
            return [stack_batches([b.sample_batches(1, batch_size, beta)[0] for b in self.buffers], 0)]
        return stack_batches([b.sample(num_batches, batch_size, beta) for b in self.buffers], 1).unbind()

    def update_priorities(self, indices: torch.Tensor, td_errors: torch.Tensor) -> None:
        for b, rows, errors in zip(self.buffers, indices, td_errors, strict=True):
            b.update_priorities(rows, errors)

    def state_dict(self) -> dict:
        return {"members": [b.state_dict() for b in self.buffers]}

    def load_state_dict(self, state: dict) -> None:
        for b, saved in zip(self.buffers, state["members"], strict=True):
            b.load_state_dict(saved)


