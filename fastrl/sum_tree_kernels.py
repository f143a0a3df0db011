"""The CPU sum tree's hot loops, jitted by numba (imported only when a CPU prioritized buffer is
built, so `import fastrl` does not pay for numba). `cache=True` keeps the compiled code on disk:
only the first run on a machine compiles.

They perform, per sample and per leaf, exactly the float operations of the vectorized version in
`fastrl.sum_tree` (same comparisons, same additions, same order along each path), so the trees and
the sampled leaves are bit-identical across backends.

The second half holds the loops of `fastrl.priorities` on a numba tree: each replaces a run of
small torch ops (a few microseconds each on a CPU) with one call over preallocated arrays. The
powers, (|td| + eps)^alpha and the weights' ^-beta, stay in torch: its vectorized pow is not
bit-identical to libm's, and the numba tree must hold and draw exactly what the torch tree does.
Everything else performs the float operations of the torch expressions in `fastrl.priorities`, in
the same order. One file for both halves: numba's on-disk cache notices edits to the file of a
cached function only, not to the njit functions it calls from other files.

Both walks go level by level over all samples (levels outside, samples inside) and without
branches on the data: a tree of a million leaves is 16 MB, so the lower levels of every path miss
the caches, and one sample's path is a chain of dependent loads. Across samples the loads of a
level are independent, so the CPU keeps many misses in flight at once, and a branch-free loop body
has no mispredictions to throw that work away. Node ids are unsigned so that numba emits no
negative-index wraparound code in the inner loops.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def _descend(tree: np.ndarray, x: np.ndarray, depth: int, out: np.ndarray) -> None:
    """out[i] = the leaf whose prefix interval holds x[i]; x is scratch (overwritten)."""
    n = x.shape[0]
    node = np.ones(n, dtype=np.uint64)
    one = np.uint64(1)
    for _ in range(depth):
        for i in range(n):
            left_child = node[i] << one
            left = tree[left_child]
            xi = x[i]
            go_right = (xi >= left) & (tree[left_child + one] > 0.0)
            # The torch backend's x - left * go_right: left * 1.0 is left, x - 0.0 is x (a select,
            # not a multiply, in the machine code).
            x[i] = xi - (left if go_right else 0.0)
            node[i] = left_child + np.uint64(go_right)
    first_leaf = 1 << depth
    for i in range(n):
        out[i] = np.int64(node[i]) - first_leaf


@numba.njit(cache=True)
def find(tree: np.ndarray, u: np.ndarray, depth: int, out: np.ndarray) -> None:
    """out[i] = the leaf whose prefix interval holds u[i]; a child with sum 0 is never entered."""
    _descend(tree, u.astype(np.float64), depth, out)


@numba.njit(cache=True)
def draw(tree: np.ndarray, u: np.ndarray, depth: int, out: np.ndarray) -> None:
    """find(u * total): u uniform in [0, 1)."""
    x = np.empty(u.shape[0], dtype=np.float64)
    total = tree[1]
    for i in range(u.shape[0]):
        x[i] = u[i] * total
    _descend(tree, x, depth, out)


@numba.njit(cache=True)
def update(tree: np.ndarray, leaves: np.ndarray, values: np.ndarray, depth: int) -> None:
    """Set leaves[i] to values[i] (where a leaf repeats, its largest value wins), then re-sum
    every ancestor of a changed leaf from its two children, one level at a time (a parent reached
    twice gets the same sum twice)."""
    first_leaf = np.uint64(1 << depth)
    n = leaves.shape[0]
    node = np.empty(n, dtype=np.uint64)
    for i in range(n):
        node[i] = first_leaf + np.uint64(leaves[i])
        tree[node[i]] = 0.0
    for i in range(n):
        if values[i] > tree[node[i]]:
            tree[node[i]] = values[i]
    one = np.uint64(1)
    level = depth  # the level of node[i]; level L holds the nodes [2^L, 2^(L+1))
    while level > 0 and (1 << (level - 1)) > n:
        for i in range(n):
            parent = node[i] >> one
            left_child = parent << one
            tree[parent] = tree[left_child] + tree[left_child + one]
            node[i] = parent
        level -= 1
    # Levels of no more nodes than changed leaves: re-summing all of a level costs less than one
    # sum per path, and gives the same floats (every inner node already is the sum of its children).
    for parent_level in range(level - 1, -1, -1):
        for parent in range(1 << parent_level, 2 << parent_level):
            tree[parent] = tree[2 * parent] + tree[2 * parent + 1]


# --- the loops of fastrl.priorities ---


@numba.njit(cache=True)
def weight_bases(tree: np.ndarray, rows: np.ndarray, depth: int, count: int, out: np.ndarray) -> None:
    """out[i] = count * p[rows[i]] / total, the base that `importance_weights` raises to -beta."""
    first_leaf = 1 << depth
    scale = np.float64(count)
    total = tree[1]
    for i in range(rows.shape[0]):
        out[i] = scale * tree[first_leaf + rows[i]] / total


@numba.njit(cache=True)
def draw_with_bases(tree: np.ndarray, u: np.ndarray, depth: int, count: int, rows: np.ndarray,
                    bases: np.ndarray) -> None:
    """rows = the tree's draws for the uniforms u, and their weight bases (see weight_bases)."""
    draw(tree, u, depth, rows)
    weight_bases(tree, rows, depth, count, bases)


@numba.njit(cache=True)
def normalize_weights(w: np.ndarray, out: np.ndarray) -> None:
    """out[k, i] = float32(w[k, i] / max_i w[k, i]): each mini-batch's weights over its largest
    (a NaN propagates to the maximum, as torch.amax does)."""
    if w.shape[1] == 0:
        return
    for k in range(w.shape[0]):
        largest = w[k, 0]
        for i in range(1, w.shape[1]):
            if w[k, i] > largest or w[k, i] != w[k, i]:
                if largest == largest:
                    largest = w[k, i]
        for i in range(w.shape[1]):
            out[k, i] = np.float32(w[k, i] / largest)


@numba.njit(cache=True)
def td_bases(td: np.ndarray, eps: float, out: np.ndarray) -> None:
    """out[i] = |td[i]| + eps in float64, the base raised to alpha."""
    for i in range(td.shape[0]):
        out[i] = abs(np.float64(td[i])) + eps


@numba.njit(cache=True)
def set_priorities(tree: np.ndarray, leaves: np.ndarray, new: np.ndarray, depth: int,
                   max_priority: np.ndarray) -> None:
    """Priorities.update after the power: a row whose priority is 0 (dropped since it was drawn)
    stays at 0, the running maximum takes in the new priorities, and the tree takes them."""
    first_leaf = 1 << depth
    largest = max_priority[0]
    for i in range(leaves.shape[0]):
        if not tree[first_leaf + leaves[i]] > 0.0:
            new[i] = 0.0
        if (new[i] > largest or new[i] != new[i]) and largest == largest:
            largest = new[i]
    max_priority[0] = largest
    update(tree, leaves, new, depth)
