"""The CPU sum tree's hot loops, jitted by numba (imported only when a CPU prioritized buffer is
built, so `import fastrl` does not pay for numba). `cache=True` keeps the compiled code on disk:
only the first run on a machine compiles.

They perform, per sample and per leaf, exactly the float operations of the vectorized version in
`fastrl.sum_tree` (same comparisons, same additions, same order along each path), so the trees and
the sampled leaves are bit-identical across backends.

The second half holds the loops of `fastrl.priorities` on a numba tree: each replaces a run of
small torch ops (a few microseconds each on a CPU) with one call over preallocated arrays: a draw,
its importance weights and the copy of the drawn rows out of a packed replay buffer are one call,
a priority update another. They perform the float operations of the torch expressions in
`fastrl.priorities` in the same order, but for the powers, (|td| + eps)^alpha and the weights'
^-beta: here they are libm's `pow`, in torch its own vectorized one, and the two can differ in the
last bit. So a numba tree's priorities equal the torch tree's to within an ulp, not bit for bit
(the CUDA tree's pow differs from both in the same way); given the same priorities, the trees and
the draws are bit-identical. (A torch call on 256 values costs more than libm's pow of all of them
in the loop that needs them.) One file for both halves: numba's on-disk cache notices edits to the
file of a cached function only, not to the njit functions it calls from other files.

Both walks go level by level over all samples (levels outside, samples inside) and without branches
on the data: the lower levels of a tree of a million leaves miss the caches, and one sample's path
is a chain of dependent loads. Across samples the loads of a level are independent, so the CPU keeps
many misses in flight at once, and a branch-free loop body has no mispredictions to throw that work
away. A descent step picks its child by counting comparisons and reads the running sum to subtract
from a small scratch array: written as a sum of (j == k) terms or as if-chains, LLVM turns the
choice into jumps, which a random draw mispredicts (it made the descent 2.5x slower). The one jump
left, to the last positive child when rounding put x at or past a node's sum, is taken almost never,
so it is predicted right, and it spares every step the branch-free cap (suffix sums and tests over
the 8 children, some 20 operations). It is the same cap: a child of sum 0 is reached only past the
last positive one (before it, p_j = p_(j-1) leaves no x with p_(j-1) <= x < p_j). Node ids are
unsigned so that numba emits no negative-index wraparound code in the inner loops.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

# How many samples (or rows) ahead a loop asks for the cache line it will read: enough to keep
# the memory system busy across a dependent chain of work per sample, few enough that the lines
# arrive before they are evicted again.
AHEAD = 16


@intrinsic
def _prefetch(typingctx, array, index):
    """Hint the CPU to load the cache line of array[index] (llvm.prefetch: read, keep in all cache
    levels). Never faults and never changes a result, whatever the index."""
    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, view, [args[1]], wraparound=False,
                                           boundscheck=False)
        byte_pointer, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        signature_ir = ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32])
        hint = cgutils.get_or_insert_function(builder.module, signature_ir, "llvm.prefetch.p0")
        builder.call(hint, [builder.bitcast(pointer, byte_pointer), ir.Constant(i32, 0), ir.Constant(i32, 3),
                            ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(array, index), codegen


@numba.njit(cache=True)
def _last_positive(tree: np.ndarray, base: np.uint64) -> np.uint64:
    """The index of the last of the 8 children from `base` with a positive sum (0 if none is)."""
    last = np.uint64(0)
    for k in range(1, 8):
        if tree[base + np.uint64(k)] > 0.0:
            last = np.uint64(k)
    return last


@numba.njit(cache=True)
def _descend(tree: np.ndarray, x: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> None:
    """out[i] = the leaf whose prefix interval holds x[i]; x is scratch (overwritten)."""
    n = x.shape[0]
    node = np.zeros(n, dtype=np.uint64)
    fanout = np.uint64(8)
    before = np.zeros(8, dtype=np.float64)  # [k] = the running sum before child k (0.0 for k = 0)
    for level in range(1, offsets.shape[0]):
        start = np.uint64(offsets[level])
        for i in range(min(AHEAD, n)):
            _prefetch(tree, start + node[i] * fanout)
        for i in range(n):
            if i + AHEAD < n:
                _prefetch(tree, start + node[i + AHEAD] * fanout)
            base = start + node[i] * fanout
            c0 = tree[base]
            c1 = tree[base + np.uint64(1)]
            c2 = tree[base + np.uint64(2)]
            c3 = tree[base + np.uint64(3)]
            c4 = tree[base + np.uint64(4)]
            c5 = tree[base + np.uint64(5)]
            c6 = tree[base + np.uint64(6)]
            p0 = c0
            p1 = p0 + c1
            p2 = p1 + c2
            p3 = p2 + c3
            p4 = p3 + c4
            p5 = p4 + c5
            p6 = p5 + c6
            xi = x[i]
            took = (np.uint64(xi >= p0) + np.uint64(xi >= p1) + np.uint64(xi >= p2) + np.uint64(xi >= p3)
                    + np.uint64(xi >= p4) + np.uint64(xi >= p5) + np.uint64(xi >= p6))
            if not tree[base + took] > 0.0:  # rare (rounding put x at or past the node's sum): a jump
                took = _last_positive(tree, base)  # that is almost never taken costs nothing
            before[1] = p0
            before[2] = p1
            before[3] = p2
            before[4] = p3
            before[5] = p4
            before[6] = p5
            before[7] = p6
            x[i] = xi - before[took]  # xi - 0.0 for the first child: the torch backend's float
            node[i] = node[i] * fanout + took
    for i in range(n):
        out[i] = np.int64(node[i])


@numba.njit(cache=True)
def find(tree: np.ndarray, u: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> None:
    """out[i] = the leaf whose prefix interval holds u[i]; a child with sum 0 is never entered."""
    _descend(tree, u.astype(np.float64), offsets, out)


@numba.njit(cache=True)
def draw(tree: np.ndarray, u: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> None:
    """find(u * total): u uniform in [0, 1)."""
    x = np.empty(u.shape[0], dtype=np.float64)
    total = tree[0]
    for i in range(u.shape[0]):
        x[i] = u[i] * total
    _descend(tree, x, offsets, out)


@numba.njit(cache=True)
def _sum_children(tree: np.ndarray, base: np.uint64) -> float:
    """((c0 + c1) + c2) + ... + c7 of the 8 children from `base`, strictly left to right."""
    total = tree[base]
    for k in range(1, 8):
        total = total + tree[base + np.uint64(k)]
    return total


@numba.njit(cache=True)
def _check_leaves(leaves: np.ndarray, num_leaves: int) -> None:
    """Raise unless every leaf id is in [0, num_leaves): the loops index without bounds checks."""
    for i in range(leaves.shape[0]):
        if leaves[i] < 0 or leaves[i] >= num_leaves:
            raise IndexError("a leaf lies outside the sum tree")


@numba.njit(cache=True)
def update(tree: np.ndarray, leaves: np.ndarray, values: np.ndarray, offsets: np.ndarray,
           level_nodes: np.ndarray) -> None:
    """Set leaves[i] to values[i] (where a leaf repeats, its largest value wins), then re-sum
    every ancestor of a changed leaf from its children, one level at a time (a parent reached
    twice gets the same sum twice)."""
    _check_leaves(leaves, level_nodes[-1])
    _update_checked(tree, leaves, values, offsets, level_nodes)


@numba.njit(cache=True)
def _update_checked(tree: np.ndarray, leaves: np.ndarray, values: np.ndarray, offsets: np.ndarray,
                    level_nodes: np.ndarray) -> None:
    """update, for leaves already checked."""
    depth = offsets.shape[0] - 1
    first_leaf = np.uint64(offsets[depth])
    fanout = np.uint64(8)
    n = leaves.shape[0]
    node = np.empty(n, dtype=np.uint64)  # ids within their level
    for i in range(n):
        node[i] = np.uint64(leaves[i])
    for i in range(min(AHEAD, n)):
        _prefetch(tree, first_leaf + node[i])
    for i in range(n):
        if i + AHEAD < n:
            _prefetch(tree, first_leaf + node[i + AHEAD])
        tree[first_leaf + node[i]] = 0.0
    for i in range(n):
        if values[i] > tree[first_leaf + node[i]]:
            tree[first_leaf + node[i]] = values[i]
    for level in range(depth - 1, -1, -1):  # the parents' level
        parent_start = np.uint64(offsets[level])
        child_start = np.uint64(offsets[level + 1])
        if level_nodes[level] <= n:
            # A level of no more nodes than changed leaves: re-summing all of it costs less than
            # one sum per path, and gives the same floats (every node is the sum of its children).
            for parent in range(np.uint64(level_nodes[level])):
                tree[parent_start + parent] = _sum_children(tree, child_start + parent * fanout)
        else:
            for i in range(min(AHEAD, n)):
                _prefetch(tree, child_start + node[i] // fanout * fanout)
            for i in range(n):
                if i + AHEAD < n:
                    _prefetch(tree, child_start + node[i + AHEAD] // fanout * fanout)
                parent = node[i] // fanout
                tree[parent_start + parent] = _sum_children(tree, child_start + parent * fanout)
                node[i] = parent


# --- the loops of fastrl.priorities ---


@numba.njit(cache=True)
def _weights(tree: np.ndarray, rows: np.ndarray, first_leaf: int, batch_size: int, beta: float, out: np.ndarray
             ) -> None:
    """out[i] = float32((p[rows[i]] / the smallest p of i's mini-batch) ** -beta), the mini-batches
    being the runs of `batch_size` rows: `importance_weights` (a NaN propagates to the minimum, as
    torch.amin does)."""
    if batch_size == 0:
        return
    leaf0 = np.uint64(first_leaf)
    for first in range(0, rows.shape[0], batch_size):
        smallest = tree[leaf0 + np.uint64(rows[first])]
        for i in range(first + 1, first + batch_size):
            p = tree[leaf0 + np.uint64(rows[i])]
            if (p < smallest or p != p) and smallest == smallest:
                smallest = p
        for i in range(first, first + batch_size):
            out[i] = np.float32((tree[leaf0 + np.uint64(rows[i])] / smallest) ** -beta)


@numba.njit(cache=True)
def leaf_weights(tree: np.ndarray, rows: np.ndarray, first_leaf: int, batch_size: int, beta: float,
                 out: np.ndarray) -> None:
    """_weights after a check that every row is a leaf of the tree (padding leaves included)."""
    _check_leaves(rows, tree.shape[0] - first_leaf)
    _weights(tree, rows, first_leaf, batch_size, beta, out)


@numba.njit(cache=True)
def draw_weighted(tree: np.ndarray, u: np.ndarray, offsets: np.ndarray, batch_size: int, beta: float,
                  rows: np.ndarray, weights: np.ndarray) -> None:
    """rows = the tree's draws for the uniforms u, and their importance weights (see _weights)."""
    draw(tree, u, offsets, rows)
    _weights(tree, rows, offsets[-1], batch_size, beta, weights)


@numba.njit(cache=True)
def _prefetch_span(flat: np.ndarray, first: np.uint64, span: np.uint64, line: np.uint64) -> None:
    """_prefetch every cache line of flat[first : first + span] (span >= 1)."""
    for j in range(np.uint64(0), span, line):
        _prefetch(flat, first + j)
    _prefetch(flat, first + span - np.uint64(1))


@numba.njit(cache=True)
def _copy_pairs(flat: np.ndarray, row_width: int, pair_width: int, rows: np.ndarray, pairs: np.ndarray) -> None:
    """pairs[i*p : (i+1)*p] = flat[rows[i]*w : rows[i]*w + p] for row width w and pair width p:
    row r and the observation of row r + 1 of a buffer's packed storage, as its pair view's
    index_select gathers them. The indices are unsigned so that LLVM vectorizes the copy (with
    signed ones, numba's negative-index handling keeps it scalar)."""
    w = np.uint64(row_width)
    span = np.uint64(pair_width)
    end = np.uint64(flat.shape[0])
    line = np.uint64(max(1, 64 // flat.itemsize))  # values per cache line
    n = rows.shape[0]
    for i in range(min(AHEAD, n)):
        _prefetch_span(flat, np.uint64(rows[i]) * w, span, line)
    for i in range(n):
        if i + AHEAD < n:
            _prefetch_span(flat, np.uint64(rows[i + AHEAD]) * w, span, line)
        if rows[i] < 0 or np.uint64(rows[i]) * w + span > end:
            raise IndexError("a drawn row lies outside the replay buffer's storage")
        src = np.uint64(rows[i]) * w
        dst = np.uint64(i) * span
        for j in range(span):
            pairs[dst + j] = flat[src + j]


@numba.njit(cache=True)
def draw_weighted_pairs(tree: np.ndarray, u: np.ndarray, offsets: np.ndarray, batch_size: int, beta: float,
                        rows: np.ndarray, weights: np.ndarray, flat: np.ndarray, row_width: int, pair_width: int,
                        pairs: np.ndarray) -> None:
    """draw_weighted, and the drawn rows' pairs copied out of the buffer's storage (see
    _copy_pairs): the whole prioritized sample but the uniforms, in one call."""
    draw_weighted(tree, u, offsets, batch_size, beta, rows, weights)
    _copy_pairs(flat, row_width, pair_width, rows, pairs)


@numba.njit(cache=True)
def set_priorities(tree: np.ndarray, leaves: np.ndarray, td: np.ndarray, eps: float, alpha: float,
                   new: np.ndarray, offsets: np.ndarray, level_nodes: np.ndarray, max_priority: np.ndarray) -> None:
    """Priorities.update: new = (|td| + eps) ** alpha in float64 (scratch), except that a row whose
    priority is 0 (dropped since it was drawn) stays at 0; the running maximum takes in the new
    priorities, and the tree takes them."""
    _check_leaves(leaves, level_nodes[-1])
    first_leaf = offsets[-1]
    largest = max_priority[0]
    n = leaves.shape[0]
    for i in range(min(AHEAD, n)):
        _prefetch(tree, first_leaf + leaves[i])
    for i in range(n):
        if i + AHEAD < n:
            _prefetch(tree, first_leaf + leaves[i + AHEAD])
        new[i] = (abs(np.float64(td[i])) + eps) ** alpha
        if not tree[first_leaf + leaves[i]] > 0.0:
            new[i] = 0.0
        if (new[i] > largest or new[i] != new[i]) and largest == largest:
            largest = new[i]
    max_priority[0] = largest
    _update_checked(tree, leaves, new, offsets, level_nodes)
