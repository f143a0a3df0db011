"""Many agents in one process (`--num-seeds N`, `--sweep NAME=V1,V2,...`): who the members are,
and the train loop's per-member bookkeeping.

Members are the grid points of the sweeps (the first sweep varying slowest) times the seeds
`--seed, --seed + 1, ...`: member `p * N + s` is grid point p with seed `--seed + s`, so every
grid point trains the same seeds. Member e owns envs [e n, (e + 1) n) of the run's one vector env
(n = --num-envs), its own replay buffer (`fastrl.member_replay`) and its slice of the stacked
agent (`fastrl.dqn_members`, `fastrl.td3_members`, `fastrl.sac_members`). Counts such as
--total-steps are per member.

A member whose metrics turn NaN/Inf is stopped: it is named in a message and in the summary, leaves
the aggregates, and its weights are no longer checked before a checkpoint; the others train on.
Its slice of the stacked update is still computed (the update has no per-member switch), but its
NaN cannot reach another member: every reduction (loss mean, clip norm) is per member and Adam
and the target lerps are per element. The run fails only when every member is stopped.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastrl.config import TrainConfig, sweep_grid
from fastrl.registry import ALGORITHMS
from fastrl.settings import ConfigError

# Written by every member row of metrics.csv before the metrics.
MEMBER_COLUMNS = ("member", "seed")
# A member's swept settings are columns too, prefixed (the lr column is the lr in force).
SETTING_PREFIX = "sweep_"


@dataclass(frozen=True)
class Member:
    index: int
    seed: int
    point: int  # its grid point
    settings: dict[str, Any]  # its swept settings ({} without --sweep)

    def describe(self) -> str:
        swept = "".join(f", {k}={v}" for k, v in self.settings.items())
        return f"member {self.index} (seed {self.seed}{swept})"


def plan_members(cfg: TrainConfig) -> list[Member] | None:
    """The run's members, or None for a plain single-agent run (the default path, unchanged)."""
    if cfg.num_seeds == 1 and not cfg.sweep:
        return None
    return [Member(p * cfg.num_seeds + s, cfg.seed + s, p, point)
            for p, point in enumerate(sweep_grid(cfg)) for s in range(cfg.num_seeds)]


def member_configs(cfg: TrainConfig, members: list[Member]) -> list[TrainConfig]:
    return [dataclasses.replace(cfg, seed=m.seed, **m.settings) for m in members]


def check_members(cfg: TrainConfig, spec: Any, distributed_run: bool, build_members: Any) -> None:
    """What a stacked run cannot do (yet). Raises ConfigError."""
    what = "--num-seeds" if cfg.num_seeds > 1 else "--sweep"
    if build_members is None:
        have = ", ".join(sorted(a.name for a in ALGORITHMS.values() if a.build_members is not None))
        raise ConfigError(f"{what}: stacked members are available for {have} so far, not --algo {cfg.algo}; run "
                          f"its seeds and settings as separate processes")
    if spec.is_image:
        raise ConfigError(f"{what}: stacked members need the MLP Q-net (vector observations); {cfg.env} observes "
                          f"images, so run its seeds as separate processes")
    if distributed_run:
        raise ConfigError(f"{what}: not available under torchrun; run the members in one process")
    if cfg.cuda_graph or cfg.compile:
        raise ConfigError(f"{what}: the stacked update runs eagerly; drop --cuda-graph and --compile")
    if cfg.gradients == "autograd":
        raise ConfigError(f"{what}: the stacked update is the hand-written one; use --gradients auto or manual")


def iqm(values: list[float]) -> float:
    """Interquartile mean: the mean of the middle half (a quarter trimmed from each end; all of
    them below 4 values)."""
    if not values:
        return math.nan
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    cut = int(len(ordered) * 0.25)
    return float(ordered[cut: len(ordered) - cut].mean())


def aggregate(values: list[float]) -> dict[str, float]:
    arr = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return {"mean": math.nan, "std": math.nan, "iqm": math.nan, "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "iqm": iqm(list(arr)), "n": int(arr.size)}


@dataclass
class MemberBook:
    """The loop's per-member state: evaluations, bests and stopped members (checkpointed)."""
    members: list[Member]
    envs_per_member: int
    eval_returns: list[list[float]] = field(default_factory=list)
    best_eval: list[float] = field(default_factory=list)
    stopped: dict[int, str] = field(default_factory=dict)  # member -> why

    def __post_init__(self) -> None:
        if not self.eval_returns:
            self.eval_returns = [[] for _ in self.members]
            self.best_eval = [-math.inf] * len(self.members)

    def live(self) -> list[int]:
        return [m.index for m in self.members if m.index not in self.stopped]

    @staticmethod
    def stand_in_actions(actions: torch.Tensor, stand_in: torch.Tensor) -> torch.Tensor:
        """`actions` with every non-finite entry set to `stand_in` (a valid action: the box's
        middle). A member whose weights went NaN acts on them until the log window stops it, and
        after that its envs keep stepping with the others': an env need not accept a NaN action.
        No generator is drawn from, so the live members' streams stay as they were. (A discrete
        action is an argmax, always a valid index.)"""
        if not actions.is_floating_point():
            return actions
        return torch.where(torch.isfinite(actions), actions, stand_in)

    def record_evaluation(self, returns: list[list[float]]) -> None:
        for e, r in enumerate(returns):
            self.eval_returns[e] = r
            if e not in self.stopped:
                self.best_eval[e] = max(self.best_eval[e], float(np.mean(r)))

    def rows(self, shared: dict[str, Any], means: dict[str, Any], episodes: list[tuple[int, float, int]],
             actions: torch.Tensor, exploration: dict[str, list[float]], lrs: list[float], evaluated: bool,
             entropy: Any) -> list[dict[str, Any]]:
        """One metrics row per member: the shared counters, then the member's own values."""
        n = self.envs_per_member
        out = []
        for m in self.members:
            e = m.index
            returns = [r for env, r, _ in episodes if env // n == e]
            lengths = [k for env, _, k in episodes if env // n == e]
            evaluation = self.eval_returns[e] if evaluated else None
            row = {
                **shared, "episodes": len(returns),
                "episodic_return": float(np.mean(returns)) if returns else math.nan,
                "episodic_length": float(np.mean(lengths)) if lengths else math.nan,
                **{k: (v[e] if isinstance(v, list) else v) for k, v in means.items()},
                "lr": lrs[e], "action_entropy": entropy(actions[:, e * n:(e + 1) * n]),
                "eval_return_mean": float(np.mean(evaluation)) if evaluation else math.nan,
                "eval_return_std": float(np.std(evaluation)) if evaluation else math.nan,
                **{k: v[e] for k, v in exploration.items()},
                "member": e, "seed": m.seed, **{SETTING_PREFIX + k: v for k, v in m.settings.items()},
            }
            out.append(row)
        return out

    def overview(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The progress line's row: each number averaged over the live members' rows."""
        live = [rows[e] for e in self.live()] or rows
        out: dict[str, Any] = {}
        for key, value in live[0].items():
            if key in MEMBER_COLUMNS or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            finite = [r[key] for r in live if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            out[key] = float(np.mean(finite)) if finite else math.nan
        return out

    def check(self, means: dict[str, Any], env_step: int, updates: int) -> list[str]:
        """Stop each live member with a NaN/Inf metric in this window; the messages naming them."""
        messages = []
        for m in self.members:
            if m.index in self.stopped:
                continue
            bad = [k for k, v in means.items() if isinstance(v, list) and not math.isfinite(v[m.index])]
            if bad:
                why = (f"{m.describe()}: non-finite {bad[0]} at env step {env_step} (after {updates} updates); "
                       f"stopped, the other members continue")
                self.stopped[m.index] = why
                messages.append(why)
        return messages

    def state_dict(self) -> dict[str, Any]:
        return {"eval_returns": self.eval_returns, "best_eval": self.best_eval,
                "stopped": {str(k): v for k, v in self.stopped.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.eval_returns = [list(r) for r in state["eval_returns"]]
        self.best_eval = list(state["best_eval"])
        self.stopped = {int(k): v for k, v in state["stopped"].items()}

    def summary(self) -> dict[str, Any]:
        """summary.json's member keys: today's eval keys as aggregates over the live members,
        `members` and `grid` (mean, std and IQM over each grid point's seeds)."""
        finals = [float(np.mean(r)) if r else math.nan for r in self.eval_returns]
        bests = [b if math.isfinite(b) else math.nan for b in self.best_eval]
        live = self.live()
        members = [{"member": m.index, "seed": m.seed, "settings": m.settings,
                    "final_eval_return_mean": finals[m.index], "best_eval_return_mean": bests[m.index],
                    "final_eval_returns": self.eval_returns[m.index],
                    "stopped": self.stopped.get(m.index)} for m in self.members]
        grid = []
        for point in sorted({m.point for m in self.members}):
            of = [m for m in self.members if m.point == point and m.index in live]
            grid.append({"settings": next(m.settings for m in self.members if m.point == point),
                         "seeds": [m.seed for m in of],
                         "final_eval_return_mean": aggregate([finals[m.index] for m in of]),
                         "best_eval_return_mean": aggregate([bests[m.index] for m in of])})
        over_live = aggregate([finals[e] for e in live])
        return {
            "final_eval_return_mean": over_live["mean"], "final_eval_return_std": over_live["std"],
            "final_eval_returns": [r for e in live for r in self.eval_returns[e]],
            "best_eval_return_mean": aggregate([bests[e] for e in live])["mean"],
            "num_members": len(self.members), "stopped_members": sorted(self.stopped),
            "members": members, "grid": grid,
        }
