"""`python -m fastrl.train`: the front door. The loop in `train()` reads top to bottom:
collect a vector step, store it, every `train_every` steps run k updates, log, evaluate."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import typing
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastrl.buffer import ReplayBuffer, bytes_per_row, check_fits
from fastrl.checkpoint import save_checkpoint
from fastrl.config import (
    ALGOS, DEVICES, LOSSES, LR_SCHEDULES, TARGET_UPDATES, ConfigError, TrainConfig, describe_presets,
    load_config_file, resolve, validate, validate_for_env,
)
from fastrl.dqn import build_dqn
from fastrl.envs import EnvSpec, TorchVecEnv, lookup_spec
from fastrl.evaluate import evaluate_policy, mean_std
from fastrl.progress import Progress
from fastrl.runlog import RunLog, played_action_entropy, plot_learning_curve, write_summary

AGENT_BUILDERS = {"dqn": build_dqn}

HELP = {
    "algo": "algorithm", "env": "environment id (envpool, else gymnasium)", "seed": "random seed",
    "total_steps": "env steps (transitions over all envs) to collect",
    "num_envs": "parallel envs", "buffer_size": "replay capacity in transitions",
    "batch_size": "mini-batch size", "learning_starts": "env steps of random actions before learning",
    "train_every": "vector steps between train phases",
    "updates_per_train": "mini-batch updates per train phase (with --train-every, --num-envs and "
                         "--batch-size this sets the update-to-data ratio)",
    "lr": "learning rate (critic's, for DDPG/TD3)", "lr_schedule": "learning-rate schedule over updates",
    "lr_k0": "Robbins–Monro: lr_k = lr / (1 + k/k0)^p", "lr_power":
        "Robbins–Monro exponent p, 0.5 < p <= 1: then the sum of steps diverges and the sum of "
        "their squares converges, the conditions for stochastic approximation to converge",
    "lr_end_fraction": "linear schedule: final lr as a fraction of --lr",
    "gamma": "discount in [0, 1]", "target_update": "soft (Polyak, every update) or hard (copy every C)",
    "tau": "soft update rate in (0, 1]", "target_period": "hard update period C in gradient updates",
    "hidden_sizes": "hidden layer sizes, space-separated", "max_grad_norm": "global grad-norm clip (0 = off)",
    "loss": "TD loss", "double_dqn": "Double DQN targets", "eps_start": "initial epsilon",
    "eps_end": "final epsilon", "eps_fraction": "fraction of --total-steps over which epsilon decays",
    "exploration_noise": "Gaussian action noise, as a fraction of the action range's half-width",
    "policy_noise": "TD3 target smoothing noise (fraction of half-width)",
    "noise_clip": "TD3 target smoothing clip (fraction of half-width)",
    "policy_delay": "critic updates per actor update", "actor_lr": "actor learning rate (default: --lr)",
    "device": "auto picks cuda when available", "compile": "torch.compile the update (default: on for CUDA)",
    "run_dir": "run folder (default runs/<env>-<algo>-<seed>-<time>)",
    "eval_episodes": "greedy episodes per evaluation", "eval_every": "env steps between evaluations (0 = end only)",
    "log_every": "env steps between metric rows", "checkpoint_every": "env steps between checkpoints (0 = end only)",
    "checkpoint_buffer": "include the replay buffer in checkpoints", "progress": "progress bar on stderr",
}
CHOICES = {"algo": ALGOS, "lr_schedule": LR_SCHEDULES, "target_update": TARGET_UPDATES, "loss": LOSSES,
           "device": DEVICES}


class _OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # argparse prints usage too; we say one line
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(
        prog="python -m fastrl.train", description="Train DQN / DDPG / TD3 with fastrl.",
        epilog=describe_presets(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="TOML or JSON file of settings; flags override it")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        base = f"{HELP.get(f.name, f.name)} (default {f.default!r}; presets may change it)"
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": base}
        if f.name in CHOICES:
            kwargs["choices"] = CHOICES[f.name]
        if hint in (bool, bool | None):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.name == "hidden_sizes":
            kwargs.update(nargs="+", type=int, metavar="N")
        elif hint in (int,):
            kwargs["type"] = int
        elif hint in (float, float | None):
            kwargs["type"] = float
        parser.add_argument(flag, **kwargs)
    return parser


def config_from_args(argv: list[str] | None) -> TrainConfig:
    args = build_parser().parse_args(argv)
    settings: dict[str, Any] = load_config_file(args.config) if args.config else {}
    settings.update({k: v for k, v in vars(args).items() if v is not None and k != "config"})
    return resolve(settings)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device: cuda requested but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


def check_setup(cfg: TrainConfig) -> tuple[EnvSpec, torch.device]:
    """Everything that can go wrong before envs and models exist. Raises ConfigError."""
    validate(cfg)
    device = resolve_device(cfg.device)
    spec = lookup_spec(cfg.env)
    validate_for_env(cfg, spec.discrete)
    check_fits(cfg.buffer_size, cfg.num_envs,
               bytes_per_row(spec.obs_shape, spec.obs_dtype, spec.action_shape, spec.action_dtype), device)
    return spec, device


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.env.replace('/', '_')}-{cfg.algo}-{cfg.seed}-{stamp}"


def train(cfg: TrainConfig, spec: EnvSpec, device: torch.device, t_start: float) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
    use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    envs = TorchVecEnv(spec, cfg.num_envs, cfg.seed, device)
    eval_envs = TorchVecEnv(spec, min(cfg.eval_episodes, 16), cfg.seed + 100_003, device)
    agent = AGENT_BUILDERS[cfg.algo](spec, cfg, device, use_compile)
    buffer = ReplayBuffer(cfg.buffer_size, cfg.num_envs, spec.obs_shape, spec.obs_dtype, spec.action_shape,
                          spec.action_dtype, device, seed=cfg.seed)
    log = RunLog(run_dir, {**cfg.to_json(), "compile_resolved": use_compile, "device_resolved": str(device)})
    progress = Progress(cfg.total_steps, enabled=cfg.progress)
    print(f"fastrl: {cfg.algo} on {cfg.env} ({spec.backend}), seed {cfg.seed}, device {device}, "
          f"compile {use_compile}, {cfg.num_envs} envs, {cfg.total_steps} steps, batch {cfg.batch_size}, "
          f"{cfg.updates_per_train} updates every {cfg.train_every} vector steps "
          f"(updates/transition {cfg.updates_per_transition:.4g}, replay ratio {cfg.replay_ratio:.4g}); "
          f"run folder {run_dir}", file=sys.stderr)

    action_low = torch.tensor(spec.action_low, device=device) if not spec.discrete else None
    action_high = torch.tensor(spec.action_high, device=device) if not spec.discrete else None
    metric_sum = torch.zeros(3, device=device)  # loss, mean_q, grad_norm summed over the log window
    window_updates, window_actions, window_episodes = 0, [], []
    eval_returns: list[float] = []
    best_eval = -math.inf
    last_log_step, last_eval_step = 0, 0
    t_loop = time.perf_counter()
    env_step = 0
    interrupted = False

    obs = envs.reset()
    try:
        for vector_step in range(cfg.num_vector_steps):
            if env_step < cfg.learning_starts:
                actions = agent.random_actions(cfg.num_envs)
            else:
                actions = agent.act(obs, env_step)
            step = envs.step(actions)
            buffer.add(obs, actions, step.reward, step.terminated, valid=~step.is_reset_step)
            obs = step.next_obs
            env_step += cfg.num_envs
            window_actions.append(actions)

            if env_step >= cfg.learning_starts and (vector_step + 1) % cfg.train_every == 0 and len(buffer) > 0:
                batches = buffer.sample(cfg.updates_per_train, cfg.batch_size)
                for k in range(cfg.updates_per_train):
                    metrics = agent.update(batches[k])
                    metric_sum += torch.stack((metrics["loss"], metrics["mean_q"], metrics["grad_norm"]))
                window_updates += cfg.updates_per_train

            window_episodes += envs.pop_finished_episodes()
            done = vector_step == cfg.num_vector_steps - 1
            evaluation = None
            if done or (cfg.eval_every and env_step - last_eval_step >= cfg.eval_every):
                eval_returns = evaluate_policy(agent.greedy, eval_envs, cfg.eval_episodes)
                evaluation = mean_std(eval_returns)
                best_eval = max(best_eval, evaluation[0])
                last_eval_step = env_step
            if done or evaluation is not None or env_step - last_log_step >= cfg.log_every:
                elapsed = time.perf_counter() - t_loop
                sums = (metric_sum / max(window_updates, 1)).tolist()  # the one host sync per window
                returns = [r for _, r, _ in window_episodes]
                row = {
                    "env_step": env_step, "wall_s": time.perf_counter() - t_start, "sps": env_step / elapsed,
                    "updates": agent.updates_done, "episodes": len(window_episodes),
                    "episodic_return": float(np.mean(returns)) if returns else math.nan,
                    "episodic_length": float(np.mean([n for _, _, n in window_episodes])) if returns else math.nan,
                    "loss": sums[0] if window_updates else math.nan,
                    "mean_q": sums[1] if window_updates else math.nan,
                    "grad_norm": sums[2] if window_updates else math.nan,
                    "lr": agent.current_lr(),
                    "action_entropy": played_action_entropy(torch.stack(window_actions), spec.discrete,
                                                            spec.num_actions, action_low, action_high),
                    "eval_return_mean": evaluation[0] if evaluation else math.nan,
                    "eval_return_std": evaluation[1] if evaluation else math.nan,
                    **agent.exploration(env_step),
                }
                log.write(row)
                progress.update(env_step, row)
                metric_sum.zero_()
                window_updates, window_actions, window_episodes = 0, [], []
                last_log_step = env_step
            elif vector_step % 64 == 0:
                progress.update(env_step, None)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
        wall_s = time.perf_counter() - t_start
        loop_s = time.perf_counter() - t_loop
        save_checkpoint(run_dir / "checkpoint.pt", {
            "config": cfg.to_json(), "env_step": env_step, "agent": agent.state_dict(),
            **({"buffer": buffer.state_dict()} if cfg.checkpoint_buffer else {}),
        })
        log.close()
        eval_mean, eval_std = mean_std(eval_returns) if eval_returns else (math.nan, math.nan)
        summary = {
            "env_id": cfg.env, "algo": cfg.algo, "seed": cfg.seed, "env_steps": env_step,
            "updates": agent.updates_done, "wall_s": wall_s, "sps": env_step / max(loop_s, 1e-9),
            "final_eval_return_mean": eval_mean, "final_eval_return_std": eval_std,
            "final_eval_returns": eval_returns,
            "best_eval_return_mean": best_eval if math.isfinite(best_eval) else math.nan,
            "buffer_bytes_per_transition": buffer.bytes_per_transition,
            "buffer_bytes": buffer.nbytes,
            "updates_per_transition": cfg.updates_per_transition, "replay_ratio": cfg.replay_ratio,
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "torch_version": torch.__version__, "compile": use_compile, "interrupted": interrupted,
            "run_dir": str(run_dir),
        }
        write_summary(run_dir, summary)
        plot_learning_curve(run_dir, f"{cfg.algo} {cfg.env} seed {cfg.seed}")
        envs.close()
        eval_envs.close()
    return summary


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    try:
        cfg = config_from_args(argv)
        spec, device = check_setup(cfg)
    except ConfigError as exc:
        print(f"python -m fastrl.train: error: {exc}", file=sys.stderr)
        return 2
    summary = train(cfg, spec, device, t_start)
    print(f"done: {summary['env_steps']} steps, {summary['updates']} updates in {summary['wall_s']:.1f} s "
          f"({summary['sps']:.0f} SPS); final eval return {summary['final_eval_return_mean']:.1f} "
          f"± {summary['final_eval_return_std']:.1f}; {summary['run_dir']}", file=sys.stderr)
    if summary["interrupted"]:
        print(f"interrupted: checkpoint and summary written in {summary['run_dir']}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
