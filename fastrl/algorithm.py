"""The contract every algorithm follows.

An algorithm is one file (`fastrl/dqn.py`, `fastrl/td3.py`, `fastrl/sac.py`) holding
- its pure loss functions: tensors in, `(loss, metrics)` out, metrics a dict of named scalars;
- its settings: a dataclass section of `fastrl.settings.setting` fields (merged into
  `TrainConfig`), its defaults and its per-env presets;
- `build(spec, cfg, device, use_compile) -> Agent`;
and one `Algorithm` value that names all of these. `fastrl.registry` lists the Algorithm values;
nothing else needs to know an algorithm exists.

The trainer only ever talks to an `Agent`. `update` returns named device scalars; the loop adds
them up by name without a host sync (`fastrl.metrics.MetricWindow`), and every name reaches
metrics.csv, TensorBoard and the progress line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from fastrl.buffer import Batch
    from fastrl.envs import EnvSpec


class Agent(Protocol):
    updates_done: int  # gradient updates so far (the trainer's and the lr schedule's counter)
    generator: torch.Generator  # exploration randomness, on the device

    def random_actions(self, n: int) -> torch.Tensor:
        """Uniform random actions for `n` envs (the learning-starts phase)."""

    def act(self, obs: torch.Tensor, env_step: int) -> torch.Tensor:
        """Exploring actions for a batch of observations."""

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        """Evaluation actions: argmax Q, the deterministic actor, or the Gaussian's mean. An agent
        may also define `evaluation_actions(obs)` (DQN: ε-greedy at --eval-epsilon), which
        evaluation then plays instead (`fastrl.evaluate.evaluation_policy`)."""

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One mini-batch update; named device scalars (never synced here)."""

    def current_lr(self) -> float: ...

    def exploration(self, env_step: int) -> dict[str, float]:
        """Host-side exploration settings in force at `env_step` (epsilon, noise), for the log."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass(frozen=True)
class Algorithm:
    name: str
    discrete: bool  # True: Discrete action spaces; False: Box
    build: Callable[..., Agent]  # (spec: EnvSpec, cfg: TrainConfig, device, use_compile: bool) -> Agent
    # Its settings section (a dataclass of `setting` fields); several algorithms may share one.
    section: type | None = None
    # The algorithm-specific settings it reads, from any section. Giving another algorithm's
    # setting is refused (it would be silently ignored).
    reads: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)  # applied before env presets
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # env id -> settings
    # Checks across settings, after the per-setting ones: cfg -> raise ConfigError.
    validate: Callable[[Any], None] | None = None
    # Checks that need the env's spec, before anything is built: (cfg, spec) -> raise ConfigError.
    check_spec: Callable[[Any, Any], None] | None = None
    # Notes for --help on how its settings are counted (e.g. what --target-period counts).
    notes: str = ""
    # Stacked members (`--num-seeds`, `--sweep`): (spec, cfg, member_cfgs, device) -> Agent whose
    # batches and metrics carry a leading member axis; None where not available.
    build_members: Callable[..., Agent] | None = None

