"""Proportional prioritized replay (Schaul et al., 2016) over a buffer's rows.

Row i is drawn with probability P(i) = p_i / sum_j p_j, where p_i = (|delta_i| + eps)^alpha after
its TD error delta_i was last reported, and the running maximum of all p reported so far (1 at
the start) when it was written and not yet reported. Rows that cannot be sampled hold p = 0.
Every draw is independent (with replacement), one uniform number per sample.

Importance weights w_i = (N * P(i))^-beta with N the number of sampleable rows, divided by the
largest w of the mini-batch, so that they only ever scale an update down. The batch max, not the
buffer max (baselines' choice, which needs a second, min tree): it costs nothing, and the weights
of a batch do not collapse towards 0 because one row somewhere in the buffer has a tiny priority.
The largest w is the smallest p's, so w_i / max w = (p_i / p_min)^-beta: N and the total cancel,
and the batch's smallest priority gets a weight of exactly 1.

Everything stays on the tree's device: the maximum priority is a device scalar, a priority
update and a draw never read a value back to the host. On the numba tree the same arithmetic runs
in `fastrl.sum_tree_kernels`, in fewer calls, with libm's pow for torch's (equal to within an ulp).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fastrl.sum_tree import SumTree


def importance_weights(priorities: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """float32 weights of the same shape as `priorities` ([..., B]): (N * P(i))^-beta normalized
    by their maximum over the last dim (each mini-batch), computed as (p / p_min)^-beta."""
    return (priorities / priorities.amin(dim=-1, keepdim=True)).pow(-beta).to(torch.float32)


class Priorities:
    def __init__(self, num_rows: int, device: torch.device, alpha: float, eps: float, backend: str = "auto"):
        self.alpha, self.eps = float(alpha), float(eps)
        self.tree = SumTree(num_rows, device, backend)
        self.max_priority = torch.ones((), dtype=torch.float64, device=device)
        self._kernels = None
        if self.tree.backend == "numba":
            self._kernels = self.tree._kernels
            self._max_np = self.max_priority.view(1).numpy()  # stays valid: loads copy in place
        # Numba tree: the uniforms of a draw and the priorities of an update, each used up within
        # the call that fills it, held between calls.
        self._held_uniforms: tuple[torch.Tensor, np.ndarray] | None = None
        self._new_priorities: np.ndarray | None = None

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
        return self.tree.draw(u)

    def weights(self, rows: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
        """Importance weights of `rows` ([..., B]), normalized over each mini-batch (last dim)."""
        if self._kernels is None:
            return importance_weights(self.tree.values(rows), beta)
        weights = np.empty(rows.numel(), dtype=np.float32)
        self._kernels.leaf_weights(self.tree._tree_np, rows.reshape(-1).numpy(), self.tree.first_leaf,
                                   rows.shape[-1], float(beta), weights)
        return torch.from_numpy(weights.reshape(rows.shape))

    def sample_weighted(self, shape: tuple[int, ...], generator: torch.Generator, beta: float | torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """sample(prod(shape)) as rows of `shape` ([..., B]), and their weights: on the numba tree,
        the draw and the weights in one call."""
        if self._kernels is None:
            rows = self.sample(math.prod(shape), generator).view(shape)
            return rows, self.weights(rows, beta)
        n = math.prod(shape)
        rows, weights = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.float32)
        self._kernels.draw_weighted(self.tree._tree_np, self._uniforms(n, generator), self.tree.offsets, shape[-1],
                                    float(beta), rows, weights)
        return torch.from_numpy(rows.reshape(shape)), torch.from_numpy(weights.reshape(shape))

    def sample_pairs(self, shape: tuple[int, ...], generator: torch.Generator, beta: float | torch.Tensor,
                     storage: np.ndarray, row_width: int, pair_width: int
                     ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """sample_weighted, and the drawn rows' pairs (the pair_width values from row r's first) of
        a packed buffer's `storage` (flat, `row_width` values a row) as [prod(shape), pair_width]:
        the draw, the weights and the gather in one numba call. Numba tree only."""
        n = math.prod(shape)
        rows, weights = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.float32)
        pairs = np.empty(n * pair_width, dtype=storage.dtype)
        self._kernels.draw_weighted_pairs(self.tree._tree_np, self._uniforms(n, generator), self.tree.offsets,
                                          shape[-1], float(beta), rows, weights, storage, row_width, pair_width,
                                          pairs)
        return (torch.from_numpy(rows.reshape(shape)), torch.from_numpy(weights.reshape(shape)),
                pairs.reshape(n, pair_width))

    def _uniforms(self, n: int, generator: torch.Generator) -> np.ndarray:
        """n of torch.rand's float64 uniforms from `generator` (as the torch tree draws them), in a
        held array: `uniform_` without torch.rand's allocation, and a numpy view made once."""
        held = self._held_uniforms
        if held is None or held[1].shape[0] != n:
            array = torch.empty(n, dtype=torch.float64)
            held = self._held_uniforms = (array, array.numpy())
        held[0].uniform_(generator=generator)
        return held[1]

    def update(self, rows: torch.Tensor, td_errors: torch.Tensor) -> None:
        """p = (|td| + eps)^alpha for rows still sampleable; a row dropped since it was drawn
        (its priority is 0) stays at 0."""
        rows = rows.reshape(-1) if rows.dim() != 1 else rows
        td = td_errors.detach() if td_errors.requires_grad else td_errors
        td = td.reshape(-1) if td.dim() != 1 else td
        if self._kernels is not None:
            if td.dtype not in (torch.float32, torch.float64):
                td = td.to(torch.float64)  # exact, as the float64 cast below
            if self._new_priorities is None or self._new_priorities.shape[0] != td.shape[0]:
                self._new_priorities = np.empty(td.shape[0], dtype=np.float64)
            self._kernels.set_priorities(self.tree._tree_np, rows.numpy(), td.numpy(), self.eps, self.alpha,
                                         self._new_priorities, self.tree.offsets, self.tree.level_nodes, self._max_np)
            return
        new = (td.to(torch.float64).abs() + self.eps).pow(self.alpha)
        new = torch.where(self.tree.values(rows) > 0, new, 0.0)
        torch.maximum(self.max_priority, new.max(), out=self.max_priority)
        self.tree.update(rows, new)
