"""fastrl from Python: the same runs as `python -m fastrl.train`, as functions.

    import fastrl

    config = fastrl.make_config(algo="td3", env="Pendulum-v1", total_steps=20_000)
    summary = fastrl.train(config)                      # the run folder the CLI writes, and its summary
    policy = fastrl.load_policy(summary["run_dir"])
    action = policy.act(obs)

- `make_config(**settings)` resolves settings exactly as the CLI does (defaults < algorithm
  defaults < the env's preset < your settings, then the length-fitted defaults); keyword names are
  the setting names (`python -m fastrl.train --help` lists them, as flags). `TrainConfig(...)`
  itself is the plain dataclass: no presets, nothing fitted.
- `train(config, env_fn=None, callback=None)` checks everything the CLI checks before any work,
  trains, and returns the summary (summary.json). SIGINT / SIGTERM and a callback returning False
  stop it as the CLI stops: a checkpoint and the summary are written, the summary says
  `interrupted: True` (`stop_signal` names the signal; None when the callback stopped it), and
  `resume(run_dir)` continues it.
- Errors: a bad setting raises `ConfigError` (a ValueError; the message names the setting as its
  CLI flag) before anything is written. NaN/Inf in training raises `TrainingError` once the
  summary is written and the last good checkpoint kept (`exc.summary` holds the summary; the CLI
  exits 3 there). Nothing here calls `sys.exit`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fastrl import distributed
from fastrl.checkpoint import made_by_env_fn, spec_from_payload
from fastrl.config import FIELDS, TrainConfig, check_type, preset_for, resolve, validate
from fastrl.envs import EnvSpec, spec_from_env_fn, spec_from_vector_env
from fastrl.interrupts import stop_on_signals
from fastrl.policy import Policy, load_policy
from fastrl.settings import ConfigError
from fastrl.train import MAX_EVAL_ENVS, check_new_run_dir, check_setup, checkpoint_kept, resume_run
from fastrl.train import train as train_loop

__all__ = ["ConfigError", "Policy", "TrainConfig", "TrainingError", "load_policy", "make_config", "resume",
           "train"]

Callback = Callable[[dict[str, Any]], "bool | None"]


class TrainingError(RuntimeError):
    """Training produced NaN or Inf. The run folder holds the summary (`.summary`, with its
    `error`) and the last good checkpoint, if one had been written."""

    def __init__(self, summary: dict[str, Any]):
        self.summary = summary
        super().__init__(f"{summary['error']}; stopped, {checkpoint_kept(summary)}")


def make_config(**settings: Any) -> TrainConfig:
    """A resolved, validated config: presets for `algo` and `env` applied and length-dependent
    defaults fitted, exactly as the CLI resolves its flags (the fitted ones are noted on stderr).
    Unknown names, values of the wrong type and values out of range raise ConfigError."""
    for name, value in settings.items():
        if name in FIELDS:
            check_type(name, value)
    notes: list[str] = []
    config = resolve(settings, notes)
    validate(config)
    if notes:
        print(f"fastrl: defaults fitted to this run's length: {'; '.join(notes)}", file=sys.stderr)
    return config


def train(config: TrainConfig, *, env_fn: Any = None, callback: Callback | None = None) -> dict[str, Any]:
    """Train as `python -m fastrl.train` does, into `config.run_dir` (default
    runs/<env>-<algo>-<seed>-<time>), and return the run's summary.

    `env_fn`: your env instead of `config.env`'s: a callable making one gymnasium env (fastrl
    vectorizes it), or a ready gymnasium vector env. `config.env` then only names it.
    `callback(row)`: called once per log window with the row written to metrics.csv (env_step,
    returns, losses, eval results...); returning False stops the run, leaving a checkpoint to
    `resume`. An exception in the callback propagates (the last checkpoint on disk is kept)."""
    t_start = time.perf_counter()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train: config must be a fastrl.TrainConfig (from fastrl.make_config), "
                        f"got {type(config).__name__}")
    check_new_run_dir(config)
    spec, device = check_setup(config, user_spec_of(env_fn, config))
    return _run(config, spec, device, t_start, None, callback)


def resume(run_dir: str | Path, total_steps: int | None = None, *, env_fn: Any = None,
           callback: Callback | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Continue the run in `run_dir` from its checkpoint with its own settings, to its
    total_steps (or to `total_steps`, to extend it), as `--resume` does. A run trained on an
    `env_fn` needs the same `env_fn` again. Returns the summary; a run already at its end is left
    as it is and its summary.json returned."""
    t_start = time.perf_counter()
    given = {k: v for k, v in (("total_steps", total_steps), ("progress", progress)) if v is not None}
    for name, value in given.items():
        check_type(name, value)
    config, state = resume_run(run_dir, given)
    state = distributed.rank_resume_state(distributed.SINGLE, run_dir, state)  # a torchrun run: refused
    spec, device = check_setup(config, user_spec_of(env_fn, config, state.get("env_spec")))
    if state["counters"]["vector_step"] >= config.num_vector_steps:
        summary_path = Path(run_dir) / "summary.json"
        if summary_path.is_file():
            return json.loads(summary_path.read_text())
        raise ConfigError(f"--total-steps: {str(run_dir)!r} already reached env step "
                          f"{state['counters']['env_step']} of {config.total_steps}; give more to extend it")
    return _run(config, spec, device, t_start, state, callback)


def _run(config: TrainConfig, spec: EnvSpec, device: torch.device, t_start: float,
         state: dict[str, Any] | None, callback: Callback | None) -> dict[str, Any]:
    threads = torch.get_num_threads()  # the run sets its own; the caller's process gets its own back
    try:
        with stop_on_signals() as stop:
            summary = train_loop(config, spec, device, t_start, stop=stop, resume=state, callback=callback)
    finally:
        torch.set_num_threads(threads)
    if summary["error"]:
        raise TrainingError(summary)
    return summary


def user_spec_of(env_fn: Any, config: TrainConfig,
                 saved: dict[str, Any] | None = None) -> Callable[[str], EnvSpec] | None:
    """For `check_setup`: how the spec of `env_fn`'s env is made (None: `config.env` names an env
    fastrl builds itself). `saved`: the spec in the checkpoint of a resumed run, which the env
    must match."""
    if env_fn is None:
        if made_by_env_fn(saved):
            raise ConfigError(f"env_fn: the run in {config.run_dir!r} trained on an env made by env_fn "
                              f"({config.env}); pass it again: fastrl.resume(run_dir, env_fn=...)")
        return None
    import gymnasium as gym

    check_user_env_name(config)
    if isinstance(env_fn, gym.vector.VectorEnv):
        check_ready_vector_env(env_fn, config)
        make = spec_from_vector_env
    elif callable(env_fn):
        make = spec_from_env_fn
    else:
        raise ConfigError(f"env_fn: must be a function making one gymnasium env, or a gymnasium vector env; "
                          f"got {type(env_fn).__name__}")

    def spec_of(name: str) -> EnvSpec:
        spec = make(env_fn, name)
        if saved is not None and spec != spec_from_payload(saved, "env_fn"):
            raise ConfigError(f"env_fn: its env is not the one the run in {config.run_dir!r} trained on "
                              f"(now {spec}, then {spec_from_payload(saved, 'env_fn')})")
        return spec

    return spec_of


def check_user_env_name(config: TrainConfig) -> None:
    """With env_fn, `config.env` only names the run's env (its folder, its logs). The default
    env's id would label the run as CartPole; an id with presets has also brought that env's
    settings along for yours."""
    name_yours = "; with env_fn, env names your env: give it a name of its own, e.g. make_config(env=\"MyEnv-v0\", ...)"
    if config.env == FIELDS["env"].default:
        raise ConfigError(f"--env: {config.env!r} is the default env's id{name_yours}")
    if preset_for(config.algo, config.env):
        raise ConfigError(f"--env: {config.env!r} has {config.algo} presets, which make_config applied to your "
                          f"env_fn's env{name_yours}")


def check_ready_vector_env(envs: Any, config: TrainConfig) -> None:
    """A ready vector env is the only env there is: the run steps it, and evaluates on it once
    training is done (evaluation resets it). A function making one env has neither limit."""
    n = envs.num_envs
    if config.num_envs != n:
        raise ConfigError(f"--num-envs: the vector env passed as env_fn holds {n} envs; got {config.num_envs}")
    if config.eval_every:
        raise ConfigError(f"--eval-every: a ready vector env cannot be evaluated during the run (evaluation "
                          f"would reset the envs it steps); use eval_every=0, or pass a function making one env")
    if min(config.eval_episodes, MAX_EVAL_ENVS) != n:
        raise ConfigError(f"--eval-episodes: the final evaluation plays on the ready vector env, one episode "
                          f"per env: use eval_episodes={n}, or pass a function making one env")
