"""Replay-buffer micro timings behind the speed issue's targets, medians of 7 repetitions.

    python scripts/buffer_micro.py            # uniform sample and add, then the prioritized pair
    python scripts/buffer_micro.py --per      # only the prioritized pair, for each sum-tree backend
    /tmp/cpprb-venv/bin/python scripts/buffer_micro.py --cpprb   # the same pair in cpprb (numpy only)
    python scripts/buffer_micro.py --per --per-call               # medians over single calls (a busy machine)
    python scripts/buffer_micro.py --per --per-call --trees numba # the CPU default's pair only
    /tmp/peers-venv/bin/python scripts/buffer_micro.py --versus-cpprb   # numba and cpprb, blocks alternated

sample(256) from a full 1e6 buffer (obs 17, act 6, HalfCheetah-shaped rows) as one call (stacked, and
as the trainer's list of batches) and as one draw of 16 batches, and add of 8 envs one vector step
at a time and in chunks of 32 and 128 steps.

The prioritized pair: sample(256) and the priority update of those 256 rows, from a full 1e6
prioritized buffer of the same rows, for the numba sum tree (the CPU default), the torch tree on
CPU (the code CUDA runs) and the same vectorized tree in numpy (what numba buys). `--cpprb` times
cpprb's PrioritizedReplayBuffer (a C++ segment tree) on the same pair; it imports neither torch nor
fastrl, so it runs in a venv of its own: `python3 -m venv /tmp/cpprb-venv && /tmp/cpprb-venv/bin/pip
install cpprb`. `--versus-cpprb` builds both in one process (a venv with torch 2.13.0, fastrl and
cpprb) and alternates blocks of their calls, so that both see the same machine: on a VM whose
speed drifts within seconds, separate runs can differ by more than the two sides do.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

OBS, ACT, CAPACITY, NUM_ENVS, CHUNK, BATCH = 17, 6, 1_000_000, 8, 1000, 256


def median_us(fn: Callable[[], object], calls: int, repeats: int = 7, per_call: bool = False) -> float:
    """The median over repetitions of the mean time of `calls` calls; `per_call`: the median over
    all calls, each timed alone (on a machine shared with other jobs, the calls that a time slice
    of another process interrupts then do not count)."""
    times = []
    for _ in range(repeats):
        for _ in range(min(calls, 100)):
            fn()
        if per_call:
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e6)
            continue
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return sorted(times)[len(times) // 2]


def full_buffer(capacity: int = CAPACITY, **kwargs):
    """A full HalfCheetah-shaped fastrl buffer of 8 envs, filled in chunks."""
    import torch

    from fastrl.buffer import ReplayBuffer

    buf = ReplayBuffer(capacity, NUM_ENVS, (OBS,), torch.float32, (ACT,), torch.float32, torch.device("cpu"),
                       seed=0, **kwargs)
    chunk = min(CHUNK, buf.steps - 1)
    for _ in range(capacity // (NUM_ENVS * chunk) + 1):
        buf.add(torch.randn(chunk, NUM_ENVS, OBS), torch.randn(chunk, NUM_ENVS, ACT), torch.randn(chunk, NUM_ENVS),
                torch.zeros(chunk, NUM_ENVS), np.ones((chunk, NUM_ENVS), dtype=bool))
    return buf


def uniform_timings() -> None:
    import torch

    from fastrl.buffer import ReplayBuffer

    full = full_buffer()
    print(f"buffer of {len(full)} sampleable rows, torch {torch.__version__}, 1 thread")
    print(f"sample(1, 256):            {median_us(lambda: full.sample(1, 256), 2000):7.1f} us")
    print(f"sample_batches(1, 256):    {median_us(lambda: full.sample_batches(1, 256), 2000):7.1f} us  "
          "(the trainer's call at one update per phase)")
    print(f"sample(16, 256) per batch: {median_us(lambda: full.sample(16, 256), 300) / 16:7.1f} us")
    for steps in (1, 32, 128):
        buf = ReplayBuffer(100_000, NUM_ENVS, (OBS,), torch.float32, (ACT,), torch.float32, torch.device("cpu"), seed=0)
        lead = (steps, NUM_ENVS) if steps > 1 else (NUM_ENVS,)
        args = (torch.randn(*lead, OBS), torch.randn(*lead, ACT), torch.randn(*lead), torch.zeros(*lead),
                np.ones(lead, dtype=bool))
        per_call = median_us(lambda: buf.add(*args), 2000 if steps == 1 else 300)
        print(f"add {steps:>3} step(s) x {NUM_ENVS} envs:    {per_call / (steps * NUM_ENVS):7.3f} us per transition")


def prioritized_pair(backend: str, capacity: int = CAPACITY) -> Callable[[], object]:
    """sample(256) + update_priorities of its rows, on a full fastrl buffer with this sum tree."""
    import torch

    buf = full_buffer(capacity, prioritized=True, per_backend=backend)
    td = torch.rand(BATCH, generator=torch.Generator().manual_seed(0))

    def pair():
        batch = buf.sample_batches(1, BATCH, beta=0.4)[0]
        buf.update_priorities(batch.indices, td)

    return pair


TREES = ("numba", "torch", "numpy")


def prioritized_timings(capacity: int = CAPACITY, calls: int = 2000, per_call: bool = False,
                        trees: tuple[str, ...] = TREES) -> None:
    import torch

    print(f"prioritized buffer of {capacity} rows, torch {torch.__version__}, 1 thread")
    for backend in trees:
        pair = prioritized_pair(backend, capacity)
        print(f"sample(1, 256) + update_priorities(256), {backend:>5} tree: "
              f"{median_us(pair, calls, per_call=per_call):8.1f} us")


def cpprb_pair(capacity: int = CAPACITY) -> Callable[[], object]:
    """The same pair on cpprb's PrioritizedReplayBuffer (alpha 0.6, beta 0.4), filled in chunks."""
    from cpprb import PrioritizedReplayBuffer

    rb = PrioritizedReplayBuffer(capacity, {"obs": {"shape": OBS}, "act": {"shape": ACT}, "rew": {},
                                            "next_obs": {"shape": OBS}, "done": {}}, alpha=0.6)
    rng = np.random.default_rng(0)
    rows = NUM_ENVS * CHUNK
    for _ in range(capacity // rows + 1):
        rb.add(obs=rng.standard_normal((rows, OBS), dtype=np.float32), act=rng.standard_normal((rows, ACT)),
               rew=rng.standard_normal(rows), next_obs=rng.standard_normal((rows, OBS), dtype=np.float32),
               done=np.zeros(rows))
    td = rng.random(BATCH)

    def pair():
        sample = rb.sample(BATCH, beta=0.4)
        rb.update_priorities(sample["indexes"], td)

    return pair


def cpprb_timings(capacity: int = CAPACITY, calls: int = 2000, per_call: bool = False) -> None:
    from importlib.metadata import version

    print(f"cpprb {version('cpprb')} PrioritizedReplayBuffer of {capacity} rows")
    print(f"sample(256) + update_priorities(256), cpprb: "
          f"{median_us(cpprb_pair(capacity), calls, per_call=per_call):8.1f} us")


def versus_cpprb(capacity: int = CAPACITY, calls: int = 2000, block: int = 100) -> None:
    """fastrl's numba pair and cpprb's in one process, in alternating blocks of `block` calls (the
    order swapped every block), each call timed alone; the first fifth of every block is a warm-up
    and does not count, so that neither side is timed in the caches the other just left. Prints
    each side's median and, per pair of blocks, cpprb's median over fastrl's."""
    import statistics

    import torch
    from importlib.metadata import version

    pairs = {"fastrl numba": prioritized_pair("numba", capacity), "cpprb": cpprb_pair(capacity)}
    block = max(1, min(block, calls))
    warm = block // 5
    times: dict[str, list[float]] = {name: [] for name in pairs}
    ratios = []
    order = list(pairs.items())
    for k in range(max(1, calls // block)):
        medians = {}
        for name, pair in (order if k % 2 else order[::-1]):
            mine = []
            for i in range(block):
                t0 = time.perf_counter()
                pair()
                if i >= warm:
                    mine.append((time.perf_counter() - t0) * 1e6)
            times[name] += mine
            medians[name] = statistics.median(mine)
        ratios.append(medians["cpprb"] / medians["fastrl numba"])
    ratios.sort()
    print(f"prioritized pair, {capacity} rows, blocks of {block} calls alternated: torch {torch.__version__}, "
          f"cpprb {version('cpprb')}")
    for name, values in times.items():
        print(f"sample(256) + update_priorities(256), {name}: {statistics.median(values):8.1f} us "
              f"(median of {len(values)})")
    print(f"cpprb / fastrl per pair of blocks: median {statistics.median(ratios):.2f}x, "
          f"range {ratios[0]:.2f}-{ratios[-1]:.2f}x over {len(ratios)} pairs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--per", action="store_true", help="only the prioritized pair, every fastrl sum tree")
    which.add_argument("--cpprb", action="store_true", help="only the prioritized pair in cpprb (no torch needed)")
    which.add_argument("--versus-cpprb", action="store_true",
                       help="fastrl's numba pair and cpprb's in one process, blocks of calls alternated "
                            "(needs both installed)")
    parser.add_argument("--capacity", type=int, default=CAPACITY, help="rows of the prioritized buffers")
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per repetition of the pair")
    parser.add_argument("--trees", nargs="+", choices=TREES, default=list(TREES),
                        help="the sum trees whose prioritized pair is timed (default: all)")
    parser.add_argument("--block", type=int, default=100,
                        help="--versus-cpprb: calls per block (1: the two sides alternate call by call)")
    parser.add_argument("--per-call", action="store_true",
                        help="the prioritized pair's median over single calls, not over means of --calls calls")
    args = parser.parse_args(argv)
    if args.cpprb:
        cpprb_timings(args.capacity, args.calls, args.per_call)
        return 0
    import torch

    torch.set_num_threads(1)
    if args.versus_cpprb:
        versus_cpprb(args.capacity, args.calls, args.block)
        return 0
    if not args.per:
        uniform_timings()
    prioritized_timings(args.capacity, args.calls, args.per_call, tuple(args.trees))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
