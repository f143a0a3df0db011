"""The numba loops of `fastrl.priorities` for a CPU tree on the numba backend: each replaces a run
of small torch ops (a few microseconds each on a CPU) with one call over preallocated arrays.

The powers, (|td| + eps)^alpha and the weights' ^-beta, stay in torch: its vectorized pow is not
bit-identical to libm's, and the numba tree must hold and draw exactly what the torch tree does.
Everything else performs the same float operations in the same order as the torch expressions in
`fastrl.priorities`. `cache=True`, as in `fastrl.sum_tree_kernels`.
"""

from __future__ import annotations

import numba
import numpy as np

from fastrl.sum_tree_kernels import draw, update


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
