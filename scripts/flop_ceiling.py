"""FLOPs per update, this machine's GEMM rate, and what fraction of that ceiling fastrl reaches.

    python scripts/flop_ceiling.py                      # TD3, DDPG, SAC Pendulum (peer settings), DQN CartPole (CleanRL's net, fastrl's preset)
    python scripts/flop_ceiling.py --threads 1 2
    python scripts/flop_ceiling.py --precision bf16     # the bf16 updates against the bf16 GEMM rate

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on the real `agent.update` (matrix
products only: mm/bmm/baddbmm, 2 FLOPs per multiply-add; the elementwise work is left out, so the
ceiling is optimistic). The GEMM rate is the best of square matmuls of a few sizes in --precision's
dtype, timed here with the same threads (in bf16 the narrow first and output layers still multiply
in fp32: again optimistic). The ceiling in updates/s is rate / FLOPs per update; one update per env step
makes it the SPS ceiling (env stepping and acting are left out, so it is again optimistic).

"matmuls alone" replays the update's own matrix products (recorded from a real update: same
shapes, strides, orientations and out= tensors) back to back: at these small shapes MKL runs
below its square-GEMM rate, so this, not the ceiling, bounds what any fp32 update built on these
products can reach here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for the benchmarks' helpers
from benchmarks.common import random_batch  # noqa: E402
from fastrl.config import resolve  # noqa: E402
from fastrl.dqn import build_dqn  # noqa: E402
from fastrl.envs import lookup_spec  # noqa: E402
from fastrl.learner import PRECISIONS  # noqa: E402
from fastrl.sac import build_sac  # noqa: E402
from fastrl.td3 import build_ddpg, build_td3  # noqa: E402

WORKLOADS = {  # peer settings: batch 256, 256-256 (TD3/DDPG/SAC); CleanRL's DQN CartPole net
    "td3": (build_td3, dict(algo="td3", env="Pendulum-v1", batch_size=256, hidden_sizes=(256, 256), policy_delay=2)),
    "ddpg": (build_ddpg, dict(algo="ddpg", env="Pendulum-v1", batch_size=256, hidden_sizes=(256, 256))),
    "dqn": (build_dqn, dict(algo="dqn", env="CartPole-v1", batch_size=128, hidden_sizes=(120, 84))),
    # fastrl's own CartPole preset (256-256, batch 128): the workload of `python -m fastrl.train`
    "dqn-preset": (build_dqn, dict(algo="dqn", env="CartPole-v1")),
    # SAC: the actor and α every update (policy delay 1), both update paths
    "sac": (build_sac, dict(algo="sac", env="Pendulum-v1", batch_size=256, hidden_sizes=(256, 256),
                            gradients="manual")),
    "sac-autograd": (build_sac, dict(algo="sac", env="Pendulum-v1", batch_size=256, hidden_sizes=(256, 256),
                                     gradients="autograd")),
}


def gemm_rate(sizes: tuple[int, ...] = (256, 512, 1024), repeats: int = 20, dtype: torch.dtype = torch.float32,
              budget_s: float = 1.0) -> float:
    """Best matmul FLOP/s over a few square sizes: `repeats` products a size, or as many as fit in
    `budget_s` (at least one) where they are slow, as bf16 is on a CPU that emulates it."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        t0 = time.perf_counter()
        a @ b
        count = max(1, min(repeats, int(budget_s / (time.perf_counter() - t0))))
        for _ in range(min(2, count - 1)):
            a @ b
        t0 = time.perf_counter()
        for _ in range(count):
            a @ b
        best = max(best, 2 * n**3 * count / (time.perf_counter() - t0))
    return best


class _RecordMatmuls(TorchDispatchMode):
    """Keeps every matrix-product call (op, its tensors, kwargs) that runs under it, in order."""

    OPS = ("mm", "bmm", "addmm", "baddbmm")

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket.__name__ in self.OPS:
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def matmuls_alone_seconds(agent, batches: list, cycle: int, repeats: int) -> float:
    """Seconds per update of the update's own matrix products, replayed back to back on the same
    tensors (shapes, strides, out= forms, threads): the update's time if everything else were free."""
    with _RecordMatmuls() as recorder:
        for i in range(cycle):
            agent.update(batches[i])
    calls = recorder.calls
    for func, args, kwargs in calls:
        func(*args, **kwargs)
    t0 = time.perf_counter()
    for _ in range(repeats // cycle):
        for func, args, kwargs in calls:
            func(*args, **kwargs)
    return (time.perf_counter() - t0) / ((repeats // cycle) * cycle)


def measure(name: str, repeats: int, precision: str = "fp32") -> dict:
    build, settings = WORKLOADS[name]
    cfg = resolve({**settings, "precision": precision})
    spec = lookup_spec(cfg.env)
    agent = build(spec, cfg, torch.device("cpu"), False)
    batches = [random_batch(spec, cfg.batch_size, torch.device("cpu"), seed) for seed in range(8)]
    # Count over a whole actor cycle (policy_delay updates), so TD3's every-other actor step is averaged in.
    cycle = cfg.policy_delay if name != "dqn" else 1
    with FlopCounterMode(display=False) as counter:
        for i in range(cycle):
            agent.update(batches[i])
    flops = counter.get_total_flops() / cycle
    for b in batches:
        agent.update(b)
    t0 = time.perf_counter()
    for i in range(repeats):
        agent.update(batches[i % len(batches)])
    seconds = (time.perf_counter() - t0) / repeats
    return {"flops": flops, "update_s": seconds, "matmuls_s": matmuls_alone_seconds(agent, batches, cycle, repeats)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32", help="fastrl's --precision")
    args = parser.parse_args(argv)
    dtype = PRECISIONS[args.precision]
    print(f"{'threads':>7} {'algo':>12} {'MFLOP/update':>12} {'GEMM GFLOP/s':>12} {'ceiling upd/s':>13} "
          f"{'update ms':>9} {'upd/s':>7} {'of ceiling':>10} {'matmuls alone ms':>16} {'their upd/s':>11}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        rate = gemm_rate(dtype=dtype)
        for name in args.algos:
            r = measure(name, args.repeats, args.precision)
            ceiling = rate / r["flops"]
            print(f"{threads:>7} {name:>12} {r['flops'] / 1e6:>12.1f} {rate / 1e9:>12.1f} {ceiling:>13.0f} "
                  f"{r['update_s'] * 1e3:>9.3f} {1 / r['update_s']:>7.0f} {1 / r['update_s'] / ceiling:>10.0%} "
                  f"{r['matmuls_s'] * 1e3:>16.3f} {1 / r['matmuls_s']:>11.0f}")
    # For reference: the two precisions' GEMM rates here (fastrl's --precision; the peers train in fp32).
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"{threads} thread(s): bf16 GEMM {gemm_rate(dtype=torch.bfloat16) / 1e9:.1f} GFLOP/s against fp32 "
              f"{gemm_rate() / 1e9:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
