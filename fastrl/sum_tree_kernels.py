"""The CPU sum tree's hot loops, jitted by numba (imported only when a CPU prioritized buffer is
built, so `import fastrl` does not pay for numba). `cache=True` keeps the compiled code on disk:
only the first run on a machine compiles.

They perform, per sample and per leaf, exactly the float operations of the vectorized version in
`fastrl.sum_tree` (same comparisons, same additions, same order along each path), so the trees and
the sampled leaves are bit-identical across backends.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def find(tree: np.ndarray, u: np.ndarray, depth: int, out: np.ndarray) -> None:
    """out[i] = the leaf whose prefix interval holds u[i]; a child with sum 0 is never entered."""
    first_leaf = 1 << depth
    for i in range(u.shape[0]):
        x = u[i]
        node = 1
        for _ in range(depth):
            left = tree[2 * node]
            if x >= left and tree[2 * node + 1] > 0.0:
                x = x - left
                node = 2 * node + 1
            else:
                node = 2 * node
        out[i] = node - first_leaf


@numba.njit(cache=True)
def update(tree: np.ndarray, leaves: np.ndarray, values: np.ndarray, depth: int) -> None:
    """Set leaves[i] to values[i] (where a leaf repeats, its largest value wins), then re-sum
    every ancestor of a changed leaf from its two children."""
    first_leaf = 1 << depth
    for i in range(leaves.shape[0]):
        tree[first_leaf + leaves[i]] = 0.0
    for i in range(leaves.shape[0]):
        node = first_leaf + leaves[i]
        if values[i] > tree[node]:
            tree[node] = values[i]
    for i in range(leaves.shape[0]):
        node = first_leaf + leaves[i]
        for _ in range(depth):
            node = node // 2
            tree[node] = tree[2 * node] + tree[2 * node + 1]
