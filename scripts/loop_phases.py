"""Where a training step's time goes, measured inside a real `fastrl.train.train` run.

    python scripts/loop_phases.py                                   # TD3 Pendulum, the peers' settings, 2 threads
    python scripts/loop_phases.py --algo ddpg
    python scripts/loop_phases.py --algo dqn --threads 1 --steps 60000 --learning-starts 10000 \
        --set env=CartPole-v1 num_envs=64 batch_size=128 hidden_sizes=[120,84] train_every=5 updates_per_train=32

Wraps the calls the trainer makes every step (act, env send and recv, buffer add and sample, the
agent's update) in wall-clock timers and runs training. Only the learning phase is counted (from
the first mini-batch sample on). Timers rather than torch.profiler: on this 2-core CPU the
profiler inflates small ops. Then the same act and sample calls are timed back to back (warm),
and each after a 3 ms sleep, for comparison: the loop's calls run with caches that the update
(or any idle wait) left cold.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

import fastrl.train as train_module
from fastrl.buffer import ReplayBuffer
from fastrl.config import resolve
from fastrl.envs import TorchVecEnv
from fastrl.registry import ALGORITHMS, build_agent
from fastrl.train import check_setup, train

PEER_SETTINGS = dict(env="Pendulum-v1", num_envs=1, batch_size=256, hidden_sizes=(256, 256), train_every=1,
                     updates_per_train=1, lr=3e-4, tau=0.005, target_update="soft", eval_every=0,
                     eval_episodes=1, progress=False)


class PhaseTimers:
    """Accumulates seconds per wrapped call once `counting` is set (by the first sample)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: collections.Counter[str] = collections.Counter()
        self.counting = False
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: type, name: str, label: str, starts_counting: bool = False) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if starts_counting:
                self.counting = True
            t0 = time.perf_counter()
            out = original(*args, **kwargs)
            if self.counting:
                self.seconds[label] += time.perf_counter() - t0
                self.calls[label] += 1
            return out

        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, original))

    def pause_during(self, owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def paused(*args: Any, **kwargs: Any) -> Any:
            counting, self.counting = self.counting, False
            try:
                return original(*args, **kwargs)
            finally:
                self.counting = counting

        setattr(owner, name, paused)
        self._undo.append(lambda: setattr(owner, name, original))

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()


def after_sleep_us(fn: Callable[[], Any], sleep_s: float = 0.003, calls: int = 300) -> float:
    """`fn` timed right after an idle wait as long as an update: idle time alone cools the caches."""
    total = 0.0
    for _ in range(calls):
        time.sleep(sleep_s)
        t0 = time.perf_counter()
        fn()
        total += time.perf_counter() - t0
    return total / calls * 1e6


def warm_us(fn: Callable[[], Any], calls: int = 300) -> float:
    for _ in range(30):
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", default="td3", choices=sorted(ALGORITHMS))
    p.add_argument("--steps", type=int, default=8_000)
    p.add_argument("--learning-starts", type=int, default=3_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="other training settings")
    args = p.parse_args(argv)
    settings: dict[str, Any] = {**PEER_SETTINGS, "algo": args.algo, "total_steps": args.steps,
                                "buffer_size": args.steps, "learning_starts": args.learning_starts,
                                "threads": args.threads}
    for item in args.set:
        key, _, raw = item.partition("=")
        try:
            settings[key.replace("-", "_")] = json.loads(raw)
        except ValueError:
            settings[key.replace("-", "_")] = raw
    if settings["algo"] in ("td3", "ddpg"):  # the peers' delays; DQN rejects the setting outright
        settings.setdefault("policy_delay", 2 if settings["algo"] == "td3" else 1)
    run_dir = tempfile.mkdtemp(prefix="loop_phases-")
    cfg = resolve({**settings, "run_dir": run_dir})
    spec, device = check_setup(cfg)

    timers = PhaseTimers()
    agent_type = type(build_agent(spec, cfg, device, False))  # whichever class the registry builds for cfg.algo
    timers.wrap(agent_type, "update", "update")
    timers.wrap(agent_type, "act", "act")
    timers.wrap(TorchVecEnv, "send", "env send")
    timers.wrap(TorchVecEnv, "recv", "env recv")
    timers.wrap(ReplayBuffer, "add", "buffer add")
    # The learning phase starts with its first sample (counting from the first update would miss it).
    timers.wrap(ReplayBuffer, "sample_batches", "buffer sample", starts_counting=True)
    timers.pause_during(train_module, "evaluate_policy")  # the eval envs' steps are not training steps
    t0 = time.perf_counter()
    try:
        summary = train(cfg, spec, device, t0)
    finally:
        timers.restore()
    learning_steps = timers.calls["env recv"]
    step_us = sum(timers.seconds.values()) / max(learning_steps, 1) * 1e6

    print(f"{cfg.algo} {cfg.env}, {cfg.num_envs} env(s), batch {cfg.batch_size}, {torch.get_num_threads()} "
          f"thread(s), torch {torch.__version__}; learning phase: {learning_steps} vector steps; run SPS "
          f"{summary['sps']:.0f} over all {summary['env_steps']} steps")
    print(f"{'call':<14} {'calls':>7} {'us per call':>12} {'us per vector step':>19}")
    for label in ("act", "env send", "buffer sample", "update", "env recv", "buffer add"):
        n = timers.calls[label]
        per_call = timers.seconds[label] / max(n, 1) * 1e6
        per_step = timers.seconds[label] / max(learning_steps, 1) * 1e6
        print(f"{label:<14} {n:>7} {per_call:>12.1f} {per_step:>19.1f}")
    print(f"{'timed total':<14} {'':>7} {'':>12} {step_us:>19.1f}  (the rest of the loop is untimed Python)")

    # The same calls back to back, warm (a fresh agent and buffer, same shapes).
    agent = build_agent(spec, cfg, device, False)
    buffer = ReplayBuffer(4 * cfg.batch_size, cfg.num_envs, spec.obs_shape, spec.obs_dtype, spec.action_shape,
                          spec.action_dtype, device, seed=0)
    envs = TorchVecEnv(spec, cfg.num_envs, cfg.seed, device)
    obs = envs.reset()
    for _ in range(4 * cfg.batch_size // cfg.num_envs):
        actions = agent.random_actions(cfg.num_envs)
        step = envs.step(actions)
        buffer.add(obs, actions, step.reward, step.terminated, valid=~step.is_reset_step)
        obs = step.next_obs
    envs.close()
    batch = buffer.sample_batches(1, cfg.batch_size)[0]
    print(f"warm, back to back: act {warm_us(lambda: agent.act(obs, cfg.learning_starts)):.1f} us, "
          f"buffer sample {warm_us(lambda: buffer.sample_batches(cfg.updates_per_train, cfg.batch_size)):.1f} us, "
          f"update {warm_us(lambda: agent.update(batch), calls=100):.1f} us")
    print(f"after a 3 ms sleep each: act {after_sleep_us(lambda: agent.act(obs, cfg.learning_starts)):.1f} us, "
          f"buffer sample {after_sleep_us(lambda: buffer.sample_batches(cfg.updates_per_train, cfg.batch_size)):.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
