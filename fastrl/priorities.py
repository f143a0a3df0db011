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
update and a draw never read a value back to the host. On the numba tree the same arithmetic runs
in `fastrl.sum_tree_kernels` (bit-identical results, fewer calls), with only the powers in torch.
"""

from __future__ import annotations

import math

import numpy as np
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
        self._kernels = None
        if self.tree.backend == "numba":
            self._kernels = self.tree._kernels
            self._max_np = self.max_priority.view(1).numpy()  # stays valid: loads copy in place
            self._scratch_arrays: dict[str, tuple[torch.Tensor, np.ndarray]] = {}

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

    def weights(self, rows: torch.Tensor, count: int, beta: float | torch.Tensor) -> torch.Tensor:
        """Importance weights of `rows` ([..., B]), normalized over each mini-batch (last dim)."""
        if self._kernels is None:
            return importance_weights(self.tree.values(rows), self.tree.total(), count, beta)
        flat = rows.reshape(-1).numpy()
        bases = np.empty(flat.shape[0], dtype=np.float64)
        self._kernels.weight_bases(self.tree._tree_np, flat, self.tree.first_leaf, count, bases)
        torch.from_numpy(bases).pow_(-beta)
        return self._normalize(bases, rows.shape)

    def sample_weighted(self, shape: tuple[int, ...], generator: torch.Generator, count: int,
                        beta: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sample(prod(shape)) as rows of `shape` ([..., B]), and their weights: on the numba tree,
        the draw and the weights' bases in one pass."""
        if self._kernels is None:
            rows = self.sample(math.prod(shape), generator).view(shape)
            return rows, self.weights(rows, count, beta)
        rows, powered = self._draw_powered(math.prod(shape), generator, count, beta)
        return torch.from_numpy(rows.reshape(shape)), self._normalize(powered, shape)

    def sample_pairs(self, shape: tuple[int, ...], generator: torch.Generator, count: int, beta: float | torch.Tensor,
                     storage: np.ndarray, row_width: int, pair_width: int
                     ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """sample_weighted, and the drawn rows' pairs (the pair_width values from row r's first) of
        a packed buffer's `storage` (flat, `row_width` values a row) as [prod(shape), pair_width]:
        the draw and the weights as sample_weighted makes them, the gather in the same numba call
        as the weights' normalization. Numba tree only."""
        n = math.prod(shape)
        rows, powered = self._draw_powered(n, generator, count, beta)
        weights = np.empty(n, dtype=np.float32)
        pairs = np.empty(n * pair_width, dtype=storage.dtype)
        self._kernels.weights_and_pairs(powered, shape[-1], weights, storage, row_width, pair_width, rows, pairs)
        return (torch.from_numpy(rows.reshape(shape)), torch.from_numpy(weights.reshape(shape)),
                pairs.reshape(n, pair_width))

    def _draw_powered(self, n: int, generator: torch.Generator, count: int, beta: float | torch.Tensor
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Numba tree: n drawn rows, and their weights' bases raised to -beta (not yet normalized).
        The power stays in torch, as on the torch tree."""
        uniforms, uniforms_np = self._scratch("uniforms", n)
        uniforms.uniform_(generator=generator)  # torch.rand's numbers, without its allocation
        bases, bases_np = self._scratch("bases", n)
        rows = np.empty(n, dtype=np.int64)
        self._kernels.draw_with_bases(self.tree._tree_np, uniforms_np, self.tree.offsets, count, rows, bases_np)
        bases.pow_(-beta)
        return rows, bases_np

    def _scratch(self, name: str, n: int) -> tuple[torch.Tensor, np.ndarray]:
        """A float64 array of n values held between calls, as a tensor and as its numpy view: the
        numba tree's intermediates, each used up within the call that fills it."""
        held = self._scratch_arrays.get(name)
        if held is None or held[1].shape[0] != n:
            array = torch.empty(n, dtype=torch.float64)
            held = self._scratch_arrays[name] = (array, array.numpy())
        return held

    def _normalize(self, powered: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
        """importance_weights from its powered bases (flat): each mini-batch's over its largest."""
        out = np.empty(powered.shape[0], dtype=np.float32)
        self._kernels.normalize_weights(powered, shape[-1], out)
        return torch.from_numpy(out.reshape(shape))

    def update(self, rows: torch.Tensor, td_errors: torch.Tensor) -> None:
        """p = (|td| + eps)^alpha for rows still sampleable; a row dropped since it was drawn
        (its priority is 0) stays at 0."""
        rows = rows.reshape(-1) if rows.dim() != 1 else rows
        td = td_errors.detach() if td_errors.requires_grad else td_errors
        td = td.reshape(-1) if td.dim() != 1 else td
        if self._kernels is not None:
            if td.dtype not in (torch.float32, torch.float64):
                td = td.to(torch.float64)  # exact, as the float64 cast below
            new, new_np = self._scratch("priorities", td.shape[0])
            self._kernels.td_bases(td.numpy(), self.eps, new_np)
            new.pow_(self.alpha)
            self._kernels.set_priorities(self.tree._tree_np, rows.numpy(), new_np, self.tree.offsets,
                                         self.tree.level_nodes, self._max_np)
            return
        new = (td.to(torch.float64).abs() + self.eps).pow(self.alpha)
        new = torch.where(self.tree.values(rows) > 0, new, 0.0)
        torch.maximum(self.max_priority, new.max(), out=self.max_priority)
        self.tree.update(rows, new)
