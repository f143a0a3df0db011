"""What data-parallel training pays per update: bytes all-reduced against FLOPs computed.

    python scripts/allreduce_cost.py                 # the DQN CartPole preset and TD3 256-256 batch 256
    python scripts/allreduce_cost.py --ranks 2 4 --repeats 200

For each workload the real update runs in one process with `fastrl.learner.average_gradients_`
replaced by a counter, so the gradient floats per update are those the trainer all-reduces
(TD3: the critics' every update, the actor's every --policy-delay updates). FLOPs per update are
scripts/flop_ceiling.py's count (matrix products only, 2 per multiply-add). Then `--ranks` gloo
processes on this machine time an all_reduce of each of those gradients (SUM, then the 1/N
scale, as `fastrl.distributed` does), back to back.

Columns: `bytes` = floats x 4 (one rank's gradient), `x ranks` = bytes x N (what all ranks put
in), `ring/rank` = 2(N-1)/N x bytes (what a ring all_reduce sends from each rank), FLOP/byte =
FLOPs per update / bytes; then times, one thread: the update on the whole batch B in one process,
the update on B/N rows (what each rank computes, the mini-batch being split over the ranks), the
all_reduce on N ranks, and `speedup` = update(B) / (update(B/N) + all_reduce): what N ranks can
gain on the update at best (the envs, split N ways too, come on top).
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import flop_ceiling  # noqa: E402
from benchmarks.common import random_batch  # noqa: E402
from fastrl import learner  # noqa: E402
from fastrl.config import resolve  # noqa: E402
from fastrl.envs import lookup_spec  # noqa: E402

WORKLOADS = {
    "dqn CartPole preset (256-256, batch 128)": "dqn-preset",
    "td3 Pendulum (256-256, batch 256)": "td3",
}


def gradient_floats(name: str, updates: int = 8) -> tuple[list[int], int]:
    """The sizes of the gradients `updates` updates all-reduce, in order, and `updates` (counted at
    the call in `fastrl.learner.clip_and_step`)."""
    build, settings = flop_ceiling.WORKLOADS[name]
    cfg = resolve(settings)
    spec = lookup_spec(cfg.env)
    agent = build(spec, cfg, torch.device("cpu"), False)
    seen: list[int] = []
    real = learner.average_gradients_
    learner.average_gradients_ = lambda grads: seen.extend(g.numel() for g in grads)
    try:
        for i in range(updates):
            agent.update(random_batch(spec, cfg.batch_size, torch.device("cpu"), i))
    finally:
        learner.average_gradients_ = real
    return seen, updates


def update_seconds(name: str, batch_size: int, repeats: int) -> float:
    """Seconds per update of workload `name` on mini-batches of `batch_size` rows."""
    build, settings = flop_ceiling.WORKLOADS[name]
    cfg = resolve({**settings, "batch_size": batch_size})
    spec = lookup_spec(cfg.env)
    agent = build(spec, cfg, torch.device("cpu"), False)
    batches = [random_batch(spec, batch_size, torch.device("cpu"), seed) for seed in range(8)]
    for b in batches:
        agent.update(b)
    t0 = time.perf_counter()
    for i in range(repeats):
        agent.update(batches[i % len(batches)])
    return (time.perf_counter() - t0) / repeats


def _time_all_reduce(rank: int, size: int, port: int, sizes: list[list[int]], repeats: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size, timeout=datetime.timedelta(seconds=120))
    results = []
    for per_update in sizes:
        grads = [torch.randn(n) for n in per_update]
        for g in grads:
            dist.all_reduce(g)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(repeats):
            for g in grads:
                dist.all_reduce(g)
                g.mul_(1.0 / size)
        results.append((time.perf_counter() - t0) / repeats)
    if rank == 0:
        out["seconds"] = results
    dist.destroy_process_group()


def all_reduce_seconds(size: int, sizes: list[list[int]], repeats: int) -> list[float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_time_all_reduce, args=(size, port, sizes, repeats, out), nprocs=size, join=True)
        return list(out["seconds"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for label, name in WORKLOADS.items():
        seen, updates = gradient_floats(name)
        r = flop_ceiling.measure(name, args.repeats)
        rows.append((label, name, seen, updates, r["flops"], r["update_s"]))
    print(f"{'workload':<42} {'ranks':>5} {'floats':>7} {'bytes':>7} {'x ranks':>8} {'ring/rank':>9} "
          f"{'MFLOP':>6} {'FLOP/byte':>9} {'upd(B) ms':>9} {'upd(B/N) ms':>11} {'allreduce ms':>12} {'speedup':>7}")
    for size in args.ranks:
        # The all_reduces of `updates` updates are timed together and divided: TD3's actor's come
        # every other update.
        cycles = all_reduce_seconds(size, [seen for _, _, seen, *_ in rows], max(args.repeats // 8, 10))
        for (label, name, seen, updates, flops, update_s), cycle_s in zip(rows, cycles):
            reduce_s = cycle_s / updates
            part_s = update_seconds(name, resolve(flop_ceiling.WORKLOADS[name][1]).batch_size // size, args.repeats)
            nbytes = 4 * sum(seen) / updates
            print(f"{label:<42} {size:>5} {nbytes / 4:>7.0f} {nbytes:>7.0f} {nbytes * size:>8.0f} "
                  f"{2 * (size - 1) / size * nbytes:>9.0f} {flops / 1e6:>6.1f} {flops / nbytes:>9.0f} "
                  f"{update_s * 1e3:>9.3f} {part_s * 1e3:>11.3f} {reduce_s * 1e3:>12.3f} "
                  f"{update_s / (part_s + reduce_s):>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
