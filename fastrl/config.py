"""Training configuration: the common settings, each algorithm's own section, presets and validation.

`TrainConfig` is one flat dataclass made of `CommonSettings` (below) and the settings section of
every registered algorithm (declared in the algorithm's own file), so flags, config-file keys and
checkpoints stay flat (`--eps-start`, `eps_start`). Each setting is declared once, with
`fastrl.settings.setting`: default, help, allowed values and check.

Resolution order (later wins): defaults < algorithm defaults < env preset < config file < flags,
then defaults that depend on the run's length are fitted to it (`fit_to_run_length`). Validation
runs on the resolved config before any env or model is built.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastrl.learner import PRECISIONS
from fastrl.registry import ALGORITHMS
from fastrl.settings import (
    ConfigError, check_field, flag, in_range, non_negative, non_negative_int, positive, positive_int, setting,
)
from fastrl.sweeps import COMPOUND, check_sweep_syntax, compound_values, parse_sweep

__all__ = ["ConfigError", "TrainConfig", "resolve", "validate", "validate_for_env", "load_config_file"]

LR_SCHEDULES = ("constant", "linear", "robbins-monro")
TARGET_UPDATES = ("soft", "hard")
DEVICES = ("auto", "cpu", "cuda")
GRADIENTS = ("auto", "autograd", "manual")

# Batch x width² from which a CPU update's GEMMs are big enough to gain from every core (auto_threads).
THREADED_GEMM_SIZE = 256 * 256 * 256
# Random steps, when neither a preset nor the user sets them, are at most this fraction of the run.
RANDOM_STEPS_FRACTION = 0.05


def resolved_settings(use_compile: bool, device: torch.device) -> dict[str, Any]:
    """What a run resolved from "auto" settings (after it set torch's threads), written beside the
    settings in config.json. Readers of a config drop these keys (`RESOLVED_KEYS`)."""
    return {"compile_resolved": use_compile, "device_resolved": str(device),
            "threads_resolved": torch.get_num_threads()}


RESOLVED_KEYS = tuple(resolved_settings(False, torch.device("cpu")))


def auto_threads(batch_size: int, hidden_sizes: tuple[int, ...], cores: int, members: int = 1) -> int:
    """torch threads for a CPU run when --threads is 0: every core once the update's GEMMs reach
    batch 256 at width 256, one thread below, where per-op overhead binds and two OpenMP threads
    beside another process stall each other (BENCHMARKS.md, "CPU ceilings" and "Many agents").
    Stacked members' products are one batched GEMM over all of them, so their size counts
    `members` times."""
    return cores if members * batch_size * max(hidden_sizes, default=0) ** 2 >= THREADED_GEMM_SIZE else 1


def _hidden_sizes(value: Any) -> str | None:
    ok = bool(value) and all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in value)
    return None if ok else f"must be one or more positive integers, got {list(value)}"


@dataclass
class CommonSettings:
    """Settings every algorithm reads."""

    algo: str = setting("dqn", "algorithm", choices=tuple(ALGORITHMS))
    env: str = setting("CartPole-v1", "environment id (envpool, else gymnasium)")
    seed: int = setting(1, "random seed", check=non_negative_int)
    total_steps: int = setting(100_000, "env steps (transitions over all envs) to collect", check=positive_int)
    num_envs: int = setting(1, "parallel envs", check=positive_int)
    buffer_size: int = setting(100_000, "replay capacity in transitions (at most --total-steps unless given)",
                               check=positive_int)
    batch_size: int = setting(128, "mini-batch size", check=positive_int)
    learning_starts: int = setting(
        1_000, f"env steps of random actions before learning (at most {RANDOM_STEPS_FRACTION:.0%} of "
               f"--total-steps unless a preset or you set it)", check=non_negative_int)
    train_every: int = setting(1, "vector steps between train phases", check=positive_int)
    updates_per_train: int = setting(1, "mini-batch updates per train phase (with --train-every, --num-envs and "
                                        "--batch-size this sets the update-to-data ratio)", check=positive_int)
    lr: float = setting(3e-4, "learning rate (the critic's, for DDPG/TD3/SAC)", check=positive)
    lr_schedule: str = setting("constant", "learning-rate schedule over updates", choices=LR_SCHEDULES)
    lr_k0: float = setting(1_000.0, "Robbins–Monro: lr_k = lr / (1 + k/k0)^p", check=positive)
    lr_power: float = setting(
        0.75, "Robbins–Monro exponent p, 0.5 < p <= 1: then the sum of steps diverges and the sum of their "
              "squares converges, the conditions under which SGD's stochastic approximation converges; "
              "under Adam with moving TD targets they guarantee nothing and only shape the decay")
    lr_end_fraction: float = setting(0.0, "linear schedule: final lr as a fraction of --lr", check=in_range(0, 1))
    gamma: float = setting(0.99, "discount in [0, 1]", check=in_range(0, 1))
    target_update: str = setting("soft", "soft (Polyak, every update) or hard (copy every C)", choices=TARGET_UPDATES)
    tau: float = setting(0.005, "soft update rate in (0, 1]", check=in_range(0, 1, low_open=True))
    target_period: int = setting(
        1_000, "hard update period C: DQN and SAC count gradient updates; DDPG/TD3 count actor updates "
               "(one per --policy-delay critic updates), as their targets move with the actor",
        check=positive_int)
    n_step: int = setting(1, "n-step returns: bootstrap from n steps ahead, cut at episode ends (computed at "
                             "sample time)", check=positive_int)
    prioritized: bool = setting(False, "proportional prioritized replay (a numba sum tree on CPU, a torch one on "
                                       "a GPU)")
    per_alpha: float = setting(0.6, "prioritized replay: priority = (|TD error| + eps)^alpha", check=in_range(0, 1))
    per_beta: float = setting(0.4, "prioritized replay: importance-weight exponent at the start, annealed "
                                   "linearly to 1 at --total-steps", check=in_range(0, 1))
    per_eps: float = setting(1e-6, "prioritized replay: added to |TD error| so no sampleable row has priority 0",
                             check=positive)
    hidden_sizes: tuple[int, ...] = setting((256, 256), "hidden layer sizes, space-separated", check=_hidden_sizes)
    max_grad_norm: float = setting(10.0, "global grad-norm clip (0 = off)", check=non_negative(" (0 disables clipping)"))
    gradients: str = setting(
        "auto", "how gradients are formed: autograd, or the hand-written ReLU-MLP backward (manual; DQN on "
                "vector observations, DDPG, TD3, SAC); auto = manual for those on CPU, autograd elsewhere",
        choices=GRADIENTS)
    precision: str = setting(
        "fp32", "dtype of the updates' matrix products: bf16 multiplies bf16 copies of fp32 master weights "
                "(gradients, clipping, Adam, target nets, TD targets, losses and the output layer stay fp32; fast "
                "where the CPU has AVX512-BF16/AMX, and on GPUs)", choices=tuple(PRECISIONS))
    device: str = setting("auto", "auto picks cuda when available", choices=DEVICES)
    threads: int = setting(0, "torch intra-op threads (0 = auto: on CPU, all cores from batch 256 at width 256, "
                              "else 1)", check=non_negative_int)
    compile: bool | None = setting(None, "torch.compile the update and the acting policy (default: on for CUDA)")
    cuda_graph: bool = setting(False, "replay each update as one CUDA graph (CUDA only; not yet verified on a "
                                      "GPU, so off by default)")
    collective_timeout: float = setting(
        300.0, "torchrun runs: seconds a rank waits in a collective (the gradient all_reduce, the per-window "
               "gather) for the other ranks before it stops with an error; it must outlast the longest a rank can "
               "fall behind (a cold torch.compile, writing a checkpoint with a large buffer)", check=positive)
    run_dir: str | None = setting(None, "run folder (default runs/<env>-<algo>-<seed>-<time>)")
    eval_episodes: int = setting(10, "greedy episodes per evaluation", check=positive_int)
    eval_every: int = setting(0, "env steps between evaluations (0 = end only)", check=non_negative_int)
    log_every: int = setting(5_000, "env steps between metric rows", check=positive_int)
    checkpoint_every: int = setting(
        0, "env steps between checkpoints (0 = end only); each one cuts the running episodes (as time-limit "
           "truncations) so that a resumed run continues exactly", check=non_negative_int)
    checkpoint_buffer: bool = setting(False, "include the replay buffer in checkpoints")
    progress: bool = setting(True, "progress bar on stderr")
    num_seeds: int = setting(
        1, "train this many fully independent agents (seeds --seed, --seed + 1, ...) in one process, as one "
           "stacked computation; with --sweep, this many seeds per grid point", check=positive_int)
    sweep: tuple[str, ...] = setting(
        (), "NAME=V1,V2,...: train one member per value of a per-member setting (repeatable: the sweeps form a "
            "grid; see fastrl.sweeps.SWEEPABLE)", check=check_sweep_syntax)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hidden_sizes"] = list(self.hidden_sizes)
        out["sweep"] = list(self.sweep)
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


def _compose() -> type:
    sections: list[type] = []
    for algo in ALGORITHMS.values():
        if algo.section is not None and algo.section not in sections:
            sections.append(algo.section)
    # Fields come in reverse MRO order: the common settings first, then each section in registry order.
    cls = dataclasses.make_dataclass("TrainConfig", [], bases=(*reversed(sections), CommonSettings))
    cls.__module__, cls.__qualname__ = __name__, "TrainConfig"
    cls.__doc__ = "Every setting of a run: `CommonSettings` and each algorithm's section, flat."
    return cls


TrainConfig = _compose()
FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
FIELD_NAMES = set(FIELDS)
COMMON_NAMES = {f.name for f in dataclasses.fields(CommonSettings)}


def setting_users(name: str) -> tuple[str, ...]:
    """The algorithms that read an algorithm-specific setting ((), for a common one)."""
    return tuple(a.name for a in ALGORITHMS.values() if name in a.reads)


def check_algo_settings(algo: str, given: dict[str, Any]) -> None:
    """Reject an explicitly given setting that `algo` does not use (it would be silently ignored)."""
    for name in given:
        if name in COMMON_NAMES or name not in FIELD_NAMES:
            continue
        if name not in ALGORITHMS[algo].reads:
            users = setting_users(name)
            raise ConfigError(f"{flag(name)}: a {'/'.join(users)} setting, which --algo {algo} does not use; drop it")


def preset_for(algo: str, env_id: str) -> dict[str, Any]:
    return dict(ALGORITHMS[algo].presets.get(env_id, {})) if algo in ALGORITHMS else {}


def fit_to_run_length(values: dict[str, Any], chosen: set[str], notes: list[str] | None) -> None:
    """Defaults made for long runs would defeat short ones: 25k random steps (TD3's published
    default) leave a 30k-step run almost nothing to learn from, and a buffer larger than the run is
    allocated and never filled. Where neither a preset nor the user chose them, fit them to
    --total-steps and say so. (ε decays over a fraction of --total-steps already.)"""
    total = values["total_steps"]
    cap = max(int(total * RANDOM_STEPS_FRACTION), values["batch_size"])
    if "learning_starts" not in chosen and values["learning_starts"] > cap:
        if notes is not None:
            notes.append(f"--learning-starts {values['learning_starts']} -> {cap} "
                         f"({RANDOM_STEPS_FRACTION:.0%} of --total-steps {total})")
        values["learning_starts"] = cap
    # Every checkpoint and the end store one extra vector step (the cut rows: fastrl.train.end_segment).
    cuts = 1 + (total // values["checkpoint_every"] if values["checkpoint_every"] else 0)
    size = max(total + cuts * values["num_envs"], values["batch_size"], 2 * values["num_envs"])
    if "buffer_size" not in chosen and values["buffer_size"] > size:
        if notes is not None:
            notes.append(f"--buffer-size {values['buffer_size']} -> {size} (the run collects {total} transitions)")
        values["buffer_size"] = size


def resolve(overrides: dict[str, Any], notes: list[str] | None = None) -> TrainConfig:
    """Build a config from explicitly given settings (file and flags), filling in presets. Defaults
    fitted to the run's length are described in `notes`, when given."""
    unknown = sorted(set(overrides) - FIELD_NAMES)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(FIELD_NAMES))}")
    algo = overrides.get("algo", FIELDS["algo"].default)
    env_id = overrides.get("env", FIELDS["env"].default)
    if algo not in ALGORITHMS:
        raise ConfigError(f"--algo: unknown algorithm {algo!r}; allowed: {', '.join(ALGORITHMS)}")
    check_algo_settings(algo, overrides)
    preset = preset_for(algo, env_id)
    values = {name: f.default for name, f in FIELDS.items()}
    values.update(ALGORITHMS[algo].defaults)
    values.update(preset)
    values.update(overrides)
    # A preset's values were chosen for its own run length: once --total-steps differs, they are
    # fitted like defaults.
    preset_chosen = set(preset) if "total_steps" not in overrides or "total_steps" not in preset else set()
    fit_to_run_length(values, preset_chosen | set(overrides), notes)
    for name in ("hidden_sizes", "sweep"):
        if isinstance(values[name], list):
            values[name] = tuple(values[name])
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
        check_type(name, value, f" (in {str(path)!r})")
    return settings


def check_type(name: str, value: Any, where: str = "") -> None:
    """Flags are typed by argparse; file values are whatever TOML/JSON made of them, and the Python
    API's whatever the caller passed. `where` ends the message."""
    hint = str(FIELDS[name].type)  # annotations are strings (postponed evaluation)
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if value is None and "None" in hint:
        return
    if hint.startswith("tuple[str"):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        kind = "a list of strings"
    elif hint.startswith("tuple"):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
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
        raise ConfigError(f"{flag(name)}: must be {kind}, got {value!r}{where}")


def validate(cfg: TrainConfig) -> None:
    """Check every setting that can be checked without knowing the env. Raises ConfigError."""
    for f in dataclasses.fields(cfg):
        check_field(f, getattr(cfg, f.name))
    if cfg.batch_size > cfg.buffer_size:
        raise ConfigError(f"--batch-size: {cfg.batch_size} is larger than --buffer-size {cfg.buffer_size}")
    if cfg.buffer_size < 2 * cfg.num_envs:
        raise ConfigError(f"--buffer-size: must hold at least two vector steps (>= {2 * cfg.num_envs})")
    if cfg.lr_schedule == "robbins-monro" and not (0.5 < cfg.lr_power <= 1.0):
        raise ConfigError(
            f"--lr-power: Robbins–Monro needs 0.5 < p <= 1 (sum of steps diverges, sum of squares "
            f"converges), got {cfg.lr_power}"
        )
    if cfg.checkpoint_every and cfg.checkpoint_every < cfg.num_envs:
        raise ConfigError(f"--checkpoint-every: must be 0 (end only) or at least --num-envs {cfg.num_envs} "
                          f"(one vector step), got {cfg.checkpoint_every}")
    points = sweep_grid(cfg)  # each swept value passes its setting's own check
    algo = ALGORITHMS[cfg.algo]
    if algo.validate is not None:
        for point in points:  # every member's settings: a swept value may clash with a given one
            algo.validate(dataclasses.replace(cfg, **point))


def sweep_grid(cfg: TrainConfig) -> list[dict[str, Any]]:
    """The grid points of `cfg.sweep`: one dict of swept settings per point, the first sweep
    varying slowest; [{}] without sweeps. Each value is converted to its setting's type and passes
    that setting's check (and, for an algorithm-specific one, `cfg.algo` must read it)."""
    axes: list[list[dict[str, Any]]] = []  # per sweep, the settings of each of its values
    swept: dict[str, str] = {}  # setting -> the sweep that sets it
    for text in cfg.sweep:
        name, raw_values = parse_sweep(text)
        if name in COMPOUND:
            values = compound_values(name, raw_values)
        else:
            values = [{name: sweep_value(name, raw)} for raw in raw_values]
        for setting_name in sorted({k for value in values for k in value}):
            if setting_name in swept:
                twice = ("swept twice" if swept[setting_name] == name
                         else f"set by both --sweep {swept[setting_name]} and --sweep {name}")
                raise ConfigError(f"--sweep: {setting_name} is {twice}; give all its values in one "
                                  f"--sweep {name}=V1,V2,...")
            swept[setting_name] = name
            if setting_name not in COMMON_NAMES and setting_name not in ALGORITHMS[cfg.algo].reads:
                raise ConfigError(f"--sweep: {setting_name} is not a setting of --algo {cfg.algo}")
        for value in values:
            for setting_name, v in value.items():
                try:
                    check_field(FIELDS[setting_name], v)
                except ConfigError as exc:
                    raise ConfigError(f"--sweep: {setting_name}={v}: {str(exc).split(': ', 1)[1]}") from None
        axes.append(values)
    points: list[dict[str, Any]] = [{}]
    for values in axes:
        points = [{**point, **value} for point in points for value in values]
    return points


def sweep_value(name: str, raw: str) -> Any:
    """A swept value as its setting's type (the flag's own parsing)."""
    hint = str(FIELDS[name].type)
    try:
        if hint.startswith("int"):
            return int(raw)
        if hint.startswith("float"):
            return float(raw)
    except ValueError:
        kind = "an integer" if hint.startswith("int") else "a number"
        raise ConfigError(f"--sweep: {name} values must each be {kind}, got {raw!r}") from None
    return raw


def validate_for_env(cfg: TrainConfig, discrete: bool) -> None:
    """Algorithm/action-space fit, once the env's spec is known."""
    algo = ALGORITHMS[cfg.algo]
    if algo.discrete != discrete:
        need = "a discrete" if algo.discrete else "a continuous (Box)"
        has = "continuous" if algo.discrete else "discrete"
        fits = [a.name for a in ALGORITHMS.values() if a.discrete == discrete]
        raise ConfigError(f"--algo: {cfg.algo} needs {need} action space but {cfg.env} has {has} actions; "
                          f"use --algo {' or '.join(fits)}")


def config_from_checkpoint(settings: dict[str, Any], flag_name: str) -> TrainConfig:
    """The config saved in a checkpoint. Settings added since it was written take their defaults,
    which reproduce what that version did; a setting this version no longer knows is refused."""
    settings = {k: v for k, v in settings.items() if k not in RESOLVED_KEYS}
    unknown = sorted(set(settings) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{flag_name}: the checkpoint's settings do not fit this fastrl version (unknown: "
                          f"{', '.join(unknown)})")
    if settings.get("algo") not in ALGORITHMS:
        raise ConfigError(f"{flag_name}: algorithm {settings.get('algo')!r} of this run is not available in this "
                          f"fastrl (available: {', '.join(ALGORITHMS)})")
    return TrainConfig(**{**settings, "hidden_sizes": tuple(settings["hidden_sizes"]),
                          "sweep": tuple(settings.get("sweep", ()))})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device: cuda requested but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


def _as_flag(name: str, value: Any) -> str:
    """A setting as the command line spells it, so a preset line can be pasted back."""
    if isinstance(value, bool):
        return flag(name) if value else "--no-" + flag(name)[2:]
    if isinstance(value, (tuple, list)):
        return f"{flag(name)} {' '.join(str(v) for v in value)}"
    return f"{flag(name)} {value}"


def describe_presets() -> str:
    lines = ["presets (applied from --algo and --env, before your flags):"]
    for algo in ALGORITHMS.values():
        for env_id, values in algo.presets.items():
            shown = " ".join(_as_flag(k, v) for k, v in values.items())
            lines.append(f"  {algo.name} {env_id}: {shown}")
    notes = [f"  {a.name}: {a.notes}" for a in ALGORITHMS.values() if a.notes]
    if notes:
        lines += ["", "algorithm notes:", *notes]
    return "\n".join(lines)
