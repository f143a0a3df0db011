"""One learner update's time by workload and mode, as a markdown table (for scripts/gpu_check.sh).

    python scripts/update_latency.py --device cuda
    python scripts/update_latency.py --device cpu --modes eager compiled --calls 50

Workloads: the DQN CartPole preset's net (256-256) at batch 128, DQN's Nature CNN on 4x84x84 frames
at batch 32, TD3's 256-256 nets at batch 256 (policy delay 2: critic-only and actor updates
alternate, so the figure is their mean). Modes: eager, compiled (`torch.compile`), graphed (one
CUDA graph per update, the update eager inside it) and compiled+graphed (`--compile --cuda-graph`).

`agent.update(batch)` is timed as the trainer calls it (lr schedule, target update, graph input
copies included) on one fixed batch, after warm-up calls that compile and capture (their time is
the "warm-up s" column). Two figures per row: back to back (N calls, one sync at the end: the host
runs ahead of the device, as in training) and synced (a sync after each call: the latency the host
sees). The same thing per batch size, through pytest-benchmark: benchmarks/test_learner.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import torch

from benchmarks.common import random_batch, synchronized
from fastrl.config import resolve
from fastrl.cuda_graph import WARMUP_CALLS
from fastrl.envs import EnvSpec, lookup_spec
from fastrl.registry import build_agent

MODES = ("eager", "compiled", "graphed", "compiled+graphed")
# Enough calls for every graph (TD3 has two) to warm up, capture and replay a few times; compiling
# happens in the first call of each.
WARMUP = 2 * (WARMUP_CALLS + 2)


@dataclass(frozen=True)
class Workload:
    name: str
    algo: str
    env_id: str
    batch_size: int
    hidden_sizes: tuple[int, ...]

    def spec(self) -> EnvSpec:
        if self.env_id == "Breakout-v5":  # only the frames' shape matters: no Atari env (or ROM) needed
            return EnvSpec("Breakout-v5", "envpool", (4, 84, 84), torch.uint8, True, 4, (), (), (), None)
        return lookup_spec(self.env_id)


WORKLOADS = {
    "dqn": Workload("DQN CartPole 256-256, batch 128", "dqn", "CartPole-v1", 128, (256, 256)),
    "cnn": Workload("DQN Nature CNN 4x84x84, batch 32", "dqn", "Breakout-v5", 32, (512,)),
    "td3": Workload("TD3 Pendulum 256-256, batch 256", "td3", "Pendulum-v1", 256, (256, 256)),
}


def time_updates(work: Workload, mode: str, device: torch.device, calls: int) -> tuple[float, float, float]:
    """(warm-up s, us per update back to back, us per update synced)."""
    use_compile, graphed = mode.startswith("compiled"), mode.endswith("graphed")
    cfg = resolve({"algo": work.algo, "env": work.env_id, "batch_size": work.batch_size,
                   "hidden_sizes": work.hidden_sizes, "device": device.type, "lr_schedule": "constant",
                   "compile": use_compile, "cuda_graph": graphed})
    spec = work.spec()
    torch.manual_seed(0)
    agent = build_agent(spec, cfg, device, use_compile)
    batch = random_batch(spec, work.batch_size, device, seed=0)
    sync = synchronized(lambda: None, device)
    t0 = time.perf_counter()
    for _ in range(WARMUP):
        agent.update(batch)
    sync()
    warm_up_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(calls):
        agent.update(batch)
    sync()
    back_to_back = (time.perf_counter() - t0) / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        agent.update(batch)
        sync()
    synced = (time.perf_counter() - t0) / calls
    return warm_up_s, back_to_back * 1e6, synced * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--calls", type=int, default=300, help="timed calls per figure (even: TD3 alternates)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("update_latency: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"### Update latency: {where}, torch {torch.__version__}, {args.calls} timed calls per figure\n")
    print("| workload | mode | warm-up s | us/update back to back | us/update synced | updates/s back to back |")
    print("|---|---|---|---|---|---|")
    failed = False
    for key in args.workloads:
        work = WORKLOADS[key]
        for mode in args.modes:
            if mode.endswith("graphed") and device.type != "cuda":
                print(f"| {work.name} | {mode} | needs CUDA | | | |", flush=True)
                continue
            try:
                warm_up_s, b2b, synced = time_updates(work, mode, device, args.calls)
            except Exception as exc:  # one failing mode must not hide the others' figures
                failed = True
                print(f"| {work.name} | {mode} | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]} | | | |",
                      flush=True)
                continue
            print(f"| {work.name} | {mode} | {warm_up_s:.1f} | {b2b:.0f} | {synced:.0f} | {1e6 / b2b:.0f} |", flush=True)
    print()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
