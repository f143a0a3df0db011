"""One DQN CartPole update of E stacked members against the single agent's, in one process.

    python -m benchmarks.members_update [--hidden-sizes 256 256] [--members 1 4 16] [--rounds 7] [--threads 1]

Every round times each variant once (a block of updates), variants alternated, so a load change
on a shared machine hits them alike; medians over rounds are printed with the load average. The
single agent is the default path (`build_dqn`, the one-member hand-written update); "E members"
is `build_dqn_members` at batch [E, B]. The ratio column is the time of one E-member update over
E single-agent updates: below 1, stacking beats running the members one after another.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from benchmarks.common import random_batch
from fastrl.buffer import Batch
from fastrl.config import resolve
from fastrl.dqn import build_dqn
from fastrl.dqn_members import build_dqn_members
from fastrl.envs import lookup_spec
from fastrl.members import member_configs, plan_members


def stacked_batch(batch: Batch, members: int) -> Batch:
    return Batch(*(None if f is None else f.expand(members, *f.shape).contiguous() for f in batch._fields()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden-sizes", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--members", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--updates", type=int, default=40, help="updates per timed block")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every variant (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = lookup_spec("CartPole-v1")
    device = torch.device("cpu")
    base = {"hidden_sizes": tuple(args.hidden_sizes), "batch_size": args.batch_size, "precision": args.precision,
            "lr_schedule": "constant"}
    batch = random_batch(spec, args.batch_size, device)
    batch.actions = batch.actions.float()
    variants = {"single": (build_dqn(spec, resolve(base), device, False), batch)}
    for e in args.members:
        cfg = resolve({**base, "num_seeds": e})
        configs = member_configs(cfg, plan_members(cfg)) if e > 1 else [cfg]
        variants[f"{e} members"] = (build_dqn_members(spec, cfg, configs, device), stacked_batch(batch, e))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for agent, b in variants.values():
        for _ in range(5):
            agent.update(b)
    for _ in range(args.rounds):
        for name, (agent, b) in variants.items():
            start = time.perf_counter()
            for _ in range(args.updates):
                agent.update(b)
            times[name].append((time.perf_counter() - start) / args.updates)
    single = statistics.median(times["single"])
    print(f"load average {os.getloadavg()}, hidden {args.hidden_sizes}, batch {args.batch_size}, {args.precision}, "
          f"{torch.get_num_threads()} thread(s)")
    for name, ts in times.items():
        e = 1 if name == "single" else int(name.split()[0])
        med = statistics.median(ts)
        print(f"{name:>12}: {med * 1e3:8.3f} ms/update  ({med / (e * single):.3f} x {e} single updates)")


if __name__ == "__main__":
    main()
