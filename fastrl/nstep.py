"""n-step returns from an env's stream of rows, computed at sample time.

For a sampled row t, the window holds the n rows t .. t+n-1 of the same env stream. Transition
t+k (k >= 1) belongs to the return when every earlier one in the window did not terminate and row
t+k is a real transition (not an auto-reset or cut row: there the episode's last real transition
was t+k-1, whose next observation, row t+k, is the final one of the episode). With m the number of
transitions taken (1 <= m <= n):

    R = sum_{k<m} gamma^k r_{t+k},  discount = gamma^m,  bootstrap from obs_{t+m},
    terminated = whether transition t+m-1 terminated,

so the target is R + discount * (1 - terminated) * V(obs_{t+m}): a termination does not bootstrap,
a truncation (or a checkpoint cut) bootstraps from the episode's final observation.
"""

from __future__ import annotations

import torch


def gamma_powers(gamma: float, n: int, device: torch.device) -> torch.Tensor:
    """[gamma^0, ..., gamma^n] in float32, each power taken in float64 first."""
    return torch.tensor([gamma ** k for k in range(n + 1)], dtype=torch.float32, device=device)


def nstep_targets(rewards: torch.Tensor, terminated: torch.Tensor, real: torch.Tensor, powers: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """rewards, terminated, real: float32 [..., n] for rows t .. t+n-1 (real[..., 0], the sampled
    row, is taken as 1); powers: `gamma_powers(gamma, n)`.

    Returns (R, discount, terminated, m) of shape [...]: float32, float32, float32, int64."""
    n = rewards.shape[-1]
    continues = (1.0 - terminated[..., :-1]) * real[..., 1:]
    taken = torch.cat([torch.ones_like(rewards[..., :1]), continues], dim=-1).cumprod(dim=-1)
    returns = (taken * rewards * powers[:n]).sum(dim=-1)
    steps = taken.sum(dim=-1).long()
    return returns, powers[steps], (taken * terminated).sum(dim=-1), steps
