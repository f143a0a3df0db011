"""`--sweep NAME=V1,V2,...`: which settings may differ between the members of one stacked run.

A member differs from the others only in values that keep every tensor's shape: the members'
weights are stacked on a leading axis and updated by one computation, so a per-member setting is
a per-member factor in that computation (an lr, a τ, a clip norm) or a host-side schedule (ε, the
hard-update period). Settings that change shapes or the loop itself cannot differ within one
process. This module imports nothing from fastrl but `settings`, so `fastrl.config` may use it.
"""

from __future__ import annotations

from typing import Any

from fastrl.settings import ConfigError

# Settings a member may hold its own value of.
SWEEPABLE = ("lr", "gamma", "tau", "target_update", "target_period", "max_grad_norm",
             "eps_start", "eps_end", "eps_fraction",
             "exploration_noise", "policy_noise", "noise_clip", "actor_lr", "alpha")
# Settings refused with the advice to run separate processes: they change a tensor's shape or what
# the loop does at each step, which every member of one process shares.
SHAPE_SETTINGS = ("batch_size", "hidden_sizes", "num_envs", "buffer_size", "total_steps", "train_every",
                  "updates_per_train", "learning_starts", "n_step", "frame_stack", "env", "algo",
                  "precision", "device", "prioritized", "policy_delay")
# Sweeps whose every value sets several settings at once (name -> the form of a value). `target`
# puts target rules side by side, each with its own parameter (a hard member's period, a soft
# member's τ): a grid of target_update × tau × target_period would also train members that differ
# only in a setting their rule ignores.
COMPOUND = {"target": "hard:PERIOD or soft:TAU"}


def target_rule(raw: str) -> dict[str, Any] | None:
    """"hard:C" -> target_update hard every C updates; "soft:TAU" -> soft with τ; None if neither."""
    kind, sep, value = raw.partition(":")
    try:
        if sep and kind == "hard":
            return {"target_update": "hard", "target_period": int(value)}
        if sep and kind == "soft":
            return {"target_update": "soft", "tau": float(value)}
    except ValueError:
        return None
    return None


def compound_values(name: str, raw_values: list[str]) -> list[dict[str, Any]]:
    """The settings each value of the compound sweep `name` stands for. Raises the one-line ConfigError."""
    rules = [target_rule(raw) for raw in raw_values]
    for raw, rule in zip(raw_values, rules):
        if rule is None:
            raise ConfigError(f"--sweep: {name} values must each be {COMPOUND[name]}, got {raw!r}")
    return rules  # type: ignore[return-value]


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """"NAME=V1,V2,..." -> (name with `_`, the values as given). Raises the one-line ConfigError."""
    problem = sweep_syntax_problem(text)
    if problem:
        raise ConfigError(f"--sweep: {problem}")
    name, values = text.split("=", 1)
    return name.strip().replace("-", "_"), [v.strip() for v in values.split(",")]


def sweep_syntax_problem(text: Any) -> str | None:
    if not isinstance(text, str) or "=" not in text:
        return f"expected NAME=V1,V2,..., got {text!r}"
    name, values = text.split("=", 1)
    name = name.strip().replace("-", "_")
    if name in SHAPE_SETTINGS:
        return (f"{name} cannot differ between the members of one process (it sets a tensor's shape or the "
                f"loop's steps); run one process per {name} value")
    if name not in SWEEPABLE and name not in COMPOUND:
        return f"{name!r} cannot be swept; sweepable settings: {', '.join(SWEEPABLE + tuple(COMPOUND))}"
    if any(not v.strip() for v in values.split(",")):
        return f"{name}: give one or more comma-separated values, got {values!r}"
    return None


def check_sweep_syntax(value: Any) -> str | None:
    """The `setting` check of `--sweep` (a tuple of NAME=V1,... strings)."""
    for text in value:
        problem = sweep_syntax_problem(text)
        if problem:
            return problem
    return None
