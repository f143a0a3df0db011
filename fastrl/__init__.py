"""fastrl: fast off-policy RL (DQN, DDPG, TD3) in PyTorch, from the command line
(`python -m fastrl.train`, `python -m fastrl.evaluate`) or from Python:

    import fastrl

    config = fastrl.make_config(algo="dqn", env="CartPole-v1", total_steps=20_000)
    summary = fastrl.train(config, callback=lambda row: row["env_step"] < 10_000)
    summary = fastrl.resume(summary["run_dir"])
    policy = fastrl.load_policy(summary["run_dir"])

See `fastrl.api` for what each does. `import fastrl` is cheap: torch and the rest load on first use
of one of these names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastrl import train
    from fastrl.api import TrainingError, make_config, resume
    from fastrl.config import TrainConfig
    from fastrl.policy import Policy, load_policy
    from fastrl.settings import ConfigError

# name -> the module that defines it. `train` is the module fastrl.train itself, which is callable
# as `fastrl.train(config, ...)`: importing a submodule sets the package attribute of its name, so a
# function of that name would be replaced by the module the first time fastrl.train is imported.
_EXPORTS = {
    "ConfigError": "fastrl.settings",
    "TrainConfig": "fastrl.config",
    "TrainingError": "fastrl.api",
    "make_config": "fastrl.api",
    "resume": "fastrl.api",
    "train": None,
    "Policy": "fastrl.policy",
    "load_policy": "fastrl.policy",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastrl' has no attribute {name!r}")
    if name == "train":
        return importlib.import_module("fastrl.train")  # importing it sets the attribute too
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
