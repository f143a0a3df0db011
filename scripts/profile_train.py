"""Where does training time go? `torch.profiler` over a few rollouts and train phases.

    python scripts/profile_train.py --out prof/                      # DQN CartPole-v1, device auto
    python scripts/profile_train.py --out prof/ --algo td3           # TD3 Pendulum-v1
    python scripts/profile_train.py --out prof/ --device cuda --compile

Builds the preset's envs, agent and replay buffer from fastrl's public pieces and drives them in a
short loop with the same order of calls as `fastrl.train.train` (act, env send; every
`train_every` vector steps one sample of k mini-batches and k updates; env recv, buffer add),
inside named ranges: rollout, act, env send, env recv, buffer add, train phase, sample, update,
target update (also NVTX ranges on CUDA, for Nsight Systems). "env recv" after a train phase is
the part of the env step the updates did not hide. The buffer is first filled for `learning_starts` steps with random
actions, and one window runs unprofiled so that first-call costs (allocations, compilation) stay
out of the trace. Writes DIR/trace_<algo>_<env>_<device>.json (open it in chrome://tracing or
https://ui.perfetto.dev) and DIR/top_ops.txt, and prints the time per named range and the top ops
by self time (self CUDA time on a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from fastrl.buffer import ReplayBuffer
from fastrl.config import resolve
from fastrl.envs import TorchVecEnv
from fastrl.registry import ALGORITHMS, build_agent
from fastrl.train import check_setup

DEFAULT_ENV = {"dqn": "CartPole-v1", "ddpg": "Pendulum-v1", "td3": "Pendulum-v1"}
RANGES = ("rollout", "act", "env send", "env recv", "env recv after train", "buffer add", "train phase", "sample", "update", "target update")


@contextlib.contextmanager
def named_range(name: str, nvtx: bool) -> Iterator[None]:
    """A profiler range, and an NVTX range too on CUDA (Nsight Systems does not see the former)."""
    with record_function(name):
        if nvtx:
            torch.cuda.nvtx.range_push(name)
        try:
            yield
        finally:
            if nvtx:
                torch.cuda.nvtx.range_pop()


class RangedTargets:
    """Wraps an agent's target updater so its `step`, which the agent calls inside `update`,
    shows up as a nested "target update" range without touching the agent's code."""

    def __init__(self, inner: Any, nvtx: bool):
        self._inner, self._nvtx = inner, nvtx

    def step(self, updates_done: int) -> None:
        with named_range("target update", self._nvtx):
            self._inner.step(updates_done)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the Chrome trace and top_ops.txt")
    p.add_argument("--algo", default="dqn", choices=sorted(ALGORITHMS))
    p.add_argument("--env", help="environment id (default: CartPole-v1 for DQN, Pendulum-v1 otherwise)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the update (default: the trainer's, on for CUDA)")
    p.add_argument("--phases", type=int, default=3, help="profiled windows (after one unprofiled warm-up)")
    p.add_argument("--window", type=int, default=32,
                   help="vector steps per window, rounded up to whole train phases")
    p.add_argument("--top", type=int, default=25, help="rows of the top-ops table")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="extra training settings")
    return p


def parse_settings(items: list[str]) -> dict[str, Any]:
    import json

    out = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            out[key.replace("-", "_")] = json.loads(raw)
        except ValueError:
            out[key.replace("-", "_")] = raw
    return out


def range_table(prof: profile, wall_s: float, cuda: bool) -> str:
    """Total time inside each named range over the profiled windows (ranges nest: "update"
    includes "target update", "rollout" includes act, env send, env recv and buffer add)."""
    events = {e.key: e for e in prof.key_averages() if e.key in RANGES}
    lines = [f"{'range':<21} {'calls':>7} {'CPU total ms':>13} {'% of wall':>9}"
             + (f" {'CUDA total ms':>14}" if cuda else "")]
    for name in RANGES:
        if name not in events:
            continue
        e = events[name]
        cpu_ms = e.cpu_time_total / 1e3
        row = f"{name:<21} {e.count:>7} {cpu_ms:>13.2f} {100 * cpu_ms / 1e3 / wall_s:>8.1f}%"
        if cuda:
            row += f" {e.device_time_total / 1e3:>14.2f}"
        lines.append(row)
    lines.append(f"profiled wall time {wall_s * 1e3:.1f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env_id = args.env or DEFAULT_ENV[args.algo]
    overrides = {"algo": args.algo, "env": env_id, "device": args.device, "progress": False,
                 **parse_settings(args.set)}
    cfg = resolve(overrides)
    spec, device = check_setup(cfg)
    use_compile = args.compile if args.compile is not None else device.type == "cuda"
    cuda = device.type == "cuda"
    torch.manual_seed(cfg.seed)

    envs = TorchVecEnv(spec, cfg.num_envs, cfg.seed, device)
    agent = build_agent(spec, cfg, device, use_compile)
    agent.targets = RangedTargets(agent.targets, cuda)
    buffer = ReplayBuffer(cfg.buffer_size, cfg.num_envs, spec.obs_shape, spec.obs_dtype, spec.action_shape,
                          spec.action_dtype, device, seed=cfg.seed)
    window = -(-max(args.window, cfg.train_every) // cfg.train_every) * cfg.train_every
    print(f"profiling {cfg.algo} on {env_id}, device {device}, compile {use_compile}: {cfg.num_envs} envs, batch "
          f"{cfg.batch_size}, {cfg.updates_per_train} updates every {cfg.train_every} vector steps; "
          f"1 warm-up + {args.phases} profiled windows of {window} vector steps", file=sys.stderr)

    obs = envs.reset()
    env_step = 0
    while env_step < cfg.learning_starts:  # fill the buffer, as the trainer's random-action phase does
        actions = agent.random_actions(cfg.num_envs)
        step = envs.step(actions)
        buffer.add(obs, actions, step.reward, step.terminated, valid=~step.is_reset_step)
        obs, env_step = step.next_obs, env_step + cfg.num_envs

    def run_window() -> None:
        # The trainer's order: act, send the actions, train while envpool's threads step the envs,
        # then receive the step and store it. "env recv" is the time left waiting for the envs:
        # after a train phase it shows how much of the env step the updates hid.
        nonlocal obs, env_step
        for vector_step in range(window):
            with named_range("rollout", cuda):
                with named_range("act", cuda):
                    actions = agent.act(obs, env_step)
                with named_range("env send", cuda):
                    envs.send(actions)
            trained = (vector_step + 1) % cfg.train_every == 0
            if trained:
                with named_range("train phase", cuda):
                    with named_range("sample", cuda):
                        batches = buffer.sample_batches(cfg.updates_per_train, cfg.batch_size)
                    for batch in batches:
                        with named_range("update", cuda):
                            agent.update(batch)
            with named_range("rollout", cuda):
                with named_range("env recv after train" if trained else "env recv", cuda):
                    step = envs.recv()
                with named_range("buffer add", cuda):
                    buffer.add(obs, actions, step.reward, step.terminated, valid=~step.is_reset_step)
            obs, env_step = step.next_obs, env_step + cfg.num_envs
        if cuda:  # the window's GPU work belongs to the window
            torch.cuda.synchronize(device)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trace = out / f"trace_{cfg.algo}_{env_id.replace('/', '_')}_{device.type}.json"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    run_window()  # warm-up, unprofiled: first-call allocations and compilation stay out
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(args.phases):
            run_window()
        wall_s = time.perf_counter() - t0
    prof.export_chrome_trace(str(trace))
    envs.close()

    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    top = prof.key_averages().table(sort_by=sort_by, row_limit=args.top)
    ranges = range_table(prof, wall_s, cuda)
    header = (f"{cfg.algo} {env_id} on {device} (compile {use_compile}, torch {torch.__version__}), "
              f"{args.phases} windows × {window} vector steps")
    (out / "top_ops.txt").write_text(f"{header}\n\nnamed ranges\n{ranges}\n\ntop ops by {sort_by}\n{top}\n")
    print(f"{header}\n\nnamed ranges\n{ranges}\n\ntop ops by {sort_by}\n{top}")
    print(f"wrote {trace} (open in chrome://tracing or ui.perfetto.dev) and {out / 'top_ops.txt'}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
