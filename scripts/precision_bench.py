"""fp32 against bf16 updates (`--precision`), timed back to back on this machine; prints the ratio.

    python scripts/precision_bench.py                      # TD3 Pendulum, batch 256, 256-256, 2 threads
    python scripts/precision_bench.py --algos td3 ddpg dqn --threads 1 2 --gradients manual autograd
    python scripts/precision_bench.py --algos sac --threads 1 2   # SAC: bf16 on the hand-written update only
    python scripts/precision_bench.py --threads 1 --clock cpu   # on a machine others are loading

Each variant is an agent built as the trainer builds it (same seed, so the same initial weights),
fed the same mini-batches. A repeat times `--updates` calls of `agent.update` after a warm-up; the
variants take turns repeat by repeat, so a change in the machine's load hits both alike, and the
median of `--repeats` repeats is kept. On a loaded machine trust the ratio, not the milliseconds;
there `--clock cpu` (this process's CPU time) is inflated far less than wall time by other
processes, but only on one thread: with more it also counts OpenMP's spin-waits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for the benchmarks' helpers
from benchmarks.common import random_batch  # noqa: E402
from fastrl.config import resolve  # noqa: E402
from fastrl.envs import lookup_spec  # noqa: E402
from fastrl.learner import PRECISIONS  # noqa: E402
from fastrl.registry import ALGORITHMS  # noqa: E402

WORKLOADS = {  # the peers' settings (scripts/compare_peers.py) and the DQN CartPole preset's net
    "td3": dict(algo="td3", env="Pendulum-v1", batch_size=256, hidden_sizes=(256, 256), policy_delay=2),
    "ddpg": dict(algo="ddpg", env="Pendulum-v1", batch_size=256, hidden_sizes=(256, 256)),
    "dqn": dict(algo="dqn", env="CartPole-v1", batch_size=128, hidden_sizes=(256, 256)),
    # the actor and α every update (policy delay 1, as the peers); bf16 on the hand-written update only
    "sac": dict(algo="sac", env="Pendulum-v1", batch_size=256, hidden_sizes=(256, 256), policy_delay=1),
}


def build(algo: str, precision: str, gradients: str):
    cfg = resolve({**WORKLOADS[algo], "precision": precision, "gradients": gradients})
    spec = lookup_spec(cfg.env)
    torch.manual_seed(0)
    return ALGORITHMS[algo].build(spec, cfg, torch.device("cpu"), False), spec, cfg


def seconds_per_update(agent, batches: list, updates: int, clock=time.perf_counter) -> float:
    t0 = clock()
    for i in range(updates):
        agent.update(batches[i % len(batches)])
    return (clock() - t0) / updates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["td3"], choices=list(WORKLOADS))
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--gradients", nargs="+", default=["manual"], choices=["manual", "autograd"])
    parser.add_argument("--updates", type=int, default=200, help="updates per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args(argv)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"{'threads':>7} {'algo':>5} {'gradients':>9} " + " ".join(f"{p + ' ms':>9}" for p in PRECISIONS)
          + f" {'fp32/bf16':>9}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for algo in args.algos:
            for gradients in args.gradients:
                if algo == "sac" and gradients == "autograd":
                    print(f"{threads:>7} {algo:>5} {gradients:>9} (SAC's autograd update has no bf16 path)")
                    continue
                agents = {}
                for precision in PRECISIONS:
                    agent, spec, cfg = build(algo, precision, gradients)
                    batches = [random_batch(spec, cfg.batch_size, torch.device("cpu"), seed) for seed in range(8)]
                    seconds_per_update(agent, batches, 20)  # warm-up: oneDNN primitives, allocator
                    agents[precision] = (agent, batches)
                times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
                for _ in range(args.repeats):
                    for precision, (agent, batches) in agents.items():
                        times[precision].append(seconds_per_update(agent, batches, args.updates, clock))
                median = {p: statistics.median(t) for p, t in times.items()}
                cells = " ".join(f"{median[p] * 1e3:>9.3f}" for p in PRECISIONS)
                print(f"{threads:>7} {algo:>5} {gradients:>9} {cells} {median['fp32'] / median['bf16']:>8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
