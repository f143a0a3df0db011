"""Replay-buffer micro timings behind the speed issue's targets, medians of 7 repetitions.

    python scripts/buffer_micro.py

sample(256) from a full 1e6 buffer (obs 17, act 6, HalfCheetah-shaped rows) as one call (stacked, and
as the trainer's list of batches) and as one draw of 16 batches, and add of 8 envs one vector step
at a time and in chunks of 32 and 128 steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from fastrl.buffer import ReplayBuffer


def median_us(fn: Callable[[], object], calls: int, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        for _ in range(min(calls, 100)):
            fn()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return sorted(times)[len(times) // 2]


def main() -> int:
    torch.set_num_threads(1)
    num_envs, chunk = 8, 1000
    full = ReplayBuffer(1_000_000, num_envs, (17,), torch.float32, (6,), torch.float32, torch.device("cpu"), seed=0)
    for _ in range(1_000_000 // (num_envs * chunk) + 1):
        full.add(torch.randn(chunk, num_envs, 17), torch.randn(chunk, num_envs, 6), torch.randn(chunk, num_envs),
                 torch.zeros(chunk, num_envs), np.ones((chunk, num_envs), dtype=bool))
    print(f"buffer of {len(full)} sampleable rows, torch {torch.__version__}, 1 thread")
    print(f"sample(1, 256):            {median_us(lambda: full.sample(1, 256), 2000):7.1f} us")
    print(f"sample_batches(1, 256):    {median_us(lambda: full.sample_batches(1, 256), 2000):7.1f} us  "
          "(the trainer's call at one update per phase)")
    print(f"sample(16, 256) per batch: {median_us(lambda: full.sample(16, 256), 300) / 16:7.1f} us")
    for steps in (1, 32, 128):
        buf = ReplayBuffer(100_000, num_envs, (17,), torch.float32, (6,), torch.float32, torch.device("cpu"), seed=0)
        lead = (steps, num_envs) if steps > 1 else (num_envs,)
        args = (torch.randn(*lead, 17), torch.randn(*lead, 6), torch.randn(*lead), torch.zeros(*lead),
                np.ones(lead, dtype=bool))
        per_call = median_us(lambda: buf.add(*args), 2000 if steps == 1 else 300)
        print(f"add {steps:>3} step(s) x {num_envs} envs:    {per_call / (steps * num_envs):7.3f} us per transition")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
