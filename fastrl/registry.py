"""Every algorithm fastrl knows: module -> its `ALGORITHMS` (fastrl.algorithm.Algorithm values).

Adding an algorithm is its own file plus one line here. `fastrl.config` builds `TrainConfig` from
the sections listed here; the trainer and `fastrl.evaluate` build agents through `build_agent`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fastrl.algorithm import Agent, Algorithm

if TYPE_CHECKING:
    import torch

    from fastrl.envs import EnvSpec

ALGORITHM_MODULES = (
    "fastrl.dqn",
    "fastrl.td3",
    "fastrl.sac",
)

ALGORITHMS: dict[str, Algorithm] = {
    algo.name: algo for module in ALGORITHM_MODULES for algo in importlib.import_module(module).ALGORITHMS
}


def build_agent(spec: EnvSpec, cfg, device: torch.device, use_compile: bool) -> Agent:
    return ALGORITHMS[cfg.algo].build(spec, cfg, device, use_compile)
