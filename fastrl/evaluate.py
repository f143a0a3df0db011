"""Evaluation on separate eval envs (made for the "eval" role: Atari plays whole games with
unclipped rewards), and `python -m fastrl.evaluate RUN_DIR`.

The evaluation policy is the agent's `evaluation_actions` where it has one (DQN: ε-greedy at
--eval-epsilon, drawn from its own evaluation generator), else its deterministic `greedy`."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fastrl.envs import TorchVecEnv

if TYPE_CHECKING:
    from fastrl.policy import Policy


ActFn = Callable[[torch.Tensor], torch.Tensor]  # observations [N, ...] -> actions [N, ...]


def evaluation_policy(agent: Any) -> ActFn:
    """How `agent` acts in evaluation: its `evaluation_actions`, or `greedy` if it has none."""
    return getattr(agent, "evaluation_actions", agent.greedy)


@torch.no_grad()
def evaluate_policy(policy: Callable[[torch.Tensor], torch.Tensor], envs: TorchVecEnv, episodes: int) -> list[float]:
    """Returns of `episodes` complete episodes. Each env contributes the same number of episodes,
    its first ones, so short episodes are not over-represented (as they would be if we kept
    whichever finished first)."""
    return evaluate_groups(policy, envs, episodes, 1)[0]


@torch.no_grad()
def evaluate_groups(policy: Callable[[torch.Tensor], torch.Tensor], envs: TorchVecEnv, episodes: int,
                    groups: int) -> list[list[float]]:
    """`evaluate_policy` for `groups` policies side by side (stacked members): group g plays envs
    [g m, (g + 1) m) of the m = num_envs / groups each, and gets `episodes` returns of its own."""
    per_group = envs.num_envs // groups
    quota = math.ceil(episodes / per_group)
    per_env: list[list[float]] = [[] for _ in range(envs.num_envs)]
    obs = envs.reset()
    envs.pop_finished_episodes()
    while any(len(r) < quota for r in per_env):
        obs = envs.step(policy(obs)).next_obs
        for env_index, ret, _length in envs.pop_finished_episodes():
            if len(per_env[env_index]) < quota:
                per_env[env_index].append(ret)
    # Round-robin over envs so that trimming to `episodes` keeps the counts balanced.
    envs_of = [range(g * per_group, (g + 1) * per_group) for g in range(groups)]
    return [[per_env[e][k] for k in range(quota) for e in group][:episodes] for group in envs_of]


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


# --- `python -m fastrl.evaluate RUN_DIR`: evaluation episodes from a run's checkpoint ---

def record_gif(policy: Policy, env_id: str, path: Path, seed: int, max_frames: int = 500) -> str | None:
    """One greedy episode of the gymnasium env `env_id`, rendered to an animated GIF (Pillow, which
    envpool already installs). Returns why not, when the env cannot be rendered."""
    import gymnasium as gym

    if env_id not in gym.registry:
        return f"gymnasium has no {env_id} to render (envpool envs cannot render)"
    try:
        env = gym.make(env_id, render_mode="rgb_array")
    except Exception as exc:  # missing optional dependencies surface here as many exception types
        return f"{env_id} cannot be built for rendering: {exc}"
    try:
        obs_shape = policy.obs_shape  # as the env gives observations
        if tuple(env.observation_space.shape) != tuple(obs_shape):
            # e.g. Atari: envpool's observations are preprocessed (grey, 84x84, stacked); gymnasium's are not
            return f"gymnasium's {env_id} observes {env.observation_space.shape}, the policy was trained on {obs_shape}"
        frames = []
        obs, _ = env.reset(seed=seed)
        for _ in range(max_frames):
            frames.append(np.asarray(env.render()))
            action = policy.act(np.asarray(obs))  # in the env's action space
            obs, _, terminated, truncated, _ = env.step(int(action) if policy.spec.discrete else action)
            if terminated or truncated:
                frames.append(np.asarray(env.render()))
                break
        fps = env.metadata.get("render_fps") or 30
    except Exception as exc:  # gymnasium.error.DependencyNotInstalled (pygame), OpenGL errors (MuJoCo), ...
        return f"{env_id} cannot render: {exc}"
    finally:
        env.close()
    from PIL import Image

    images = [Image.fromarray(f.astype(np.uint8)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return None


def main(argv: list[str] | None = None) -> int:
    from fastrl.checkpoint import load_run_checkpoint, made_by_env_fn
    from fastrl.config import ConfigError, config_from_checkpoint
    from fastrl.members import plan_members
    from fastrl.policy import policy_from_checkpoint

    parser = argparse.ArgumentParser(prog="python -m fastrl.evaluate",
                                     description="Evaluation episodes (greedy; DQN: ε-greedy at the run's "
                                                 "--eval-epsilon) from a run's checkpoint: mean ± std, and a GIF.")
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")  # one line, no usage
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes (default 10)")
    parser.add_argument("--seed", type=int, default=None, help="env seed (default: the run's seed + 200003)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    parser.add_argument("--member", type=int, default=None,
                        help="a run of stacked members (--num-seeds, --sweep): evaluate this member (default: all)")
    parser.add_argument("--video", action=argparse.BooleanOptionalAction, default=True,
                        help="write RUN_DIR/eval.gif of one episode where the env can render (default on)")
    args = parser.parse_args(argv)
    try:
        if args.episodes <= 0:
            raise ConfigError(f"--episodes: must be a positive integer, got {args.episodes}")
        if args.seed is not None and args.seed < 0:
            raise ConfigError(f"--seed: must be an integer >= 0, got {args.seed}")
        state = load_run_checkpoint(args.run_dir, flag="RUN_DIR")
        if made_by_env_fn(state.get("env_spec")):
            raise ConfigError(f"RUN_DIR: this run trained on an env made in Python (env_fn={state['config']['env']}), "
                              f"which the command line cannot rebuild; evaluate it from Python: "
                              f"fastrl.load_policy(RUN_DIR) and your env")
        members = plan_members(config_from_checkpoint(state["config"], "RUN_DIR"))
        chosen = [args.member] if args.member is not None or members is None else range(len(members))
        policies = [policy_from_checkpoint(state, args.device, "RUN_DIR", member) for member in chosen]
    except ConfigError as exc:
        print(f"python -m fastrl.evaluate: error: {exc}", file=sys.stderr)
        return 2
    for member, policy in zip(chosen, policies):
        evaluate_one(policy, args, None if members is None else members[member])
    return 0


def evaluate_one(policy: Policy, args: argparse.Namespace, member: Any) -> None:
    """The evaluation line (and GIF) of one policy; `member`: which member of a stacked run."""
    cfg, spec, device = policy.config, policy.spec, policy.device
    seed = args.seed if args.seed is not None else cfg.seed + 200_003
    envs = TorchVecEnv(spec, min(args.episodes, 16), seed, device, role="eval")
    try:
        returns = evaluate_policy(evaluation_policy(policy.agent), envs, args.episodes)
    finally:
        envs.close()
    mean, std = mean_std(returns)
    policy_name = f"ε-greedy (ε = {cfg.eval_epsilon:g})" if cfg.eval_epsilon else "greedy"  # only DQN sets it
    who = "" if member is None else f"{member.describe()}, "
    print(f"{cfg.algo} on {cfg.env}, {who}checkpoint at env step {policy.env_step}: {policy_name} return "
          f"{mean:.2f} ± {std:.2f} over {len(returns)} episodes")
    if args.video:
        gif = Path(args.run_dir) / ("eval.gif" if member is None else f"eval-member{member.index}.gif")
        why_not = record_gif(policy, cfg.env, gif, seed)
        print(f"video: {gif}" if why_not is None else f"no video: {why_not}")


if __name__ == "__main__":
    sys.exit(main())
