"""The hard-vs-soft × batch-size grid: which runs an experiment is made of, and which of them
train together as the stacked members of one process.

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
    def value_text(self) -> str:
        """As `--sweep target=` takes it."""
        return f"hard:{int(self.value)}" if self.kind == "hard" else f"soft:{self.value!r}"

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

    @property
    def specs(self) -> tuple[RunSpec, ...]:
        return (self,)

    def config(self, runs_dir: str) -> TrainConfig:
        return resolve({
            "algo": self.task.algo, "env": self.task.env, "total_steps": self.task.total_steps,
            "eval_every": self.task.eval_every, **dict(self.task.overrides), **self.target.overrides(),
            "batch_size": self.batch_size, "seed": self.seed, "progress": False,
            "run_dir": f"{runs_dir}/{self.name}",
        })


@dataclass(frozen=True)
class StackedRuns:
    """The runs of one task and batch size for a block of consecutive seeds, every target setting
    of the grid, trained as one process: `--sweep target=... --num-seeds N` (`fastrl.members`).
    `specs` are in the members' order: target setting major, seed minor."""
    task: Task
    batch_size: int
    targets: tuple[TargetSetting, ...]
    seeds: tuple[int, ...]  # consecutive

    @property
    def specs(self) -> tuple[RunSpec, ...]:
        return tuple(RunSpec(self.task, t, self.batch_size, s) for t in self.targets for s in self.seeds)

    @property
    def name(self) -> str:
        seeds = f"s{self.seeds[0]}" + (f"-{self.seeds[-1]}" if len(self.seeds) > 1 else "")
        return f"{self.task.name}-b{self.batch_size}-{seeds}-" + "_".join(t.slug for t in self.targets)

    def config(self, runs_dir: str) -> TrainConfig:
        return resolve({
            "algo": self.task.algo, "env": self.task.env, "total_steps": self.task.total_steps,
            "eval_every": self.task.eval_every, **dict(self.task.overrides),
            "sweep": ("target=" + ",".join(t.value_text for t in self.targets),),
            "num_seeds": len(self.seeds), "batch_size": self.batch_size, "seed": self.seeds[0],
            "progress": False, "run_dir": f"{runs_dir}/{self.name}",
        })


def consecutive_blocks(seeds: tuple[int, ...]) -> list[tuple[int, ...]]:
    """[1, 2, 3, 7, 8] -> [(1, 2, 3), (7, 8)]: the seed blocks one stacked process can train
    (its members' seeds are --seed, --seed + 1, ...)."""
    blocks: list[list[int]] = []
    for seed in sorted(set(seeds)):
        if blocks and seed == blocks[-1][-1] + 1:
            blocks[-1].append(seed)
        else:
            blocks.append([seed])
    return [tuple(b) for b in blocks]


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

    def processes(self, stackable: set[str]) -> list[RunSpec | StackedRuns]:
        """What to train, one item per process: the runs of an algorithm in `stackable` grouped
        per (task, batch size, block of consecutive seeds) as stacked members, the others alone.
        Together they hold every run of `runs()` once."""
        out: list[RunSpec | StackedRuns] = []
        for task in self.tasks:
            for batch in self.batch_sizes:
                if task.algo in stackable and len(self.targets) * len(self.seeds) > 1:
                    out += [StackedRuns(task, batch, self.targets, block) for block in consecutive_blocks(self.seeds)]
                else:
                    out += [RunSpec(task, t, batch, s) for t in self.targets for s in self.seeds]
        return out


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
