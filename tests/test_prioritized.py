"""Prioritized replay: the sum trees (numba, torch, numpy) against each other and a brute-force
reference, sampling frequencies against priorities, importance weights against the formula, and
the rows that must never be drawn."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastrl.buffer import ReplayBuffer
from fastrl.config import ConfigError
from fastrl.priorities import Priorities
from fastrl.sum_tree import SumTree
from tests.fake_replay import fake_stream

BACKENDS = ["numba", "torch", "numpy"]
ALPHA, EPS = 0.6, 1e-3


def running_max(buf: ReplayBuffer, largest_td: float) -> float:
    """The buffer's running max priority, checked against (|td| + EPS)^ALPHA of the largest TD
    error reported, to within an ulp (each backend takes its own pow)."""
    held = float(buf._priorities.max_priority)
    assert held == pytest.approx((abs(largest_td) + EPS) ** ALPHA, rel=1e-15)
    return held


def chi2_limit(dof: int, z: float = 3.09) -> float:
    """Wilson–Hilferty: the 0.999 quantile of chi2(dof)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def test_trees_agree_bit_for_bit_and_with_a_brute_force_reference():
    rng = np.random.default_rng(0)
    num_leaves = 1000  # not a power of two: 24 padding leaves
    trees = [SumTree(num_leaves, "cpu", backend) for backend in BACKENDS]
    reference = np.zeros(num_leaves)
    for op in range(60):
        leaves = rng.integers(0, num_leaves, rng.integers(1, 300))  # with repeats
        values = rng.exponential(size=len(leaves)) * (rng.random(len(leaves)) > 0.3)  # some zeros
        if op % 10 == 9:
            values[:] = 0.0  # clear a whole set
        reference[leaves] = 0.0
        np.maximum.at(reference, leaves, values)  # a repeated leaf keeps its largest value
        for tree in trees:
            tree.update(torch.from_numpy(leaves), torch.from_numpy(values))
        assert all(torch.equal(trees[0].tree, tree.tree) for tree in trees[1:]), op
        assert np.array_equal(trees[0].values(torch.arange(num_leaves)).numpy(), reference)
        total = float(trees[0].total())
        assert total == pytest.approx(math.fsum(reference), rel=1e-12)
        u = torch.from_numpy(np.concatenate([rng.random(500) * total, [0.0, total, np.nextafter(total, 0)]]))
        found = [tree.find(u) for tree in trees]
        assert all(torch.equal(found[0], f) for f in found[1:]), op
        expected = np.minimum(np.searchsorted(np.cumsum(reference), u.numpy(), side="right"),
                              np.flatnonzero(reference)[-1])
        assert np.array_equal(found[0].numpy(), expected), op
        assert (reference[found[0].numpy()] > 0).all()  # never a leaf of value 0


def test_numba_draws_and_level_by_level_updates_equal_the_torch_tree_on_random_trees():
    """The numba kernels walk all samples level by level and re-sum whole top levels; on trees of
    several sizes, updates smaller and larger than a level (repeated leaves, zero leaves, a tree
    emptied and refilled), the trees and the draws from uniforms stay bit-identical to torch's."""
    rng = np.random.default_rng(11)
    for num_leaves in (1, 2, 3, 8, 9, 64, 65, 1000, 5000):  # around the fanout's powers
        numba_tree, torch_tree = SumTree(num_leaves, "cpu", "numba"), SumTree(num_leaves, "cpu", "torch")
        for op in range(25):
            n = int(rng.choice([1, 2, 7, 100, 3 * num_leaves]))
            leaves = torch.from_numpy(rng.integers(0, num_leaves, n))
            values = torch.from_numpy(rng.exponential(size=n) * (rng.random(n) > 0.4))
            if op == 10:
                leaves, values = torch.arange(num_leaves), torch.zeros(num_leaves)  # all zero, then refilled
            for tree in (numba_tree, torch_tree):
                tree.update(leaves, values)
            assert torch.equal(numba_tree.tree, torch_tree.tree), (num_leaves, op)
            u = torch.from_numpy(np.concatenate([rng.random(300), [0.0, np.nextafter(1.0, 0.0)]]))
            if float(torch_tree.total()) > 0:
                drawn = numba_tree.draw(u)
                assert torch.equal(drawn, torch_tree.draw(u)), (num_leaves, op)
                assert (numba_tree.values(drawn) > 0).all()


def assert_within_an_ulp_then_align(reference: Priorities, other: Priorities) -> None:
    """The two trees' priorities agree to within an ulp (each takes its own pow: libm's in numba,
    torch's vectorized one); then `other` takes `reference`'s tree and running max, so that what
    follows is compared from identical trees, exactly."""
    assert torch.allclose(other.tree.tree, reference.tree.tree, rtol=1e-14, atol=0)
    assert torch.allclose(other.max_priority, reference.max_priority, rtol=1e-15, atol=0)
    assert torch.equal(other.tree.tree > 0, reference.tree.tree > 0)
    other.tree.tree.copy_(reference.tree.tree)
    other.max_priority.copy_(reference.max_priority)


@pytest.mark.parametrize("td_dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_numba_priority_kernels_equal_the_torch_expressions(td_dtype):
    """Priorities on the numba tree (the fused draw and weights, the update with its mask and
    running max) against the torch expressions on the torch tree: the same rows bit for bit from
    the same tree, weights and priorities to within an ulp of their float32 and float64; stacked
    [k, B] draws, 2-d and grad-carrying TD errors, and rows dropped since their draw."""
    numba_p, torch_p = (Priorities(3000, torch.device("cpu"), ALPHA, EPS, backend) for backend in ("numba", "torch"))
    rng = np.random.default_rng(12)
    for p in (numba_p, torch_p):
        p.replace(torch.zeros(0, dtype=torch.int64), torch.arange(2500))
    generators = [torch.Generator().manual_seed(3) for _ in range(2)]
    for round_ in range(6):
        shape = ((256,), (3, 64), (1, 5))[round_ % 3]
        beta = 0.4 + 0.1 * round_ if round_ % 2 else torch.tensor(0.5)
        (rows, weights), (ref_rows, ref_weights) = (p.sample_weighted(shape, g, beta)
                                                    for p, g in zip((numba_p, torch_p), generators))
        assert rows.shape == weights.shape == shape and weights.dtype == torch.float32
        assert torch.equal(rows, ref_rows), round_
        assert torch.allclose(weights, ref_weights, rtol=1.2e-7, atol=0), round_
        assert torch.equal(numba_p.weights(rows, beta), weights)
        assert torch.all(weights.amax(-1) == 1.0)  # the smallest priority's own ratio is exactly 1
        dropped = torch.from_numpy(rng.choice(rows.reshape(-1).numpy(), 3))  # stale rows: stay at 0
        for p in (numba_p, torch_p):
            p.replace(dropped, torch.zeros(0, dtype=torch.int64))
        td = torch.from_numpy(rng.standard_normal(shape) * 10.0 ** (round_ - 3)).to(td_dtype)
        td.requires_grad_(td_dtype != torch.bfloat16)
        for p in (numba_p, torch_p):
            p.update(rows, td * 1)
        assert torch.all(numba_p.tree.values(dropped) == 0)
        assert_within_an_ulp_then_align(numba_p, torch_p)
    assert numba_p.max_priority > 1.0  # the running max took in the large TD errors


def test_the_cuda_tree_equals_the_cpu_trees(cuda_device):
    rng = np.random.default_rng(1)
    trees = [SumTree(777, "cpu", "numba"), SumTree(777, cuda_device, "torch")]
    for _ in range(30):
        leaves = torch.from_numpy(rng.integers(0, 777, 200))
        values = torch.from_numpy(rng.exponential(size=200) * (rng.random(200) > 0.3))
        for tree in trees:
            tree.update(leaves.to(tree.device), values.to(tree.device))
        assert torch.equal(trees[0].tree, trees[1].tree.cpu())
        u = torch.from_numpy(rng.random(300)) * trees[0].total()
        assert torch.equal(trees[0].find(u), trees[1].find(u.to(cuda_device)).cpu())


def filled(backend: str = "numba", seed: int = 0, host_views: bool | None = None, n_step: int = 1,
           steps: int = 50, device: torch.device | str = "cpu") -> tuple[ReplayBuffer, object]:
    """A prioritized buffer of 4 envs fed 90 steps of random episodes (auto-reset rows, a wrap)."""
    stream = fake_stream(seed=seed, num_steps=90, num_envs=4)
    buf = ReplayBuffer(steps * 4, 4, (3,), torch.float32, (), torch.int64, device, seed=seed, prioritized=True,
                       per_alpha=ALPHA, per_eps=EPS, per_backend=backend, host_views=host_views, n_step=n_step,
                       gamma=0.9)
    for t in range(90):
        buf.add(*(torch.from_numpy(getattr(stream, k)[t]).to(device) for k in ("obs", "actions", "rewards",
                                                                               "terminated")), stream.valid[t])
    return buf, stream


def all_rows(buf: ReplayBuffer) -> torch.Tensor:
    return torch.arange(buf.frames.shape[0])


@pytest.mark.parametrize("backend,where", [("numba", "cpu"), ("torch", "cpu"), ("torch", "cuda")])
def test_sampling_frequencies_follow_the_priorities(backend, where, request):
    """Chi-square goodness of fit of 200k draws against p_i / sum p, priorities spread over 30x."""
    device = request.getfixturevalue("cuda_device") if where == "cuda" else torch.device("cpu")
    buf, _ = filled(backend, seed=4, device=device)
    rows = buf.sampleable_rows().cpu()
    td = torch.linspace(0.01, 6.0, len(rows))[torch.randperm(len(rows), generator=torch.Generator().manual_seed(1))]
    buf.update_priorities(rows.to(device), td.to(device))
    p = (td.double() + EPS) ** ALPHA
    draws = buf.sample_rows(100, 2000).reshape(-1).cpu()
    counts = torch.bincount(draws, minlength=buf.frames.shape[0]).double()
    assert counts.sum() == counts[rows].sum()  # nothing outside the sampleable rows
    expected = draws.numel() * p / p.sum()
    chi2 = float(((counts[rows] - expected) ** 2 / expected).sum())
    assert chi2 < chi2_limit(len(rows) - 1), chi2
    uniform = draws.numel() / len(rows)  # the test has the power to tell: uniform draws would fail it
    assert float(((counts[rows] - uniform) ** 2 / uniform).sum()) > 10 * chi2_limit(len(rows) - 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_importance_weights_follow_the_formula_normalized_by_the_batch_max(backend):
    buf, _ = filled(backend, seed=5)
    rows = buf.sampleable_rows()
    td = torch.rand(len(rows), generator=torch.Generator().manual_seed(2)) * 3
    buf.update_priorities(rows, -td)  # the sign of a TD error does not matter
    p = dict(zip(rows.tolist(), ((td.double() + EPS) ** ALPHA).tolist()))
    total = math.fsum(p.values())
    batch = buf.sample(3, 64, beta=0.4)
    assert batch.indices.shape == batch.weights.shape == (3, 64) and batch.weights.dtype == torch.float32
    for k in range(3):
        w = [(len(rows) * p[i] / total) ** -0.4 for i in batch.indices[k].tolist()]
        assert batch.weights[k].tolist() == pytest.approx([x / max(w) for x in w], rel=1e-6)
    assert torch.equal(buf.gather(batch.indices).obs, batch.obs)  # indices are the rows the batch holds


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_step", [1, 3])
def test_only_sampleable_rows_hold_a_priority(backend, n_step):
    """Auto-reset rows, the newest rows, overwritten rows and mirror slots: priority 0; the rest
    start at the running max priority."""
    buf, stream = filled(backend, seed=6, n_step=n_step, steps=30)
    assert (~stream.valid).sum() > 10
    positive = torch.nonzero(buf.priorities(all_rows(buf)) > 0).reshape(-1)
    assert torch.equal(positive, torch.sort(buf.sampleable_rows()).values)
    assert torch.all(buf.priorities(positive) == 1.0)
    rows = buf.sample_rows(1, 16).reshape(-1)
    buf.update_priorities(rows, torch.full((16,), 9.0))
    step = (torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64), torch.zeros(4), torch.zeros(4), np.ones(4, bool))
    for _ in range(n_step + 1):
        buf.add(*step)
    newest = buf.sampleable_rows()[-4:]
    assert torch.all(buf.priorities(newest) == running_max(buf, 9.0))  # the max priority seen so far


@pytest.mark.parametrize("backend", BACKENDS)
def test_new_rows_get_the_largest_priority_ever_reported_not_the_largest_held_now(backend):
    """Schaul et al.'s p_t = max_{i<t} p_i kept as a running maximum (as baselines does): a later,
    smaller error of the row that set it does not lower what new rows get."""
    buf, _ = filled(backend, seed=11, n_step=3, steps=30)
    row = buf.sampleable_rows()[-1:].clone()  # the newest row: the adds below do not overwrite it
    buf.update_priorities(row, torch.tensor([9.0]))
    buf.update_priorities(row, torch.tensor([0.5]))
    peak = running_max(buf, 9.0)
    assert float(buf.priorities(buf.sampleable_rows()).max()) < peak  # no row holds it any more
    step = (torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64), torch.zeros(4), torch.zeros(4), np.ones(4, bool))
    for _ in range(4):  # n_step + 1: the newest sampleable rows are then rows of these steps
        buf.add(*step)
    assert torch.all(buf.priorities(buf.sampleable_rows()[-4:]) == peak)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_update_for_a_row_dropped_since_its_draw_leaves_it_at_zero(backend):
    buf, _ = filled(backend, seed=7, steps=30)
    drawn = buf.sampleable_rows()[:8].clone()  # the oldest rows: the next add overwrites the first slot
    buf.add(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64), torch.zeros(4), torch.zeros(4), np.ones(4, bool))
    stale = drawn[~torch.isin(drawn, buf.sampleable_rows())]
    assert len(stale) >= 2
    buf.update_priorities(stale, torch.full(stale.shape, 5.0))
    assert torch.all(buf.priorities(stale) == 0)
    total = float(buf._priorities.tree.total())
    assert total == pytest.approx(float(buf.priorities(buf.sampleable_rows()).sum()), rel=1e-12)


@pytest.mark.parametrize("host_views", [True, False], ids=["numpy-views", "torch-views"])
def test_backends_draw_the_same_rows_and_hold_the_same_trees(host_views):
    """Buffers on the three trees: the same rows and transitions from the same trees, and after the
    same updates, adds and drops the same trees (numba's to within an ulp of its pow)."""
    buffers = [filled(backend, seed=8, host_views=host_views)[0] for backend in BACKENDS]
    assert (buffers[0]._pair_storage is not None) == host_views  # numba copies the pairs itself
    for round_ in range(5):
        batches = [buf.sample_batches(2, 32, beta=0.5) for buf in buffers]
        for batch in batches[1:]:
            for mine, ref in zip(batch, batches[0]):
                assert torch.equal(mine.indices, ref.indices)
                assert torch.allclose(mine.weights, ref.weights, rtol=1.2e-7, atol=0)
        for buf, batch in zip(buffers, batches):  # the numba tree's own gather of the pairs included
            for part in batch:
                ref = buf.gather(part.indices)
                for field in ("obs", "actions", "rewards", "next_obs", "terminated"):
                    assert torch.equal(getattr(part, field), getattr(ref, field)), field
        td = torch.rand(2, 32, generator=torch.Generator().manual_seed(round_))
        for buf, batch in zip(buffers, batches):
            for part, errors in zip(batch, td):
                buf.update_priorities(part.indices, errors)
            buf.add(torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), torch.randn(4), torch.zeros(4),
                    np.array([True, round_ % 2 == 0, True, True]))
        numba_p, torch_p, numpy_p = (buf._priorities for buf in buffers)
        assert torch.equal(torch_p.tree.tree, numpy_p.tree.tree)  # one torch expression, two trees
        assert_within_an_ulp_then_align(numba_p, torch_p)
        assert_within_an_ulp_then_align(numba_p, numpy_p)


def test_the_numba_pair_copy_refuses_a_row_outside_the_storage():
    from fastrl import sum_tree_kernels as kernels
    storage = np.arange(5 * 3, dtype=np.float32)  # 5 rows of width 3, pairs of width 5: from rows 0..3
    pairs = np.empty(2 * 5, dtype=np.float32)
    kernels._copy_pairs(storage, 3, 5, np.array([3, 0]), pairs)
    assert pairs.tolist() == list(range(9, 14)) + list(range(0, 5))
    for row in (4, -1):
        with pytest.raises(IndexError, match="outside the replay buffer"):
            kernels._copy_pairs(storage, 3, 5, np.array([0, row]), pairs)


def test_the_numba_tree_refuses_to_write_a_leaf_it_does_not_have():
    """Its loops do not check bounds, so an update of a row past the tree's leaves would write into
    another level (or past the array) unless the kernel refuses it; the tree stays unchanged."""
    tree = SumTree(20, "cpu", "numba")  # leaves 0..19, padded to 24
    tree.update(torch.arange(20), torch.ones(20, dtype=torch.float64))
    before = tree.tree.clone()
    for leaf in (20, 23, -1, 10**6):
        with pytest.raises(IndexError, match="outside the sum tree"):
            tree.update(torch.tensor([3, leaf]), torch.tensor([5.0, 5.0], dtype=torch.float64))
        assert torch.equal(tree.tree, before)
    priorities = Priorities(20, torch.device("cpu"), ALPHA, EPS, "numba")
    priorities.replace(torch.zeros(0, dtype=torch.int64), torch.arange(20))
    before = priorities.tree.tree.clone()
    with pytest.raises(IndexError, match="outside the sum tree"):
        priorities.update(torch.tensor([1, 20]), torch.full((2,), 9.0))
    assert torch.equal(priorities.tree.tree, before) and float(priorities.max_priority) == 1.0
    with pytest.raises(IndexError, match="outside the sum tree"):
        priorities.weights(torch.tensor([0, 10**6]), 0.4)


def test_a_prioritized_buffer_round_trips_through_its_state_dict():
    buf, _ = filled("numba", seed=9)
    buf.update_priorities(buf.sampleable_rows()[:10], torch.full((10,), 4.0))
    copy = ReplayBuffer(200, 4, (3,), torch.float32, (), torch.int64, "cpu", prioritized=True, per_alpha=ALPHA,
                        per_eps=EPS, per_backend="torch")
    copy.load_state_dict(buf.state_dict())
    assert torch.equal(copy.sample_rows(2, 50), buf.sample_rows(2, 50))
    assert torch.equal(copy._priorities.max_priority, buf._priorities.max_priority)


def binary_tree(leaf_values: torch.Tensor) -> torch.Tensor:
    """The sum tree as checkpoints before the 8-ary layout hold it: 2P float64 nodes, node i the
    sum of 2i and 2i + 1, leaf j at P + j, P = the leaves rounded up to a power of two."""
    first_leaf = 1 << max(1, int(leaf_values.numel() - 1).bit_length())
    tree = torch.zeros(2 * first_leaf, dtype=torch.float64)
    tree[first_leaf: first_leaf + leaf_values.numel()] = leaf_values
    for node in range(first_leaf - 1, 0, -1):
        tree[node] = tree[2 * node] + tree[2 * node + 1]
    return tree


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_checkpoint_with_the_binary_tree_of_older_versions_still_loads(backend):
    buf, _ = filled("numba", seed=12)
    buf.update_priorities(buf.sampleable_rows()[:30], torch.linspace(0.1, 9.0, 30))
    state = buf.state_dict()
    state["priority_tree"] = binary_tree(buf.priorities(torch.arange(buf._priorities.tree.num_leaves)))
    copy = ReplayBuffer(200, 4, (3,), torch.float32, (), torch.int64, "cpu", prioritized=True, per_alpha=ALPHA,
                        per_eps=EPS, per_backend=backend)
    copy.load_state_dict(state)
    assert torch.equal(copy._priorities.tree.tree, buf._priorities.tree.tree)  # every sum rebuilt exactly
    assert torch.equal(copy.sample_rows(2, 50), buf.sample_rows(2, 50))
    state["priority_tree"] = torch.zeros(100, dtype=torch.float64)
    with pytest.raises(ValueError, match="does not fit this buffer's tree"):
        copy.load_state_dict(state)


def test_prioritized_sampling_needs_beta_and_a_uniform_buffer_has_no_priorities():
    buf, _ = filled("numba", seed=10)
    with pytest.raises(ValueError, match="needs beta"):
        buf.sample_batches(1, 8)
    uniform = ReplayBuffer(40, 4, (3,), torch.float32, (), torch.int64, "cpu")
    with pytest.raises(RuntimeError, match="prioritized=False"):
        uniform.update_priorities(torch.zeros(1, dtype=torch.int64), torch.ones(1))
    for kwargs, match in ((dict(per_alpha=-1.0), "--per-alpha"), (dict(per_eps=0.0), "--per-eps")):
        with pytest.raises(ConfigError, match=match):
            ReplayBuffer(40, 4, (3,), torch.float32, (), torch.int64, "cpu", prioritized=True, **kwargs)


def test_importing_fastrl_does_not_import_numba():
    code = ("import sys, torch, fastrl, fastrl.buffer, fastrl.train\n"
            "from fastrl.buffer import ReplayBuffer\n"
            "ReplayBuffer(40, 4, (3,), torch.float32, (), torch.int64, prioritized=True, per_backend='torch')\n"
            "assert 'numba' not in sys.modules\n"
            "ReplayBuffer(40, 4, (3,), torch.float32, (), torch.int64, prioritized=True)\n"
            "assert 'numba' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
