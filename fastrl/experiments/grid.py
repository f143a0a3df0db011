"""The hard-vs-soft × batch-size grid: which runs an experiment is made of.

Every run of a task collects the same number of env steps with the same updates per transition
(the preset's), so a run differs from another only in its target update and batch size. The
replay ratio (transitions trained on per transition collected) therefore grows with the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastrl.config import TrainConfig, resolve


@dataclass(frozen=True)
class TargetSetting:
    kind: str  # "hard" or "soft"
    value: float  # hard: period C in updates; soft: tau

    @property
    def label(self) -> str:
        return f"hard C={int(self.value)}" if self.kind == "hard" else f"soft τ={self.value:g}"

    @property
    def slug(self) -> str:
        return f"hard{int(self.value)}" if self.kind == "hard" else f"soft{self.value:g}"

    def overrides(self) -> dict[str, Any]:
        if self.kind == "hard":
            return {"target_update": "hard", "target_period": int(self.value)}
        return {"target_update": "soft", "tau": float(self.value)}

    @staticmethod
    def parse(text: str) -> TargetSetting:
        """'hard:500' or 'soft:0.005'."""
        kind, _, value = text.partition(":")
        if kind not in ("hard", "soft") or not value:
            raise ValueError(f"target setting {text!r}: expected hard:PERIOD or soft:TAU")
        setting = TargetSetting(kind, int(value) if kind == "hard" else float(value))
        if (kind == "hard" and setting.value < 1) or (kind == "soft" and not 0 < setting.value <= 1):
            raise ValueError(f"target setting {text!r}: period must be >= 1, tau in (0, 1]")
        return setting


@dataclass(frozen=True)
class Task:
    algo: str
    env: str
    total_steps: int
    threshold: float  # "solved" return for steps-to-threshold
    eval_every: int
    overrides: tuple[tuple[str, Any], ...] = ()  # extra settings on top of the preset

    @property
    def name(self) -> str:
        return f"{self.algo}-{self.env}"


@dataclass(frozen=True)
class RunSpec:
    task: Task
    target: TargetSetting
    batch_size: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.task.name}-{self.target.slug}-b{self.batch_size}-s{self.seed}"

    def config(self, runs_dir: str) -> TrainConfig:
        return resolve({
            "algo": self.task.algo, "env": self.task.env, "total_steps": self.task.total_steps,
            "eval_every": self.task.eval_every, **dict(self.task.overrides), **self.target.overrides(),
            "batch_size": self.batch_size, "seed": self.seed, "progress": False,
            "run_dir": f"{runs_dir}/{self.name}",
        })


@dataclass(frozen=True)
class Grid:
    tasks: tuple[Task, ...]
    targets: tuple[TargetSetting, ...]
    batch_sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    notes: tuple[str, ...] = field(default=())

    def runs(self) -> list[RunSpec]:
        return [RunSpec(task, target, batch, seed) for task in self.tasks for batch in self.batch_sizes
                for target in self.targets for seed in self.seeds]


HARD = tuple(TargetSetting("hard", c) for c in (100, 500, 2000))
SOFT = tuple(TargetSetting("soft", t) for t in (0.001, 0.005, 0.02, 0.1))

# CartPole-v1's registered reward threshold is 475; Pendulum has none, -200 is the usual "solved".
DQN_CARTPOLE = Task("dqn", "CartPole-v1", 50_000, 475.0, 2_500)
TD3_PENDULUM = Task("td3", "Pendulum-v1", 20_000, -200.0, 1_000)

FULL = Grid((DQN_CARTPOLE, TD3_PENDULUM), HARD + SOFT, (32, 128, 512, 2048), (1, 2, 3, 4, 5))

# Sized for <= 30 min on 2 idle CPU cores with --jobs 2: the middle of each range, 2 seeds, TD3
# runs halved (its updates dominate the cost). DQN keeps the preset's 50k steps: at 20k no setting
# had learned CartPole yet, so a shorter DQN run could not tell the settings apart.
QUICK = Grid(
    (DQN_CARTPOLE, Task("td3", "Pendulum-v1", 10_000, -200.0, 1_000)),
    (TargetSetting("hard", 100), TargetSetting("hard", 500), TargetSetting("soft", 0.005),
     TargetSetting("soft", 0.02)),
    (32, 128, 512), (1, 2),
    notes=("quick grid: TD3 runs shortened to 10k env steps (preset 20k); presets otherwise",),
)
