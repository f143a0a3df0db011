"""Training configuration: one dataclass, per-env presets, and validation.

Resolution order (later wins): dataclass defaults < algorithm defaults < env preset < config file
< command-line flags. Validation runs on the resolved config before any env or model is built.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad setting. The message starts with the flag it concerns and says what is allowed."""


ALGOS = ("dqn", "ddpg", "td3")
DISCRETE_ALGOS = ("dqn",)
CONTINUOUS_ALGOS = ("ddpg", "td3")
LR_SCHEDULES = ("constant", "linear", "robbins-monro")
TARGET_UPDATES = ("soft", "hard")
LOSSES = ("huber", "mse")
DEVICES = ("auto", "cpu", "cuda")


# Batch x width² from which a CPU update's GEMMs are big enough to gain from every core (auto_threads).
THREADED_GEMM_SIZE = 256 * 256 * 256


def auto_threads(batch_size: int, hidden_sizes: tuple[int, ...], cores: int) -> int:
    """torch threads for a CPU run when --threads is 0. Measured on the 2-core CI machine: TD3's
    256-256 update at batch 256 takes 2.95 ms on 2 threads against 4.9 ms on 1 (9.5 ms on 2 while
    another process holds a core). Smaller updates are bound by per-op overhead, and there two
    OpenMP threads beside another process once made a DQN CartPole run (256-256, batch 128) 28x
    slower. So: every core from batch 256 at width 256, one thread below."""
    return cores if batch_size * max(hidden_sizes, default=0) ** 2 >= THREADED_GEMM_SIZE else 1


@dataclass
class TrainConfig:
    algo: str = "dqn"
    env: str = "CartPole-v1"
    seed: int = 1
    total_steps: int = 100_000
    num_envs: int = 1
    buffer_size: int = 100_000
    batch_size: int = 128
    learning_starts: int = 1_000
    # Vector steps between train phases; each phase runs `updates_per_train` mini-batch updates.
    train_every: int = 1
    updates_per_train: int = 1
    lr: float = 3e-4
    lr_schedule: str = "constant"
    # Robbins–Monro: lr_k = lr / (1 + k / lr_k0) ** lr_power over update k.
    lr_k0: float = 1_000.0
    lr_power: float = 0.75
    # Linear schedules end at these fractions of the start value.
    lr_end_fraction: float = 0.0
    gamma: float = 0.99
    target_update: str = "soft"
    tau: float = 0.005
    target_period: int = 1_000
    hidden_sizes: tuple[int, ...] = (256, 256)
    max_grad_norm: float = 10.0
    # DQN
    loss: str = "huber"
    double_dqn: bool = True
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_fraction: float = 0.1
    # DDPG / TD3
    exploration_noise: float = 0.1
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_delay: int = 1
    actor_lr: float | None = None
    # Runtime
    device: str = "auto"
    # torch intra-op threads; 0 = auto (see `auto_threads`).
    threads: int = 0
    compile: bool | None = None
    # Replay each update as one CUDA graph (CUDA only; off until verified on a GPU: see cuda_graph.py).
    cuda_graph: bool = False
    run_dir: str | None = None
    eval_episodes: int = 10
    eval_every: int = 0  # env steps between evaluations; 0 = only at the end
    log_every: int = 5_000  # env steps between metric rows
    checkpoint_every: int = 0  # env steps between checkpoints; 0 = only at the end
    checkpoint_buffer: bool = False
    progress: bool = True

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hidden_sizes"] = list(self.hidden_sizes)
        return out

    @property
    def num_vector_steps(self) -> int:
        return math.ceil(self.total_steps / self.num_envs)

    @property
    def updates_per_transition(self) -> float:
        """Mini-batch updates per env transition collected."""
        return self.updates_per_train / (self.train_every * self.num_envs)

    @property
    def replay_ratio(self) -> float:
        """Update-to-data ratio in samples: transitions trained on per transition collected."""
        return self.updates_per_transition * self.batch_size


FIELD_NAMES = {f.name for f in dataclasses.fields(TrainConfig)}

# Algorithm defaults, applied before env presets.
ALGO_DEFAULTS: dict[str, dict[str, Any]] = {
    "dqn": {"target_update": "hard", "target_period": 500, "lr": 1e-3},
    "ddpg": {
        "batch_size": 256, "lr": 3e-4, "tau": 0.005, "target_update": "soft",
        "policy_delay": 1, "learning_starts": 25_000, "buffer_size": 1_000_000,
        "max_grad_norm": 0.0, "eval_episodes": 10,
    },
    "td3": {
        "batch_size": 256, "lr": 3e-4, "tau": 0.005, "target_update": "soft",
        "policy_delay": 2, "learning_starts": 25_000, "buffer_size": 1_000_000,
        "max_grad_norm": 0.0, "eval_episodes": 10,
    },
}

# Per-(algo, env) presets: the settings that make the default run learn quickly.
PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    # Tuned on seeds 1-3 (see README): long train phases with the target synced once per phase,
    # a 256-256 net (smaller ones reached 500 and then collapsed), lr annealed to 0, and γ = 0.98
    # (with 0.99 a seed still collapsed late and its Q values ran away). 60k steps: with the
    # hand-written update, 50k left seed 3 at 437 (still rising); 60k ends seeds 1-5 at >= 483.
    ("dqn", "CartPole-v1"): {
        "total_steps": 60_000, "num_envs": 8, "buffer_size": 50_000, "batch_size": 128,
        "learning_starts": 1_000, "train_every": 32, "updates_per_train": 64, "lr": 2.3e-3,
        "lr_schedule": "linear", "lr_end_fraction": 0.0, "gamma": 0.98,
        "target_update": "hard", "target_period": 64, "tau": 0.01,
        "hidden_sizes": (256, 256), "eps_start": 1.0, "eps_end": 0.04, "eps_fraction": 0.16,
        "max_grad_norm": 10.0, "log_every": 5_000, "eval_every": 10_000, "eval_episodes": 10,
    },
    ("dqn", "Breakout-v5"): {
        "total_steps": 10_000_000, "num_envs": 8, "buffer_size": 1_000_000, "batch_size": 32,
        "learning_starts": 80_000, "train_every": 1, "updates_per_train": 2, "lr": 1e-4,
        "target_update": "hard", "target_period": 1_000, "eps_end": 0.01, "eps_fraction": 0.1,
        "hidden_sizes": (512,), "log_every": 10_000, "eval_episodes": 4,
    },
    # The published TD3/DDPG settings (ALGO_DEFAULTS) with a 1k-step random start: seeds 1 and 2
    # end at -130 to -144 after 20k steps; one update per env step.
    ("ddpg", "Pendulum-v1"): {"total_steps": 20_000, "learning_starts": 1_000, "log_every": 2_000,
                              "eval_every": 5_000},
    ("td3", "Pendulum-v1"): {"total_steps": 20_000, "learning_starts": 1_000, "log_every": 2_000,
                             "eval_every": 5_000},
    ("ddpg", "MountainCarContinuous-v0"): {"total_steps": 100_000, "exploration_noise": 0.5,
                                            "learning_starts": 5_000},
    ("td3", "MountainCarContinuous-v0"): {"total_steps": 100_000, "exploration_noise": 0.5,
                                           "learning_starts": 5_000},
}
for _algo in CONTINUOUS_ALGOS:
    for _env in ("HalfCheetah-v4", "Hopper-v4", "Walker2d-v4", "Ant-v4"):
        PRESETS[(_algo, _env)] = {"total_steps": 1_000_000, "learning_starts": 25_000,
                                  "log_every": 10_000, "eval_every": 50_000}


# Settings only some algorithms read. Giving one to another algorithm is a mistake (it would be
# silently ignored), so `resolve` rejects it.
ALGO_ONLY_SETTINGS: dict[str, tuple[str, ...]] = {
    **{name: DISCRETE_ALGOS for name in ("loss", "double_dqn", "eps_start", "eps_end", "eps_fraction")},
    **{name: CONTINUOUS_ALGOS for name in ("exploration_noise", "policy_delay", "actor_lr")},
    # Target policy smoothing is TD3's; DDPG has none.
    **{name: ("td3",) for name in ("policy_noise", "noise_clip")},
}


def check_algo_settings(algo: str, given: dict[str, Any]) -> None:
    """Reject an explicitly given setting that `algo` does not use."""
    for name in given:
        users = ALGO_ONLY_SETTINGS.get(name)
        if users is not None and algo not in users:
            raise ConfigError(f"--{name.replace('_', '-')}: a {'/'.join(users)} setting, which --algo {algo} "
                              f"does not use; drop it")


def preset_for(algo: str, env_id: str) -> dict[str, Any]:
    return dict(PRESETS.get((algo, env_id), {}))


def resolve(overrides: dict[str, Any]) -> TrainConfig:
    """Build a config from explicitly given settings (file and flags), filling in presets."""
    unknown = sorted(set(overrides) - FIELD_NAMES)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(FIELD_NAMES))}")
    algo = overrides.get("algo", TrainConfig.algo)
    env_id = overrides.get("env", TrainConfig.env)
    if algo not in ALGOS:
        raise ConfigError(f"--algo: unknown algorithm {algo!r}; allowed: {', '.join(ALGOS)}")
    check_algo_settings(algo, overrides)
    values: dict[str, Any] = {}
    values.update(ALGO_DEFAULTS.get(algo, {}))
    values.update(preset_for(algo, env_id))
    values.update(overrides)
    if "hidden_sizes" in values:
        values["hidden_sizes"] = tuple(values["hidden_sizes"])
    return TrainConfig(**values)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read settings from a TOML or JSON file; keys may use - or _."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: no such file {str(path)!r}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            raw = tomllib.loads(text)
        elif path.suffix == ".json":
            raw = json.loads(text)
        else:
            raise ConfigError(f"--config: {str(path)!r} must end in .toml or .json")
    except (ValueError, TypeError) as exc:  # tomllib.TOMLDecodeError and JSONDecodeError are ValueErrors
        raise ConfigError(f"--config: cannot parse {str(path)!r}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--config: {str(path)!r} must hold a table/object of settings")
    settings = {k.replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(settings) - FIELD_NAMES)
    if unknown:
        raise ConfigError(f"--config: unknown key(s) {', '.join(unknown)} in {str(path)!r}")
    for name, value in settings.items():
        _check_file_type(name, value, path)
    return settings


def _check_file_type(name: str, value: Any, path: Path) -> None:
    """Flags are typed by argparse; file values are whatever TOML/JSON made of them."""
    hint = _FIELD_TYPES[name]
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if value is None and "None" in hint:
        return
    if hint.startswith("tuple"):
        ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        kind = "a list of integers"
    elif hint.startswith("float"):
        ok, kind = is_int or isinstance(value, float), "a number"
    elif hint.startswith("int"):
        ok, kind = is_int, "an integer"
    elif hint.startswith("bool"):
        ok, kind = isinstance(value, bool), "true or false"
    else:
        ok, kind = isinstance(value, str), "a string"
    if not ok:
        raise ConfigError(f"--{name.replace('_', '-')}: must be {kind}, got {value!r} (in {str(path)!r})")


_FIELD_TYPES = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}  # annotations are strings here


def _positive(cfg: TrainConfig, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"--{name.replace('_', '-')}: must be a positive integer, got {value!r}")


def _choice(cfg: TrainConfig, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if value not in allowed:
        raise ConfigError(f"--{name.replace('_', '-')}: {value!r} is not one of {', '.join(allowed)}")


def validate(cfg: TrainConfig) -> None:
    """Check every setting that can be checked without knowing the env. Raises ConfigError."""
    _choice(cfg, "algo", ALGOS)
    _choice(cfg, "lr_schedule", LR_SCHEDULES)
    _choice(cfg, "target_update", TARGET_UPDATES)
    _choice(cfg, "loss", LOSSES)
    _choice(cfg, "device", DEVICES)
    for name in ("total_steps", "num_envs", "buffer_size", "batch_size", "train_every",
                 "updates_per_train", "target_period", "eval_episodes", "log_every", "policy_delay"):
        _positive(cfg, name)
    for name in ("learning_starts", "eval_every", "checkpoint_every", "seed", "threads"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"--{name.replace('_', '-')}: must be an integer >= 0, got {value!r}")
    if not cfg.hidden_sizes or any((not isinstance(h, int)) or h <= 0 for h in cfg.hidden_sizes):
        raise ConfigError(f"--hidden-sizes: must be one or more positive integers, got {list(cfg.hidden_sizes)}")
    if cfg.batch_size > cfg.buffer_size:
        raise ConfigError(f"--batch-size: {cfg.batch_size} is larger than --buffer-size {cfg.buffer_size}")
    if cfg.buffer_size < 2 * cfg.num_envs:
        raise ConfigError(f"--buffer-size: must hold at least two vector steps (>= {2 * cfg.num_envs})")
    if not (0.0 < cfg.tau <= 1.0):
        raise ConfigError(f"--tau: must be in (0, 1], got {cfg.tau}")
    if not (0.0 <= cfg.gamma <= 1.0):
        raise ConfigError(f"--gamma: must be in [0, 1], got {cfg.gamma}")
    if not (cfg.lr > 0.0 and math.isfinite(cfg.lr)):
        raise ConfigError(f"--lr: must be a positive number, got {cfg.lr}")
    if cfg.actor_lr is not None and not (cfg.actor_lr > 0.0 and math.isfinite(cfg.actor_lr)):
        raise ConfigError(f"--actor-lr: must be a positive number, got {cfg.actor_lr}")
    if cfg.lr_schedule == "robbins-monro" and not (0.5 < cfg.lr_power <= 1.0):
        raise ConfigError(
            f"--lr-power: Robbins–Monro needs 0.5 < p <= 1 (sum of steps diverges, sum of squares "
            f"converges), got {cfg.lr_power}"
        )
    if cfg.lr_k0 <= 0:
        raise ConfigError(f"--lr-k0: must be positive, got {cfg.lr_k0}")
    if not (0.0 <= cfg.lr_end_fraction <= 1.0):
        raise ConfigError(f"--lr-end-fraction: must be in [0, 1], got {cfg.lr_end_fraction}")
    for name in ("eps_start", "eps_end", "eps_fraction"):
        if not (0.0 <= getattr(cfg, name) <= 1.0):
            raise ConfigError(f"--{name.replace('_', '-')}: must be in [0, 1], got {getattr(cfg, name)}")
    for f in dataclasses.fields(TrainConfig):  # NaN passes comparisons such as `x < 0`
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{f.name.replace('_', '-')}: must be a finite number, got {value}")
    if cfg.checkpoint_every and cfg.checkpoint_every < cfg.num_envs:
        raise ConfigError(f"--checkpoint-every: must be 0 (end only) or at least --num-envs {cfg.num_envs} "
                          f"(one vector step), got {cfg.checkpoint_every}")
    if cfg.max_grad_norm < 0:
        raise ConfigError(f"--max-grad-norm: must be >= 0 (0 disables clipping), got {cfg.max_grad_norm}")
    for name in ("exploration_noise", "policy_noise", "noise_clip"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')}: must be >= 0, got {getattr(cfg, name)}")


def validate_for_env(cfg: TrainConfig, discrete: bool) -> None:
    """Algorithm/action-space fit, once the env's spec is known."""
    if discrete and cfg.algo in CONTINUOUS_ALGOS:
        raise ConfigError(
            f"--algo: {cfg.algo} needs a continuous (Box) action space but {cfg.env} has discrete "
            f"actions; use --algo dqn"
        )
    if not discrete and cfg.algo in DISCRETE_ALGOS:
        raise ConfigError(
            f"--algo: {cfg.algo} needs a discrete action space but {cfg.env} has continuous actions; "
            f"use --algo {' or '.join(CONTINUOUS_ALGOS)}"
        )


def describe_presets() -> str:
    lines = ["presets (applied from --algo and --env, before your flags):"]
    for (algo, env_id), values in PRESETS.items():
        shown = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items())
        lines.append(f"  {algo} {env_id}: {shown}")
    return "\n".join(lines)

