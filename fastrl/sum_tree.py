"""A sum tree over non-negative leaf values: draw leaves with probability proportional to their
value, and change any set of leaves, in O(log n) per sample or change.

Layout: one float64 tensor of 2P nodes, P = the number of leaves rounded up to a power of two.
Node 1 is the root, node i has the children 2i and 2i + 1, leaf j is node P + j (node 0 is unused).
Each inner node is exactly fl(left + right) of its two children as they are now: a change re-sums
the paths from the changed leaves to the root instead of adding deltas, so no rounding drift
builds up, and every backend holds a bit-identical tree after the same operations. float64
because in float32 a tree over a million leaves cannot tell a leaf of 1e-6 from nothing.

A draw descends from the root with u uniform in [0, total): at a node it goes right when
u >= the left child's sum and the right child's sum is positive (then u -= the left sum), else
left. The positivity test means that rounding can never land a draw on a leaf of value 0 (a
buffer row that must not be sampled): a node with a positive sum always has a positive child on
the side taken.

Backends, one algorithm:
- "numba": loops jitted by numba (`fastrl.sum_tree_kernels`) on the tree's numpy view, level by
  level over all samples like the torch backend but without its temporaries; CPU only. The
  default on CPU.
- "torch": vectorized over all samples, level by level, in torch ops on the tree's own device:
  a draw or a change never syncs with the host. The default on any other device; runs on CPU too.
- "numpy": the torch backend's vectorized code on the numpy view (a reference, and the figure
  that shows what numba buys); CPU only.
"""

from __future__ import annotations

import numpy as np
import torch

BACKENDS = ("auto", "numba", "torch", "numpy")


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"sum tree backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "numba" if device.type == "cpu" else "torch"
    if backend in ("numba", "numpy") and device.type != "cpu":
        raise ValueError(f"sum tree backend {backend!r} runs on the CPU only; the device is {device}")
    return backend


class SumTree:
    def __init__(self, num_leaves: int, device: torch.device | str = "cpu", backend: str = "auto"):
        self.device = torch.device(device)
        self.backend = resolve_backend(backend, self.device)
        self.depth = max(1, int(num_leaves - 1).bit_length())
        self.first_leaf = 1 << self.depth  # P: leaf j is node P + j
        self.tree = torch.zeros(2 * self.first_leaf, dtype=torch.float64, device=self.device)
        self._tree_np = self.tree.numpy() if self.backend != "torch" else None
        self._pairs = (self._tree_np if self._tree_np is not None else self.tree).reshape(-1, 2)  # [p] = children of p
        if self.backend == "numba":
            from fastrl import sum_tree_kernels  # numba: only here, at first use

            self._kernels = sum_tree_kernels

    @property
    def nbytes(self) -> int:
        return self.tree.numel() * self.tree.element_size()

    def total(self) -> torch.Tensor:
        """The sum of all leaves, a 0-d tensor on the device (no host sync)."""
        return self.tree[1]

    def values(self, leaves: torch.Tensor) -> torch.Tensor:
        """The leaf values at `leaves` (any shape)."""
        return self.tree[self.first_leaf + leaves]

    def find(self, u: torch.Tensor) -> torch.Tensor:
        """Leaf ids (int64, u's shape) of the draws u (float64 in [0, total))."""
        if self.backend == "numba":
            flat = u.reshape(-1).contiguous().numpy()
            out = np.empty(flat.shape[0], dtype=np.int64)
            self._kernels.find(self._tree_np, flat, self.depth, out)
            return torch.from_numpy(out).view(u.shape)
        if self.backend == "numpy":
            flat = u.reshape(-1).numpy()
            node = _descend(self._pairs, flat, np.ones(flat.shape[0], dtype=np.int64), self.depth)
            return torch.from_numpy(node - self.first_leaf).view(u.shape)
        node = torch.ones(u.shape, dtype=torch.int64, device=self.device)
        return _descend(self._pairs, u, node, self.depth) - self.first_leaf

    def draw(self, u: torch.Tensor) -> torch.Tensor:
        """Leaf ids (int64, 1-d) of the uniforms u (float64 in [0, 1), 1-d): find(u * total)."""
        if self.backend == "numba":
            out = np.empty(u.shape[0], dtype=np.int64)
            self._kernels.draw(self._tree_np, u.numpy(), self.depth, out)
            return torch.from_numpy(out)
        return self.find(u * self.total())

    def update(self, leaves: torch.Tensor, values: torch.Tensor) -> None:
        """Set leaves (int64, 1-d) to values (>= 0, 1-d); where a leaf repeats, its largest value
        wins (any rule would do; this one is deterministic on every backend)."""
        if leaves.numel() == 0:
            return
        values = values.to(torch.float64)
        if self.backend == "numba":
            self._kernels.update(self._tree_np, leaves.contiguous().numpy(), values.contiguous().numpy(), self.depth)
            return
        if self.backend == "numpy":
            nodes = leaves.numpy() + self.first_leaf
            self._tree_np[nodes] = 0.0
            np.maximum.at(self._tree_np, nodes, values.numpy())
            _resum(self._tree_np, self._pairs, nodes, self.depth)
            return
        nodes = leaves + self.first_leaf
        self.tree.index_fill_(0, nodes, 0.0)
        self.tree.scatter_reduce_(0, nodes, values, reduce="amax")
        _resum(self.tree, self._pairs, nodes, self.depth)


def _descend(pairs, u, node, depth: int):
    """All draws down the tree at once, one level per step; numpy arrays or torch tensors."""
    for _ in range(depth):
        children = pairs[node]
        left = children[..., 0]
        go_right = (u >= left) & (children[..., 1] > 0)
        u = u - left * go_right  # u - 0.0 when going left: the same float as not subtracting
        node = 2 * node + go_right
    return node


def _resum(tree, pairs, nodes, depth: int) -> None:
    """Re-sum the ancestors of `nodes` level by level (a parent reached twice gets the same sum
    twice); numpy arrays or torch tensors."""
    for _ in range(depth):
        nodes = nodes // 2
        tree[nodes] = pairs[nodes].sum(-1)
