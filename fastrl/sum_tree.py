"""A sum tree over non-negative leaf values: draw leaves with probability proportional to their
value, and change any set of leaves, in O(log n) per sample or change.

Layout: an 8-ary tree in one float64 tensor, stored level by level from the root. Level l holds
`level_nodes[l]` nodes from `offsets[l]`, padded with zeros to a multiple of 8; node j of level l
has the 8 children `offsets[l + 1] + 8j ...+ 7`. The root is element 0, leaf j is element
`first_leaf + j`. Eight float64 children are 64 bytes, one cache line (torch's CPU allocations
are 64-byte aligned and every level starts at a multiple of 8): a draw touches one line per level,
7 levels for a million leaves where a binary tree touches 20, and a tree of a million leaves
holds 9.1 MB instead of a binary tree's 16.8.

Each inner node is exactly the sequential float sum ((c0 + c1) + c2) + ... + c7 of its children as
they are now: a change re-sums the paths from the changed leaves to the root instead of adding
deltas, so no rounding drift builds up, and every backend holds a bit-identical tree after the
same operations. float64 because in float32 a tree over a million leaves cannot tell a leaf of
1e-6 from nothing.

A draw descends from the root with x uniform in [0, total). At a node whose children c have the
running sums p_k = c_0 + ... + c_k (added in that order), it takes the child j = the number of
k < 7 with x >= p_k, capped at the last positive child, and goes on with x - p_(j-1) (x itself for
j = 0). So rounding can never land a draw on a leaf of value 0 (a buffer row that must not be
sampled): uncapped, child j means p_(j-1) <= x < p_j, impossible when c_j = 0 (then p_j = p_(j-1)),
and the cap lands on a positive child.

Backends, one algorithm:
- "numba": loops jitted by numba (`fastrl.sum_tree_kernels`) on the tree's numpy view, level by
  level over all samples like the torch backend but without its temporaries; CPU only. The
  default on CPU.
- "torch": vectorized over all samples, level by level, in torch ops on the tree's own device:
  a draw or a change never syncs with the host. The default on any other device; runs on CPU too.
- "numpy": the torch backend's vectorized code in numpy (a reference, and the figure that shows
  what numba buys); CPU only.
"""

from __future__ import annotations

import numpy as np
import torch

BACKENDS = ("auto", "numba", "torch", "numpy")
FANOUT = 8


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"sum tree backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "numba" if device.type == "cpu" else "torch"
    if backend in ("numba", "numpy") and device.type != "cpu":
        raise ValueError(f"sum tree backend {backend!r} runs on the CPU only; the device is {device}")
    return backend


def tree_layout(num_leaves: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(offsets, level_nodes, total size) of the tree over `num_leaves` leaves, root level first."""
    nodes = [max(1, int(num_leaves))]
    while nodes[-1] > 1:
        nodes.append(-(-nodes[-1] // FANOUT))
    nodes.reverse()
    padded = [-(-n // FANOUT) * FANOUT for n in nodes]
    offsets = np.concatenate([[0], np.cumsum(padded[:-1])]).astype(np.int64)
    return offsets, np.array(nodes, dtype=np.int64), int(sum(padded))


class SumTree:
    def __init__(self, num_leaves: int, device: torch.device | str = "cpu", backend: str = "auto"):
        self.device = torch.device(device)
        self.backend = resolve_backend(backend, self.device)
        self.num_leaves = int(num_leaves)
        self.offsets, self.level_nodes, size = tree_layout(num_leaves)
        self.first_leaf = int(self.offsets[-1])  # leaf j is element first_leaf + j
        self.tree = torch.zeros(size, dtype=torch.float64, device=self.device)
        self._tree_np = self.tree.numpy() if self.backend != "torch" else None
        tree = self._tree_np if self._tree_np is not None else self.tree
        # Level l + 1 as rows of 8: row j = the children of node j of level l, for l from the root.
        self._child_groups = [tree[start: start + FANOUT * int(parents)].reshape(-1, FANOUT)
                              for start, parents in zip(self.offsets[1:], self.level_nodes[:-1])]
        self._parents = [tree[start: start + int(nodes)]  # the inner levels, root first
                         for start, nodes in zip(self.offsets[:-1], self.level_nodes[:-1])]
        self._child_index = torch.arange(FANOUT, device=self.device)
        if self.backend == "numba":
            from fastrl import sum_tree_kernels  # numba: only here, at first use

            self._kernels = sum_tree_kernels

    @property
    def nbytes(self) -> int:
        return self.tree.numel() * self.tree.element_size()

    def total(self) -> torch.Tensor:
        """The sum of all leaves, a 0-d tensor on the device (no host sync)."""
        return self.tree[0]

    def values(self, leaves: torch.Tensor) -> torch.Tensor:
        """The leaf values at `leaves` (any shape)."""
        return self.tree[self.first_leaf + leaves]

    def find(self, u: torch.Tensor) -> torch.Tensor:
        """Leaf ids (int64, u's shape) of the draws u (float64 in [0, total))."""
        if self.backend == "numba":
            flat = u.reshape(-1).contiguous().numpy()
            out = np.empty(flat.shape[0], dtype=np.int64)
            self._kernels.find(self._tree_np, flat, self.offsets, out)
            return torch.from_numpy(out).view(u.shape)
        if self.backend == "numpy":
            flat = u.reshape(-1).numpy()
            return torch.from_numpy(_descend_numpy(self._child_groups, flat)).view(u.shape)
        return _descend_torch(self._child_groups, u, self._child_index)

    def draw(self, u: torch.Tensor) -> torch.Tensor:
        """Leaf ids (int64, 1-d) of the uniforms u (float64 in [0, 1), 1-d): find(u * total)."""
        if self.backend == "numba":
            out = np.empty(u.shape[0], dtype=np.int64)
            self._kernels.draw(self._tree_np, u.numpy(), self.offsets, out)
            return torch.from_numpy(out)
        return self.find(u * self.total())

    def update(self, leaves: torch.Tensor, values: torch.Tensor) -> None:
        """Set leaves (int64, 1-d) to values (>= 0, 1-d); where a leaf repeats, its largest value
        wins (any rule would do; this one is deterministic on every backend)."""
        if leaves.numel() == 0:
            return
        values = values.to(torch.float64)
        if self.backend == "numba":
            self._kernels.update(self._tree_np, leaves.contiguous().numpy(), values.contiguous().numpy(),
                                 self.offsets, self.level_nodes)
            return
        if self.backend == "numpy":
            nodes = leaves.numpy() + self.first_leaf
            self._tree_np[nodes] = 0.0
            np.maximum.at(self._tree_np, nodes, values.numpy())
            _resum(self._child_groups, self._parents, leaves.numpy(), np.stack)
            return
        nodes = leaves + self.first_leaf
        self.tree.index_fill_(0, nodes, 0.0)
        self.tree.scatter_reduce_(0, nodes, values, reduce="amax")
        _resum(self._child_groups, self._parents, leaves, torch.stack)

    def load(self, saved: torch.Tensor) -> None:
        """Take a saved tree's values: this layout's tensor, or the binary tree of checkpoints
        written before the 8-ary layout (2P nodes, leaf j at P + j, P = num_leaves rounded up to a
        power of two), whose leaves are kept and every sum rebuilt by one update of all leaves."""
        if saved.shape == self.tree.shape:
            self.tree.copy_(saved)
            return
        binary_leaves = 1 << max(1, int(self.num_leaves - 1).bit_length())
        if saved.dim() != 1 or saved.numel() != 2 * binary_leaves:
            raise ValueError(f"a saved priority tree of {saved.numel()} nodes does not fit this buffer's tree of "
                             f"{self.num_leaves} leaves (expected {self.tree.numel()} nodes, or {2 * binary_leaves} "
                             "in the binary layout of older checkpoints)")
        self.tree.zero_()
        self.update(torch.arange(self.num_leaves, device=self.device),
                    saved[binary_leaves: binary_leaves + self.num_leaves].to(self.device))


def _sequential_sums(children, stack):
    """Running sums along the last dim (size 8), added strictly left to right, so that every
    backend and device gets the same floats (a library cumsum or sum may add in another order)."""
    columns = [children[..., 0]]
    for k in range(1, FANOUT):
        columns.append(columns[-1] + children[..., k])
    return stack(columns, -1)


def _descend_torch(child_groups, u: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """All draws down the tree at once, one level per step, in torch ops on u's device; index is
    arange(8) there."""
    node = torch.zeros(u.shape, dtype=torch.int64, device=u.device)
    for children in child_groups:
        kids = children[node]
        sums = _sequential_sums(kids, torch.stack)
        took = (u.unsqueeze(-1) >= sums[..., : FANOUT - 1]).sum(-1)
        last_positive = ((kids > 0) * index).amax(-1)
        took = torch.minimum(took, last_positive)
        before = torch.nn.functional.pad(sums[..., : FANOUT - 1], (1, 0)).gather(-1, took.unsqueeze(-1))
        u = u - before.squeeze(-1)  # u - 0.0 for the first child: the same float as u
        node = node * FANOUT + took
    return node


def _descend_numpy(child_groups, u: np.ndarray) -> np.ndarray:
    """_descend_torch in numpy, the same float operations."""
    node = np.zeros(u.shape, dtype=np.int64)
    index = np.arange(FANOUT)
    for children in child_groups:
        kids = children[node]
        sums = _sequential_sums(kids, np.stack)
        took = (u[..., None] >= sums[..., : FANOUT - 1]).sum(-1)
        last_positive = ((kids > 0) * index).max(-1)
        took = np.minimum(took, last_positive)
        before = np.take_along_axis(np.pad(sums[..., : FANOUT - 1], ((0, 0), (1, 0))), took[..., None], -1)
        u = u - before[..., 0]
        node = node * FANOUT + took
    return node


def _resum(child_groups, parents, leaves, stack) -> None:
    """Re-sum the ancestors of `leaves` level by level, bottom up (a parent reached twice gets the
    same sum twice); numpy arrays or torch tensors."""
    nodes = leaves
    for children, parent_level in zip(reversed(child_groups), reversed(parents)):
        nodes = nodes // FANOUT
        parent_level[nodes] = _sequential_sums(children[nodes], stack)[..., -1]
