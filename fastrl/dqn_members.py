"""E independent DQN agents (the MLP Q-net) trained as one stacked computation (`--num-seeds`,
`--sweep`).

The E members' Q-nets are one `StackedMLP` with E members, so each update is one set of batched
GEMMs over a [E, B, ...] batch (`dqn.make_manual_update` in its stacked form). Nothing is shared
between members but the update's kernels: each has its own initial weights (member e's are those a
single-agent run with its seed starts from), Adam moments (Adam is per element), gradient clip,
lr, target rule, ε schedule and exploration generator.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from fastrl.buffer import Batch
from fastrl.dqn import epsilon_greedy, make_manual_update
from fastrl.fused_adam import FusedAdam, flatten_parameters_
from fastrl.learner import PRECISIONS, scheduled_lr
from fastrl.schedules import linear, planned_updates
from fastrl.stacked_mlp import StackedMLP
from fastrl.targets import MemberTargetUpdater, make_member_target_updater

if TYPE_CHECKING:
    from fastrl.config import TrainConfig
    from fastrl.envs import EnvSpec


def seeded_members(configs: list[TrainConfig], in_dim: int, hidden_sizes: tuple[int, ...], out_dim: int,
                   dtype: torch.dtype) -> StackedMLP:
    """A StackedMLP whose member e is initialised as a one-member net built right after
    `torch.manual_seed(configs[e].seed)` (what a single-agent run of that seed starts from)."""
    return seeded_stacks([c.seed for c in configs], [(1, in_dim, hidden_sizes, out_dim)], dtype)[0]


NetShape = tuple[int, int, tuple[int, ...], int]  # rows per member, in, hidden sizes, out


def seeded_stacks(seeds: list[int], shapes: list[NetShape], dtype: torch.dtype) -> list[StackedMLP]:
    """One StackedMLP per shape, of `rows * len(seeds)` members, whose rows [e rows, (e + 1) rows)
    are initialised as the `rows`-member nets built in `shapes` order right after
    `torch.manual_seed(seeds[e])` (what a single-agent run of that seed starts from: TD3 builds its
    actor, then its critics). Seeding the members leaves the global RNG as it was (only making the
    stacks draws from it)."""
    nets = [StackedMLP(rows * len(seeds), in_dim, hidden, out_dim, dtype) for rows, in_dim, hidden, out_dim in shapes]
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for e, seed in enumerate(seeds):
            torch.manual_seed(seed)
            for net, (rows, in_dim, hidden, out_dim) in zip(nets, shapes, strict=True):
                one = StackedMLP(rows, in_dim, hidden, out_dim, dtype)
                for mine, its in zip(net.parameters(), one.parameters(), strict=True):
                    mine[e * rows:(e + 1) * rows].copy_(its)
    return nets


def lr_groups(lrs: list[float], net: nn.Module | list[torch.Tensor]) -> list[tuple[float, list[tuple[int, int]]]]:
    """FusedAdam's lr groups for members with their own lrs: per distinct lr (as a factor of the
    first member's), the ranges of the flat parameter (`flatten_parameters_` order; a module's
    parameters, or the tensors given) its members own. Member e owns the e-th of len(lrs) equal
    blocks of every tensor's leading axis (a member's rows of it: TD3's and SAC's twin critics 2)."""
    ranges: dict[float, list[tuple[int, int]]] = {}
    offset, members = 0, len(lrs)
    for p in (net.parameters() if isinstance(net, nn.Module) else net):
        each = p.numel() // members
        for e, lr in enumerate(lrs):
            ranges.setdefault(lr, []).append((offset + e * each, offset + (e + 1) * each))
        offset += members * each
    return [(lr / lrs[0], spans) for lr, spans in ranges.items()]


def member_optimizer(net: StackedMLP, lrs: list[float]) -> FusedAdam:
    """FusedAdam over `net`'s flattened parameters, member e's at lr `lrs[e]`: one fused step for
    one lr, else one per distinct lr over its members' parts (`lr_groups`)."""
    flat, flat_grad = flatten_parameters_(net)
    return FusedAdam([flat], lr=lrs[0], grads=[flat_grad], lr_groups=lr_groups(lrs, net) if len(set(lrs)) > 1 else None)


def member_generators(members: list[TrainConfig], offset: int, device: torch.device) -> list[torch.Generator]:
    """A generator per member, seeded `seed + offset` as the single agent of that seed seeds its own."""
    made = []
    for c in members:
        g = torch.Generator(device=device)
        g.manual_seed(c.seed + offset)
        made.append(g)
    return made


def member_draws(draw: Callable[..., torch.Tensor], generators: list[torch.Generator], shape: tuple[int, ...],
                 device: torch.device) -> torch.Tensor:
    """[M, *shape] of `draw` (torch.rand or torch.randn), member m's from its own generator."""
    return torch.stack([draw(shape, generator=g, device=device) for g in generators])


def uniform_box_actions(generators: list[torch.Generator], low: torch.Tensor, high: torch.Tensor, n: int,
                        device: torch.device) -> torch.Tensor:
    """n uniform actions in the box [low, high] ([n, act]), n / M from each member's generator."""
    unit = member_draws(torch.rand, generators, (n // len(generators), low.numel()), device)
    return (low + (high - low) * unit).reshape(n, -1)


@dataclass
class StackedDQN:
    spec: EnvSpec
    cfg: TrainConfig  # the run's settings (member 0's where a member differs)
    members: list[TrainConfig]  # each member's settings
    q: StackedMLP
    q_target: StackedMLP
    optimizer: FusedAdam
    targets: MemberTargetUpdater
    update_fn: object
    generators: list[torch.Generator]  # each member's exploration randomness
    eval_generators: list[torch.Generator]  # each member's evaluation ε draws (not checkpointed)
    device: torch.device
    total_updates: int
    lrs: list[float]  # each member's base lr
    updates_done: int = 0

    @property
    def num_members(self) -> int:
        return len(self.members)

    @property
    def generator(self) -> torch.Generator:  # the Agent contract's; member 0's
        return self.generators[0]

    # --- acting: observations [E * n, ...], member e's envs at rows [e n, (e + 1) n) ---
    def epsilon(self, env_step: int) -> list[float]:
        return [linear(c.eps_start, c.eps_end, c.eps_fraction * c.total_steps, env_step) for c in self.members]

    def exploration(self, env_step: int) -> dict[str, list[float]]:
        return {"epsilon": self.epsilon(env_step)}

    @torch.no_grad()
    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        per_member = obs.reshape(self.num_members, obs.shape[0] // self.num_members, -1)
        return self.q.infer(per_member).argmax(dim=-1).reshape(-1)

    def random_actions(self, n: int) -> torch.Tensor:
        each = n // self.num_members
        return torch.cat([torch.randint(0, self.spec.num_actions, (each,), generator=g, device=self.device)
                          for g in self.generators])

    def _explore(self, greedy: torch.Tensor, epsilons: list[float], generators: list[torch.Generator]) -> torch.Tensor:
        parts = greedy.view(self.num_members, -1).unbind(0)
        return torch.cat([epsilon_greedy(part, eps, self.spec.num_actions, g)
                          for part, eps, g in zip(parts, epsilons, generators, strict=True)])

    @torch.no_grad()
    def act(self, obs: torch.Tensor, env_step: int) -> torch.Tensor:
        return self._explore(self.greedy(obs), self.epsilon(env_step), self.generators)

    @torch.no_grad()
    def evaluation_actions(self, obs: torch.Tensor) -> torch.Tensor:
        greedy = self.greedy(obs)
        if self.cfg.eval_epsilon == 0.0:
            return greedy
        return self._explore(greedy, [self.cfg.eval_epsilon] * self.num_members, self.eval_generators)

    # --- learning ---
    def schedule_factor(self) -> float:
        return scheduled_lr(self.cfg, 1.0, self.updates_done, self.total_updates)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One update of every member from `batch` ([E, B, ...]: member e's rows at [e])."""
        self.optimizer.lr = self.lrs[0] * self.schedule_factor()  # lr groups scale it per member
        metrics = self.update_fn(batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.terminated,
                                 batch.discount, batch.weights)
        self.updates_done += 1
        self.targets.step(self.updates_done)
        return metrics

    def current_lr(self) -> list[float]:
        factor = self.optimizer.lr / self.lrs[0]
        return [lr * factor for lr in self.lrs]

    def weights_of(self, members: list[int]) -> dict[str, list[torch.Tensor]]:
        """The online and target weights of `members` alone (the checkpoint's NaN check skips
        stopped members)."""
        return {name: [p.detach()[members] for p in net.parameters()]
                for name, net in (("q", self.q), ("q_target", self.q_target))}

    # --- checkpointing ---
    def state_dict(self) -> dict:
        return {"q": self.q.state_dict(), "q_target": self.q_target.state_dict(),
                "optimizer": self.optimizer.state_dict(), "updates_done": self.updates_done,
                "generators": [g.get_state() for g in self.generators], "members": self.num_members}

    def load_state_dict(self, state: dict) -> None:
        self.q.load_state_dict(state["q"])
        self.q_target.load_state_dict(state["q_target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates_done = int(state["updates_done"])
        for g, saved in zip(self.generators, state["generators"], strict=True):
            g.set_state(saved)


def build_dqn_members(spec: EnvSpec, cfg: TrainConfig, members: list[TrainConfig], device: torch.device) -> StackedDQN:
    """The stacked agent of `members` (each member's full settings; only per-member settings
    differ). The hand-written update, eager: --compile and CUDA graphs are not wired for it."""
    dtype = PRECISIONS[cfg.precision]
    q = seeded_members(members, math.prod(spec.obs_shape), cfg.hidden_sizes, spec.num_actions, dtype).to(device)
    q_target = copy.deepcopy(q).requires_grad_(False)
    lrs = [c.lr for c in members]
    optimizer = member_optimizer(q, lrs)
    gamma = torch.tensor([c.gamma for c in members], device=device).unsqueeze(1)
    max_norm = torch.tensor([c.max_grad_norm for c in members], device=device)
    update_fn = make_manual_update(q, q_target, optimizer, gamma, cfg.double_dqn, cfg.loss, max_norm)
    targets = make_member_target_updater(q, q_target, [c.target_update for c in members], [c.tau for c in members],
                                         [c.target_period for c in members])
    return StackedDQN(spec, cfg, members, q, q_target, optimizer, targets, update_fn,
                      member_generators(members, 1, device), member_generators(members, 2, device),
                      device, planned_updates(cfg), lrs)
