"""`python -m fastrl.train`: the front door. The loop in `train()` reads top to bottom:
collect a vector step, store it, every `train_every` steps run k updates, log, evaluate,
checkpoint, and stop early if a signal (or the Python API's callback) asked for it.

From Python this module is also the function `fastrl.train(config, ...)` (see `fastrl.api`): a
package cannot hold a function and a submodule under one name, so the module is callable.

With `--num-seeds N` / `--sweep NAME=V1,V2,...` the same loop drives many independent agents
as one stacked computation (`fastrl.members`): one vector env holds every member's envs, the
counts (env steps, updates) are per member, and logging, evaluation and checkpoints are per member.

`torchrun --nproc-per-node N -m fastrl.train` runs the same loop on N ranks, data-parallel
(`fastrl.distributed` says what is per rank and what counts the whole run). Its hooks in
`train()` are the `distributed.*` calls; in a plain run none of them communicates.

Exit codes: 0 done, 2 a bad setting (nothing was started), 3 NaN/Inf in training (the last good
checkpoint is kept), 4 the ranks' weights differ, 5 a rank lost its peers (crashed, hung or
unreachable; the last checkpoint is kept), 130 / 143 stopped by SIGINT / SIGTERM (checkpoint
written; `--resume` it).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
import time
import types
import typing
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastrl import distributed
from fastrl.buffer import ReplayBuffer, bytes_per_row, check_fits
from fastrl.checkpoint import (
    CHECKPOINT_NAME, RunCounters, env_seed, load_run_checkpoint, made_by_env_fn, save_checkpoint, set_rng_state,
    training_payload,
)
from fastrl.config import (
    FIELDS, ConfigError, TrainConfig, auto_threads, config_from_checkpoint, describe_presets, load_config_file,
    resolve, resolve_device, resolved_settings, validate, validate_for_env,
)
from fastrl.envs import EnvSpec, TorchVecEnv, lookup_spec
from fastrl.evaluate import evaluate_groups, evaluate_policy, evaluation_policy, mean_std
from fastrl.finite import NonFiniteError, check_metrics, check_weights
from fastrl.interrupts import StopRequest, stop_on_signals
from fastrl.learner import bf16_unsupported_note
from fastrl.member_replay import MemberReplay
from fastrl.members import Member, MemberBook, check_members, member_configs, plan_members
from fastrl.metrics import MetricWindow
from fastrl.progress import Progress
from fastrl.registry import ALGORITHMS, build_agent
from fastrl.runlog import RunLog, played_action_entropy, plot_learning_curve, write_summary
from fastrl.schedules import linear, train_phase_due
from fastrl.settings import flag

EXIT_BAD_SETTING = 2
TORCH_DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice (the cores), before any run changes it
EXIT_NON_FINITE = 3
EXIT_RANKS_DIFFER = 4
EXIT_PEER_LOST = 5
FAILURES = {  # what stopped a run -> its exit code, and what to try
    NonFiniteError: (EXIT_NON_FINITE, ". Try a lower --lr or --max-grad-norm, and check the env's rewards and "
                                      "observations for NaN/Inf"),
    distributed.ReplicaMismatchError: (EXIT_RANKS_DIFFER, ". Identical updates need the same torch, thread count "
                                                          "and CPU/GPU kind on every rank"),
    distributed.PeerLostError: (EXIT_PEER_LOST, ". Look for the failing rank's error above"),
}
MAX_EVAL_ENVS = 16  # evaluation runs min(--eval-episodes, this) envs side by side
# Settings a resumed run may change: none alters what the run computes up to its old end.
RESUME_OVERRIDES = ("total_steps", "progress", "collective_timeout")

class _OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # argparse prints usage too; we say one line
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(
        prog="python -m fastrl.train", description=f"Train {' / '.join(a.upper() for a in ALGORITHMS)} with fastrl.",
        epilog=describe_presets(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="TOML or JSON file of settings; flags override it")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its checkpoint, with its settings; only "
                             "--total-steps (to extend it) and --progress/--no-progress may be given too")
    hints = typing.get_type_hints(TrainConfig)
    for f in FIELDS.values():
        hint = hints[f.name]
        base = f"{f.metadata.get('help', f.name)} (default {f.default!r}; presets may change it)"
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": base.replace("%", "%%")}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        if hint in (bool, bool | None):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.name == "hidden_sizes":
            kwargs.update(nargs="+", type=int, metavar="N")
        elif f.name == "sweep":
            kwargs.update(action="append", metavar="NAME=V1,V2,...")
        elif hint in (int,):
            kwargs["type"] = int
        elif hint in (float, float | None):
            kwargs["type"] = float
        parser.add_argument(flag(f.name), **kwargs)
    return parser


def _given(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if v is not None and k not in ("config", "resume")}


def config_from_namespace(args: argparse.Namespace, notes: list[str] | None = None) -> TrainConfig:
    settings: dict[str, Any] = load_config_file(args.config) if args.config else {}
    settings.update(_given(args))
    cfg = resolve(settings, notes)
    check_new_run_dir(cfg)
    return cfg


def check_new_run_dir(cfg: TrainConfig) -> None:
    if cfg.run_dir and (Path(cfg.run_dir) / CHECKPOINT_NAME).exists():
        raise ConfigError(f"--run-dir: {cfg.run_dir!r} already holds a run; continue it with "
                          f"--resume {shlex.quote(cfg.run_dir)} or choose another folder")


def resume_config(args: argparse.Namespace) -> tuple[TrainConfig, dict[str, Any]]:
    if args.config:
        raise ConfigError("--config: cannot be combined with --resume; a resumed run keeps the settings "
                          "saved in its checkpoint (see RUN_DIR/config.json)")
    cfg, state = resume_run(args.resume, _given(args))
    if made_by_env_fn(state.get("env_spec")):
        raise ConfigError(f"--resume: this run trained on an env made in Python (env_fn={cfg.env}), which the "
                          f"command line cannot rebuild; resume it from Python: fastrl.resume(RUN_DIR, env_fn=...)")
    return cfg, state


def resume_run(run_dir: str | Path, given: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """The config and checkpoint of the run in `run_dir`. A resumed run keeps its settings: only
    RESUME_OVERRIDES may be given; anything else would silently make it a different run."""
    state = load_run_checkpoint(run_dir)
    changed = sorted(set(given) - set(RESUME_OVERRIDES))
    if changed:
        flags = ", ".join("--" + name.replace("_", "-") for name in changed)
        raise ConfigError(f"{flags.split(', ')[0]}: cannot be changed when resuming (got {flags}); with --resume "
                          f"only --total-steps (to extend the run), --progress/--no-progress and --collective-timeout "
                          f"are allowed")
    settings = {**state["config"], **given, "run_dir": str(run_dir)}
    cfg = config_from_checkpoint(settings, "--resume")
    reached = int(state["counters"]["env_step"])
    if cfg.total_steps < reached:
        raise ConfigError(f"--total-steps: the run is already at env step {reached}; give at least that "
                          f"(more extends the run)")
    return cfg, state


def check_setup(cfg: TrainConfig, spec_of: Callable[[str], EnvSpec] | None = None,
                world: distributed.World = distributed.SINGLE) -> tuple[EnvSpec, torch.device]:
    """Everything that can go wrong before envs and models exist. Raises ConfigError. `spec_of`
    (default `lookup_spec`) makes the spec from `cfg.env`: the API passes one for a user's env.
    `world`: a torchrun launch's ranks, each of which allocates its share of the replay."""
    validate(cfg)
    distributed.check_settings(world, cfg)
    device = resolve_device(cfg.device)
    if cfg.cuda_graph and device.type != "cuda":
        raise ConfigError(f"--cuda-graph: needs a CUDA device, and this run's device is {device.type} "
                          f"(--device {cfg.device}); drop --cuda-graph or use --device cuda")
    spec = (spec_of or lookup_spec)(cfg.env)
    validate_for_env(cfg, spec.discrete)
    check_spec = ALGORITHMS[cfg.algo].check_spec
    if check_spec is not None:
        check_spec(cfg, spec)
    members = plan_members(cfg)
    if members is not None:
        check_members(cfg, spec, world.active, ALGORITHMS[cfg.algo].build_members)
    width = len(members) if members else 1  # every member allocates its own replay
    mine = distributed.rank_share(cfg, world)  # the replay shard this process allocates
    row_bytes = bytes_per_row(spec.obs_shape, spec.obs_dtype, spec.action_shape, spec.action_dtype,
                              frame_stack=spec.frame_stack, n_step=cfg.n_step, prioritized=cfg.prioritized)
    check_fits(mine.buffer_size * width, mine.num_envs * width, row_bytes, device,
               extra_slots=spec.frame_stack - 1 + cfg.n_step)
    return spec, device


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.env.replace('/', '_')}-{cfg.algo}-{cfg.seed}-{stamp}"


# --- checkpoint mechanics, kept out of the loop ---

def checkpoint_due(env_step: int, num_envs: int, every: int) -> bool:
    """Whether the vector step that ended at `env_step` crossed a multiple of `every`."""
    return every > 0 and env_step // every != (env_step - num_envs) // every


def end_segment(buffer: ReplayBuffer, obs: torch.Tensor, spec: EnvSpec) -> None:
    """Cut every running episode here: store the observation each env stands on as a row marked
    not-a-transition, exactly like an auto-reset row, so the last real row's next observation is
    this one and not the first observation of whatever the envs do next. The cut is a truncation:
    the last transition keeps terminated = 0 and bootstraps."""
    n = obs.shape[0]
    zeros = torch.zeros(n, device=obs.device)
    actions = torch.zeros((n, *spec.action_shape), dtype=spec.action_dtype, device=obs.device)
    buffer.add(obs, actions, zeros, zeros, valid=np.zeros(n, dtype=bool))


def write_checkpoint(run_dir: Path, cfg: TrainConfig, spec: EnvSpec, agent: Any, buffer: ReplayBuffer | MemberReplay,
                     counters: RunCounters, world: distributed.World = distributed.SINGLE,
                     book: MemberBook | None = None) -> None:
    """This rank's checkpoint: every rank writes its own file (its replay shard and RNGs differ).
    `book`: a stacked run's members, whose stopped ones are not held to finite weights."""
    agent_state = agent.state_dict()
    checked = agent_state if book is None else agent.weights_of(book.live())
    check_weights(checked, counters.env_step, agent.updates_done)  # never replace a good checkpoint with NaNs
    buffer_state = buffer.state_dict() if cfg.checkpoint_buffer else None
    payload = training_payload(cfg.to_json(), counters, agent_state, buffer_state, spec)
    payload["world_size"] = world.size  # a resume must bring as many ranks
    if book is not None:
        payload["members"] = book.state_dict()
    save_checkpoint(run_dir / distributed.checkpoint_name(world.rank), payload)


def restore(state: dict[str, Any], agent: Any, buffer: ReplayBuffer | MemberReplay,
            book: MemberBook | None = None) -> None:
    """Last step before the loop: building envs, nets and buffer may draw from the global RNGs."""
    agent.load_state_dict(state["agent"])
    if "buffer" in state:
        buffer.load_state_dict(state["buffer"])
    if book is not None:
        book.load_state_dict(state["members"])
    set_rng_state(state["rng"])


def make_buffer(cfg: TrainConfig, mine: TrainConfig, spec: EnvSpec, device: torch.device, seed: int) -> ReplayBuffer:
    """A replay buffer for `mine.num_envs` env streams; `cfg` is the (member's) run settings."""
    return ReplayBuffer(mine.buffer_size, mine.num_envs, spec.obs_shape, spec.obs_dtype, spec.action_shape,
                        spec.action_dtype, device, seed=seed, frame_stack=spec.frame_stack, n_step=cfg.n_step,
                        gamma=cfg.gamma, prioritized=cfg.prioritized, per_alpha=cfg.per_alpha, per_eps=cfg.per_eps)


def build_learner(spec: EnvSpec, cfg: TrainConfig, mine: TrainConfig, device: torch.device, use_compile: bool,
                  seed: int, members: list[Member] | None) -> tuple[Any, ReplayBuffer | MemberReplay]:
    """The agent and its replay: one agent, or a stacked run's members (`fastrl.members`), each
    member with its own buffer seeded and discounted as its own single-agent run would be."""
    if members is None:
        return build_agent(spec, dataclasses.replace(cfg, seed=seed), device, use_compile), \
            make_buffer(cfg, mine, spec, device, seed)
    configs = member_configs(cfg, members)
    agent = ALGORITHMS[cfg.algo].build_members(spec, cfg, configs, device)
    return agent, MemberReplay([make_buffer(c, mine, spec, device, c.seed) for c in configs])


def resume_note(resume: dict[str, Any] | None, cfg: TrainConfig) -> str:
    if resume is None:
        return ""
    step = resume["counters"]["env_step"]
    if "buffer" in resume:
        return f"resuming at env step {step} with the replay buffer; "
    return (f"resuming at env step {step} without a replay buffer (refilling it for {cfg.learning_starts} "
            f"steps before learning); ")


def describe_scale(cfg: TrainConfig, mine: TrainConfig, world: distributed.World) -> str:
    if not world.active:
        return f"{cfg.num_envs} envs, {cfg.total_steps} steps, batch {cfg.batch_size}"
    return (f"{world.size} ranks: {cfg.num_envs} envs ({mine.num_envs} per rank), {cfg.total_steps} steps, "
            f"global batch {cfg.batch_size} ({mine.batch_size} per rank)")


def window_row(means: dict[str, float], episodes: list, played: torch.Tensor, entropy: Callable[[torch.Tensor], float],
               agent: Any, env_step: int, evaluation: tuple[float, float] | None) -> dict[str, Any]:
    """A single-agent run's metrics row of one log window (the loop adds wall time and speed)."""
    returns = [r for _, r, _ in episodes]
    return {
        "env_step": env_step, "episodes": len(episodes),
        "episodic_return": float(np.mean(returns)) if returns else math.nan,
        "episodic_length": float(np.mean([n for _, _, n in episodes])) if returns else math.nan,
        **means,
        "lr": agent.current_lr(),
        "action_entropy": entropy(played),
        "eval_return_mean": evaluation[0] if evaluation else math.nan,
        "eval_return_std": evaluation[1] if evaluation else math.nan,
        **agent.exploration(env_step),
    }


def stop_nonfinite_members(book: MemberBook, means: dict[str, Any], env_step: int, updates: int) -> None:
    """Stop the members whose window went NaN/Inf, saying which; fail when none is left."""
    for message in book.check(means, env_step, updates):
        print(f"fastrl: {message}", file=sys.stderr)
    if not book.live():
        raise NonFiniteError("metrics of every member", env_step, updates)


def train(cfg: TrainConfig, spec: EnvSpec, device: torch.device, t_start: float,
          stop: StopRequest | None = None, resume: dict[str, Any] | None = None,
          callback: Callable[[dict[str, Any]], bool | None] | None = None,
          world: distributed.World = distributed.SINGLE) -> dict[str, Any]:
    """Run (or, given a checkpoint as `resume`, continue) training to `cfg.total_steps`.
    `callback(row)` sees each metrics row; returning False stops the run as a signal does.

    Every `checkpoint_every` env steps the running episodes are cut and the envs rebuilt from
    `env_seed(seed, env_step)`; an uninterrupted run does this too, so a run resumed from that
    checkpoint (with the buffer) continues exactly as the uninterrupted one does.

    With N ranks (`world`), every rank runs this loop in lockstep on its share of the envs, of each
    mini-batch and of the replay capacity (`mine`); `cfg` stays the run's, and so do the counts."""
    run_dir = Path(distributed.from_main(world, cfg.run_dir or str(default_run_dir(cfg))))
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
    mine = distributed.rank_share(cfg, world)  # a plain run: cfg
    seed = distributed.rank_seed(cfg.seed, world.rank)  # the run's seed on rank 0
    stop = stop if stop is not None else StopRequest()  # no handler: never requested
    members = plan_members(cfg)  # None: one agent
    width = len(members) if members else 1  # agents side by side
    use_compile = members is None and (cfg.compile if cfg.compile is not None else device.type == "cuda")
    if cfg.threads or device.type == "cpu":
        torch.set_num_threads(cfg.threads or auto_threads(mine.batch_size, cfg.hidden_sizes, TORCH_DEFAULT_THREADS,
                                                          members=width))
    torch.manual_seed(seed)
    np.random.seed(seed)
    start = RunCounters(**resume["counters"]) if resume is not None else RunCounters()

    # A stacked run: member e's envs are [e n, (e + 1) n) of one vector env (n = mine.num_envs).
    envs = TorchVecEnv(spec, mine.num_envs * width, env_seed(seed, start.env_step), device)
    eval_share = distributed.episode_share(cfg.eval_episodes, world)  # each rank plays its part of the episodes
    eval_envs = TorchVecEnv(spec, max(1, min(eval_share, MAX_EVAL_ENVS)) * width, seed + 100_003, device, role="eval")
    agent, buffer = build_learner(spec, cfg, mine, device, use_compile, seed, members)
    book = MemberBook(members, mine.num_envs) if members is not None else None
    obs = envs.reset()
    log = RunLog(run_dir, {**cfg.to_json(), **resolved_settings(use_compile, device)},
                 append=resume is not None) if world.is_main else None  # rank 0 writes the run folder
    progress = Progress(cfg.total_steps - start.env_step, enabled=cfg.progress and world.is_main)
    if resume is not None:
        restore(resume, agent, buffer, book)
    distributed.broadcast_agent_(world, agent)  # rank 0's weights on every rank, from the start
    if world.is_main:
        print(f"fastrl: {resume_note(resume, cfg)}{cfg.algo} on {cfg.env} ({spec.backend}), seed {cfg.seed}, "
              f"device {device}, compile {use_compile}{', CUDA graph' if cfg.cuda_graph else ''}, "
              f"precision {cfg.precision}, {describe_scale(cfg, mine, world)}, "
              f"{f'{cfg.n_step}-step returns, ' if cfg.n_step > 1 else ''}"
              f"{'prioritized replay, ' if cfg.prioritized else ''}"
              f"{cfg.updates_per_train} updates every {cfg.train_every} vector steps "
              f"(updates/transition {cfg.updates_per_transition:.4g}, replay ratio {cfg.replay_ratio:.4g}); "
              f"{f'{width} stacked members, ' if members else ''}run folder {run_dir}", file=sys.stderr)
        slow_bf16 = bf16_unsupported_note(cfg.precision, device)
        if slow_bf16:
            print(f"fastrl: warning: {slow_bf16}", file=sys.stderr)

    action_low = torch.tensor(spec.action_low, device=device) if not spec.discrete else None
    action_high = torch.tensor(spec.action_high, device=device) if not spec.discrete else None
    # What a stacked member's envs are sent in place of a NaN action (`MemberBook.stand_in_actions`).
    stand_in_action = None if spec.discrete else ((action_low + action_high) / 2).float()

    def entropy(played: torch.Tensor) -> float:
        return played_action_entropy(played, spec.discrete, spec.num_actions, action_low, action_high)

    window = MetricWindow()  # every update's named metrics, summed on the device over the log window
    window_actions, window_episodes = [], []
    eval_returns: list[float] = list(start.eval_returns)
    best_eval = start.best_eval
    env_step = start.env_step
    last_log_step, last_eval_step = env_step, start.last_eval_step
    # Without a saved buffer, a resumed run refills it with its current policy before learning again.
    learn_from = cfg.learning_starts if resume is None or "buffer" in resume else env_step + cfg.learning_starts
    saved_at = env_step if resume is not None else None  # env step of the checkpoint on disk
    vector_step = start.vector_step - 1
    failure: RuntimeError | None = None
    forced_stop = False
    halt = StopRequest()  # the stop every rank acts on (a plain run: `stop` itself)
    eval_s = 0.0  # time in greedy evaluation: reported apart, so speed comparisons can leave it out
    t_loop = time.perf_counter()

    def counters() -> RunCounters:
        return RunCounters(env_step, vector_step + 1, last_eval_step, best_eval, list(eval_returns),
                           start.wall_s + time.perf_counter() - t_start)

    try:
        for vector_step in range(start.vector_step, cfg.num_vector_steps):
            if env_step < cfg.learning_starts:
                actions = agent.random_actions(envs.num_envs)
            else:
                actions = agent.act(obs, env_step)
            if book is not None and stand_in_action is not None:
                actions = book.stand_in_actions(actions, stand_in_action)
            envs.send(actions)  # envpool's threads step the envs while the learner trains below

            # (len(buffer) only binds after a resume without the buffer, which refills it first.)
            if train_phase_due(vector_step, cfg.num_envs, cfg.train_every, learn_from, cfg.n_step) and len(buffer) > 0:
                # One index draw for all k mini-batches of the phase.
                beta = linear(cfg.per_beta, 1.0, cfg.total_steps, env_step) if cfg.prioritized else None
                for batch in buffer.sample_batches(cfg.updates_per_train, mine.batch_size, beta=beta):
                    metrics = agent.update(batch)
                    if batch.indices is not None:  # prioritized replay: the samples' new priorities
                        buffer.update_priorities(batch.indices, metrics.pop("td_abs"))
                    window.add(metrics)

            step = envs.recv()
            buffer.add(obs, actions, step.reward, step.terminated, valid=~step.is_reset_step)
            obs = step.next_obs
            env_step += cfg.num_envs  # every rank's envs
            window_actions.append(actions)

            window_episodes += envs.pop_finished_episodes()
            halt = distributed.agree_stop(world, stop, vector_step)
            done = vector_step == cfg.num_vector_steps - 1
            save_now = not done and checkpoint_due(env_step, cfg.num_envs, cfg.checkpoint_every)
            evaluation = None
            if done or (cfg.eval_every and env_step - last_eval_step >= cfg.eval_every):
                t_eval = time.perf_counter()
                if book is None:
                    eval_returns = distributed.pool_returns(
                        world, evaluate_policy(evaluation_policy(agent), eval_envs, eval_share))
                else:  # each member on its own eval envs; the run's returns pool the live members'
                    book.record_evaluation(evaluate_groups(evaluation_policy(agent), eval_envs, eval_share, width))
                    eval_returns = [r for e in book.live() for r in book.eval_returns[e]]
                eval_s += time.perf_counter() - t_eval
                evaluation = mean_std(eval_returns)
                best_eval = max(best_eval, evaluation[0])
                last_eval_step = env_step
            # A checkpoint or a stop closes the log window, so a resumed run starts a fresh one.
            if done or evaluation is not None or save_now or halt.requested or \
                    env_step - last_log_step >= cfg.log_every:
                elapsed = time.perf_counter() - t_loop
                # window.means(): the one host sync per window. With N ranks, pooled in one all_gather.
                means, episodes, played = distributed.pool_window(world, window.means(), window_episodes,
                                                                  window_actions, agent)
                if book is None:
                    rows = [window_row(means, episodes, torch.stack(played), entropy, agent, env_step, evaluation)]
                else:
                    rows = book.rows({"env_step": env_step}, means, episodes, torch.stack(played),
                                     agent.exploration(env_step), agent.current_lr(), evaluation is not None, entropy)
                for row in rows:
                    row.update({"wall_s": start.wall_s + time.perf_counter() - t_start,
                                "sps": (env_step - start.env_step) / elapsed, "updates": agent.updates_done})
                    if log is not None:
                        log.write(row)
                    if callback is not None and callback(dict(row)) is False:
                        stop.by_caller = True  # as a signal does: a checkpoint below, then out
                if book is None:
                    check_metrics(means, env_step, agent.updates_done)  # a NaN in any update makes its mean NaN
                else:
                    stop_nonfinite_members(book, means, env_step, agent.updates_done)
                row = rows[0] if book is None else book.overview(rows)
                progress.update(env_step - start.env_step, row)
                window.reset()
                window_actions, window_episodes = [], []
                last_log_step = env_step
            elif vector_step % 64 == 0:
                progress.update(env_step - start.env_step, None)

            if save_now:
                # Envpool cannot save env state, so cut the episodes and rebuild the envs from
                # (seed, env_step): a run resumed from this checkpoint rebuilds the same ones.
                end_segment(buffer, obs, spec)
                envs.close()
                envs = TorchVecEnv(spec, envs.num_envs, env_seed(seed, env_step), device)
                obs = envs.reset()
                write_checkpoint(run_dir, cfg, spec, agent, buffer, counters(), world, book)
                saved_at = env_step
            if halt.requested:
                break
        if saved_at != env_step:  # the end, or a stop between checkpoints
            end_segment(buffer, obs, spec)
            write_checkpoint(run_dir, cfg, spec, agent, buffer, counters(), world, book)
            saved_at = env_step
        distributed.barrier(world, "the end-of-run barrier")  # every rank's checkpoint is written
    except (NonFiniteError, distributed.ReplicaMismatchError, distributed.PeerLostError) as exc:
        failure = exc
    except KeyboardInterrupt:  # a second signal: stop now, keep the checkpoint on disk
        forced_stop = True
    finally:
        progress.close()
        if log is not None:
            log.close()
        envs.close()
        eval_envs.close()

    loop_s = time.perf_counter() - t_loop
    eval_mean, eval_std = mean_std(eval_returns) if eval_returns else (math.nan, math.nan)
    summary = {
        "env_id": cfg.env, "algo": cfg.algo, "seed": cfg.seed, "env_steps": env_step,
        "updates": agent.updates_done, "wall_s": start.wall_s + time.perf_counter() - t_start,
        "eval_s": eval_s,
        "sps": (env_step - start.env_step) / max(loop_s, 1e-9),
        "final_eval_return_mean": eval_mean, "final_eval_return_std": eval_std,
        "final_eval_returns": eval_returns,
        "best_eval_return_mean": best_eval if math.isfinite(best_eval) else math.nan,
        "buffer_bytes_per_transition": buffer.bytes_per_transition,
        "buffer_bytes": buffer.nbytes * world.size,  # every rank's shard is the same size
        "updates_per_transition": cfg.updates_per_transition, "replay_ratio": cfg.replay_ratio,
        "world_size": world.size, "batch_size_per_rank": mine.batch_size,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch_version": torch.__version__, "compile": use_compile, "precision": cfg.precision,
        "interrupted": (halt.requested and vector_step + 1 < cfg.num_vector_steps) or forced_stop,
        "stop_signal": halt.name or stop.name or None, "exit_code": halt.exit_code if halt.requested else 0,
        "forced_stop": forced_stop, "error": str(failure) if failure else None,
        "checkpoint_env_step": saved_at, "resumed_from_env_step": start.env_step if resume is not None else None,
        "run_dir": str(run_dir),
    }
    if book is not None:  # counts are per member; so is "sps"
        summary.update(book.summary(), sps_all_members=summary["sps"] * width)
    if failure is not None:
        summary["exit_code"] = FAILURES[type(failure)][0]
    if world.is_main:
        write_summary(run_dir, summary)
        title = f"{cfg.algo} {cfg.env} " + (f"seed {cfg.seed}" if book is None else f"{width} members")
        plot_learning_curve(run_dir, title)
    return summary


def resume_command(run_dir: str, world: distributed.World) -> str:
    if not world.active:
        return f"python -m fastrl.train --resume {shlex.quote(run_dir)}"
    return f"torchrun --nproc-per-node N -m fastrl.train --resume {shlex.quote(run_dir)} ({world.size} processes in all)"


def checkpoint_kept(summary: dict[str, Any]) -> str:
    saved, run_dir = summary["checkpoint_env_step"], summary["run_dir"]
    return (f"the last good checkpoint (env step {saved}) is kept in {run_dir}" if saved is not None
            else f"no checkpoint had been written yet in {run_dir}")


def report(summary: dict[str, Any], world: distributed.World = distributed.SINGLE) -> int:
    """One line on stderr saying how the run ended; returns the exit code. With N ranks, rank 0
    speaks for all, and every rank reports its own failure."""
    run_dir = summary["run_dir"]
    resume_cmd = resume_command(run_dir, world)
    saved = summary["checkpoint_env_step"]
    kept = checkpoint_kept(summary)
    if summary["error"]:
        hint = next(h for code, h in FAILURES.values() if code == summary["exit_code"])
        print(f"python -m fastrl.train: error: {summary['error']}; stopped, {kept}{hint}", file=sys.stderr)
        return summary["exit_code"]
    if not world.is_main:
        return summary["exit_code"] or (130 if summary["forced_stop"] else 0)
    if summary["forced_stop"]:
        print(f"stopped at once by a second {summary['stop_signal'] or 'interrupt'} at env step "
              f"{summary['env_steps']} without writing a checkpoint; {kept}"
              + (f"; resume with: {resume_cmd}" if saved is not None else ""), file=sys.stderr)
        return summary["exit_code"] or 130
    if summary["interrupted"]:
        print(f"interrupted by {summary['stop_signal']} at env step {summary['env_steps']}; checkpoint and "
              f"summary written; resume with: {resume_cmd}", file=sys.stderr)
        return summary["exit_code"]
    print(f"done: {summary['env_steps']} steps, {summary['updates']} updates in {summary['wall_s']:.1f} s "
          f"({summary['sps']:.0f} SPS); final eval return {summary['final_eval_return_mean']:.1f} "
          f"± {summary['final_eval_return_std']:.1f}; {run_dir}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    try:
        world = distributed.world_from_env()  # torchrun's env vars; a plain run is one rank
        args = build_parser().parse_args(argv)
        notes: list[str] = []  # defaults fitted to the run's length
        cfg, resume = resume_config(args) if args.resume else (config_from_namespace(args, notes), None)
        if resume is not None:
            resume = distributed.rank_resume_state(world, args.resume, resume)
        spec, device = check_setup(cfg, world=world)
        device = distributed.rank_device(world, device)
    except ConfigError as exc:
        print(f"python -m fastrl.train: error: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTING
    except KeyboardInterrupt:
        print("python -m fastrl.train: interrupted before training started; nothing written", file=sys.stderr)
        return 130
    if resume is not None and resume["counters"]["env_step"] >= cfg.total_steps:
        if world.is_main:
            print(f"nothing to do: {cfg.run_dir} already reached env step {resume['counters']['env_step']} of "
                  f"--total-steps {cfg.total_steps}; add --total-steps N to extend it", file=sys.stderr)
        return 0
    if notes and world.is_main:
        print(f"fastrl: defaults fitted to this run's length: {'; '.join(notes)}", file=sys.stderr)
    try:
        with stop_on_signals() as stop:
            distributed.start(world, device, cfg.collective_timeout)
            summary = train(cfg, spec, device, t_start, stop=stop, resume=resume, world=world)
    except KeyboardInterrupt:  # a second signal while the summary was being written
        print("stopped at once by a second interrupt after the checkpoint was written", file=sys.stderr)
        return 130
    except distributed.PeerLostError as exc:  # before the loop: joining, or the start-up broadcasts
        print(f"python -m fastrl.train: error: {exc}", file=sys.stderr)
        return EXIT_PEER_LOST
    finally:
        distributed.finish()
    return report(summary, world)


class _CallableModule(types.ModuleType):
    def __call__(self, config: TrainConfig, *, env_fn: Any = None,
                 callback: Callable[[dict[str, Any]], bool | None] | None = None) -> dict[str, Any]:
        """`fastrl.train(config, env_fn=None, callback=None)`: see `fastrl.api.train`."""
        from fastrl.api import train as api_train

        return api_train(config, env_fn=env_fn, callback=callback)


if __name__ == "__main__":
    sys.exit(main())
else:
    sys.modules[__name__].__class__ = _CallableModule
