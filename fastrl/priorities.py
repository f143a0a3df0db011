"""Proportional prioritized replay (Schaul et al., 2016) over a buffer's rows.

Row i is drawn with probability P(i) = p_i / sum_j p_j, where p_i = (|delta_i| + eps)^alpha after
its TD error delta_i was last reported, and the running maximum of all p reported so far (1 at
the start) when it was written and not yet reported. Rows that cannot be sampled hold p = 0.
Every draw is independent (with replacement), one uniform number per sample.

Importance weights w_i = (N * P(i))^-beta with N the number of sampleable rows, divided by the
largest w of the mini-batch, so that they only ever scale an update down. The batch max, not the
buffer max (baselines' choice, which needs a second, min tree): it costs nothing, and the weights
of a batch do not collapse towards 0 because one row somewhere in the buffer has a tiny priority.

Everything stays on the tree's device: the maximum priority is a device scalar, a priority
update and a draw never read a value back to the host.
"""

from __future__ import annotations

import torch

from fastrl.sum_tree import SumTree


def importance_weights(priorities: torch.Tensor, total: torch.Tensor, count: int, beta: float | torch.Tensor
                       ) -> torch.Tensor:
    """float32 weights of the same shape as `priorities` ([..., B]): (count * p / total)^-beta,
    normalized by their maximum over the last dim (each mini-batch)."""
    w = (count * priorities / total).pow(-beta)
    return (w / w.amax(dim=-1, keepdim=True)).to(torch.float32)


class Priorities:
    def __init__(self, num_rows: int, device: torch.device, alpha: float, eps: float, backend: str = "auto"):
        self.alpha, self.eps = float(alpha), float(eps)
        self.tree = SumTree(num_rows, device, backend)
        self.max_priority = torch.ones((), dtype=torch.float64, device=device)

    def replace(self, removed: torch.Tensor, added: torch.Tensor) -> None:
        """`removed` rows can no longer be sampled (priority 0); `added` rows now can, at the
        maximum priority. One tree update for both."""
        if added.numel() == 0 and removed.numel() == 0:
            return
        leaves = torch.cat([removed, added])
        values = torch.cat([torch.zeros(removed.shape, dtype=torch.float64, device=self.max_priority.device),
                            self.max_priority.expand(added.shape)])
        self.tree.update(leaves, values)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(n, dtype=torch.float64, generator=generator, device=self.max_priority.device)
        return self.tree.find(u * self.tree.total())

    def weights(self, rows: torch.Tensor, count: int, beta: float | torch.Tensor) -> torch.Tensor:
        return importance_weights(self.tree.values(rows), self.tree.total(), count, beta)

    def update(self, rows: torch.Tensor, td_errors: torch.Tensor) -> None:
        """p = (|td| + eps)^alpha for rows still sampleable; a row dropped since it was drawn
        (its priority is 0) stays at 0."""
        rows = rows.reshape(-1)
        new = (td_errors.detach().reshape(-1).to(torch.float64).abs() + self.eps).pow(self.alpha)
        new = torch.where(self.tree.values(rows) > 0, new, 0.0)
        torch.maximum(self.max_priority, new.max(), out=self.max_priority)
        self.tree.update(rows, new)
