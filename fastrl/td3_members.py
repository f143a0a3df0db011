"""M independent TD3 or DDPG agents trained as one stacked computation (`--num-seeds`, `--sweep`).

The M actors are one `StackedMLP` with M members and the critics one with C M (C = 2 for TD3:
member m's twin critics are rows 2m and 2m + 1; C = 1 for DDPG), so each update is one set of
batched GEMMs over a [M, B, ...] batch: `td3.make_manual_update` in stacked form. The critics'
input [M, B, obs + act] is presented once per critic ([C M, B, ...]); the actor climbs critic 0 of
each member through the strided member slice `slice(0, None, C)` of the critics' layers (a view).

Nothing is shared between members but the update's kernels and the loop's shape (batch size,
policy delay): each has its own initial weights (member m's actor and critics are those a
single-agent run of its seed starts from), Adam moments, gradient clip, lrs, discount, target rule,
noise scales and generator (exploration noise, smoothing noise and random actions, seeded as that
single agent seeds its own). Targets move with the actor, every policy_delay updates, as in TD3.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fastrl.buffer import Batch
from fastrl.dqn_members import (
    member_draws, member_generators, member_optimizer, seeded_stacks, uniform_box_actions,
)
from fastrl.fused_adam import FusedAdam, clip_grad_norm_members_
from fastrl.learner import PRECISIONS, scheduled_lr
from fastrl.schedules import planned_updates
from fastrl.stacked_mlp import StackedMLP, Trace, backward
from fastrl.targets import MemberTargetUpdater, make_member_target_updater
from fastrl.td3 import UpdateFn, bootstrap_target, box_fraction, critic_input, critic_loss, explore, td_abs, to_box

if TYPE_CHECKING:
    from fastrl.config import TrainConfig
    from fastrl.envs import EnvSpec


def per_critic(x: torch.Tensor, critics: int) -> torch.Tensor:
    """[M, B, ...] -> [C M, B, ...]: member m's input once for each of its critics (rows C m ...)."""
    return x if critics == 1 else x.repeat_interleave(critics, dim=0)


def actor_traced(actor: StackedMLP, obs: torch.Tensor, low: torch.Tensor,
                 high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Trace]:
    """Every member's action for its own observations [M, B, ...], its tanh output, and the trace."""
    pre, trace = actor.forward_traced(obs.flatten(2))
    t = torch.tanh(pre)
    return to_box(t, low, high), t, trace


def member_column(values: list[float], device: torch.device, dims: int) -> torch.Tensor:
    """Per-member values as an [M, 1, ...] tensor that broadcasts against [M, B, ...] (`dims` in all)."""
    return torch.tensor(values, dtype=torch.float32, device=device).view(-1, *(1,) * (dims - 1))


def make_stacked_update(actor: StackedMLP, critic: StackedMLP, actor_target: StackedMLP, critic_target: StackedMLP,
                        critic_opt: FusedAdam, actor_opt: FusedAdam, low: torch.Tensor, high: torch.Tensor,
                        gamma: torch.Tensor, smoothing: bool, smoothing_std: torch.Tensor,
                        smoothing_clip: torch.Tensor, max_grad_norm: torch.Tensor) -> UpdateFn:
    """`td3.make_manual_update` for M members: every batch field is [M, B, ...]; `gamma` is [M, 1],
    the noise scales [M, 1, act], `max_grad_norm` [M]. Each member's losses are its own batch means
    and its clips its own norms, so its gradients and steps are its single agent's. Metrics are [M]."""
    members = actor.members
    critics = critic.members // members
    first_critics = slice(0, None, critics)  # critic 0 of every member: a view of the layers
    half_width = box_fraction(1.0, low, high)
    # Views of the flat gradients, written by `backward`, clipped per member.
    critic_w_grads, critic_b_grads = [w.grad for w in critic.weights], [b.grad for b in critic.biases]
    actor_w_grads, actor_b_grads = [w.grad for w in actor.weights], [b.grad for b in actor.biases]
    clip_actor = bool((max_grad_norm > 0).any())  # without any clip the actor's norms are not needed

    def actor_target_action(obs: torch.Tensor) -> torch.Tensor:
        return actor_traced(actor_target, obs, low, high)[0]

    def critic_target_q(x: torch.Tensor) -> torch.Tensor:
        """[M, B, in] -> [C, M, B, 1]: the critics first, as `td3.td_target` takes their min."""
        q = critic_target.infer(per_critic(x, critics))
        return q.view(members, critics, *q.shape[1:]).transpose(0, 1)

    @torch.no_grad()
    def update(obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, next_obs: torch.Tensor,
               terminated: torch.Tensor, normal: torch.Tensor | None, update_actor: bool,
               discount: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        batch = rewards.shape[1]
        target = bootstrap_target(critic_target_q, actor_target_action, rewards, next_obs, terminated,
                                  normal if smoothing else None, smoothing_std, smoothing_clip, low, high,
                                  gamma if discount is None else discount).unsqueeze(1)  # [M, 1, B]
        # Critics: each member's regress on its own target.
        q_out, trace = critic.forward_traced(per_critic(critic_input(obs, actions), critics))
        q = q_out[..., 0].float().view(members, critics, batch)
        member_weights = None if weights is None else weights.unsqueeze(1)
        metrics = {"loss": critic_loss(q, target, member_weights), "mean_q": q.mean(dim=(1, 2))}
        d_q = (2.0 / batch) * (q - target)
        if weights is not None:
            metrics["td_abs"] = td_abs(q, target)
            d_q = d_q * member_weights
        backward(trace, d_q.view(members * critics, batch, 1), critic_w_grads, critic_b_grads)
        metrics["grad_norm"] = clip_grad_norm_members_(critic_w_grads + critic_b_grads, max_grad_norm)
        critic_opt.step()
        critic.weights_changed()

        if update_actor:  # decided by the host's update counter, never by a tensor
            # Actors: each ascends its own first critic; only dQ/da is formed from the critics.
            action, tanh_out, a_trace = actor_traced(actor, obs, low, high)
            q1, q1_trace = critic.forward_traced(critic_input(obs, action), members=first_critics)
            d_action = backward(q1_trace, torch.full_like(q1, -1.0 / batch), None, None,
                                input_cols=slice(obs.flatten(2).shape[2], None))
            backward(a_trace, d_action * (half_width * (1.0 - tanh_out.square())), actor_w_grads, actor_b_grads)
            if clip_actor:
                clip_grad_norm_members_(actor_w_grads + actor_b_grads, max_grad_norm)
            actor_opt.step()
            actor.weights_changed()
            metrics["actor_loss"] = -q1.mean(dim=(1, 2))
        return metrics

    return update


@dataclass
class StackedTD3:
    spec: EnvSpec
    cfg: TrainConfig  # the run's settings (member 0's where a member differs)
    members: list[TrainConfig]  # each member's settings
    actor: StackedMLP  # M members
    critic: StackedMLP  # C M: member m's critics at rows [C m, C (m + 1))
    actor_target: StackedMLP
    critic_target: StackedMLP
    critic_opt: FusedAdam
    actor_opt: FusedAdam
    targets: list[MemberTargetUpdater]  # the actors' and the critics', stepped together
    update_fn: UpdateFn
    smoothing: bool
    generators: list[torch.Generator]  # each member's noise and random actions
    device: torch.device
    total_updates: int
    critic_lrs: list[float]  # each member's base lrs
    actor_lrs: list[float]
    low: torch.Tensor  # [act]
    high: torch.Tensor
    explore_std: torch.Tensor  # [M, 1, act]
    updates_done: int = 0  # critic updates
    actor_updates: int = 0

    @property
    def num_members(self) -> int:
        return len(self.members)

    @property
    def critics(self) -> int:
        return self.critic.members // self.num_members

    @property
    def generator(self) -> torch.Generator:  # the Agent contract's; member 0's
        return self.generators[0]

    # --- acting: observations [M * n, ...], member m's envs at rows [m n, (m + 1) n) ---
    def exploration(self, env_step: int) -> dict[str, list[float]]:
        return {"exploration_noise": [c.exploration_noise for c in self.members]}

    def _policy(self, obs: torch.Tensor) -> torch.Tensor:
        """μ(s) [M, n, act] of observations [M n, ...]; in fp32 weights, as the single agent acts
        (`Actor.act`)."""
        per_member = obs.reshape(self.num_members, obs.shape[0] // self.num_members, -1)
        return to_box(torch.tanh(self.actor(per_member)), self.low, self.high)

    @torch.no_grad()
    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        return self._policy(obs).reshape(obs.shape[0], -1)

    def _normal(self, each: int) -> torch.Tensor:
        """[M, each, act] standard normals, member m's from its own generator."""
        return member_draws(torch.randn, self.generators, (each, self.low.numel()), self.device)

    def random_actions(self, n: int) -> torch.Tensor:
        return uniform_box_actions(self.generators, self.low, self.high, n, self.device)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, env_step: int) -> torch.Tensor:
        normal = self._normal(obs.shape[0] // self.num_members)
        return explore(self._policy(obs), normal, self.explore_std, self.low, self.high).reshape(obs.shape[0], -1)

    # --- learning ---
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One update of every member from `batch` ([M, B, ...]: member m's rows at [m])."""
        factor = scheduled_lr(self.cfg, 1.0, self.updates_done, self.total_updates)
        self.critic_opt.lr = self.critic_lrs[0] * factor  # lr groups scale it per member
        self.actor_opt.lr = self.actor_lrs[0] * factor
        update_actor = (self.updates_done + 1) % self.cfg.policy_delay == 0
        normal = self._normal(batch.actions.shape[1]) if self.smoothing else None
        metrics = self.update_fn(batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.terminated, normal,
                                 update_actor, batch.discount, batch.weights)
        self.updates_done += 1
        if update_actor:
            # Targets move with the actor (every policy_delay critic updates), as in TD3.
            self.actor_updates += 1
            for targets in self.targets:
                targets.step(self.actor_updates)
        return metrics

    def current_lr(self) -> list[float]:
        factor = self.critic_opt.lr / self.critic_lrs[0]
        return [lr * factor for lr in self.critic_lrs]

    def weights_of(self, members: list[int]) -> dict[str, list[torch.Tensor]]:
        """The online and target weights of `members` alone (the checkpoint's NaN check skips
        stopped members)."""
        rows = {"actor": members, "critic": [self.critics * m + c for m in members for c in range(self.critics)]}
        return {name: [p.detach()[rows[name.removesuffix("_target")]] for p in getattr(self, name).parameters()]
                for name in ("actor", "critic", "actor_target", "critic_target")}

    # --- checkpointing ---
    def state_dict(self) -> dict:
        nets = ("actor", "critic", "actor_target", "critic_target", "critic_opt", "actor_opt")
        return {**{name: getattr(self, name).state_dict() for name in nets},
                "updates_done": self.updates_done, "actor_updates": self.actor_updates,
                "generators": [g.get_state() for g in self.generators], "members": self.num_members,
                # How a single agent holds each stacked net (`fastrl.policy.member_of`): under which
                # key prefix, and how many rows of it are one member's.
                "member_nets": {"actor": ["net.", 1], "actor_target": ["net.", 1],
                                "critic": ["", self.critics], "critic_target": ["", self.critics]}}

    def load_state_dict(self, state: dict) -> None:
        for name in ("actor", "critic", "actor_target", "critic_target", "critic_opt", "actor_opt"):
            getattr(self, name).load_state_dict(state[name])
        self.updates_done = int(state["updates_done"])
        self.actor_updates = int(state["actor_updates"])
        for g, saved in zip(self.generators, state["generators"], strict=True):
            g.set_state(saved)


def build_td3_members(spec: EnvSpec, cfg: TrainConfig, members: list[TrainConfig], device: torch.device,
                      twin: bool) -> StackedTD3:
    """The stacked TD3 (`twin`) or DDPG agent of `members` (each member's full settings; only
    per-member settings differ). The hand-written update, eager: --compile and CUDA graphs are not
    wired for it."""
    obs_dim = math.prod(spec.obs_shape)
    low = torch.tensor(spec.action_low, dtype=torch.float32, device=device).reshape(-1)
    high = torch.tensor(spec.action_high, dtype=torch.float32, device=device).reshape(-1)
    critics = 2 if twin else 1
    # In the order td3._build makes them: the actor, then the critics.
    actor, critic = (net.to(device) for net in seeded_stacks(
        [c.seed for c in members], [(1, obs_dim, cfg.hidden_sizes, low.numel()),
                                    (critics, obs_dim + low.numel(), cfg.hidden_sizes, 1)], PRECISIONS[cfg.precision]))
    actor_target = copy.deepcopy(actor).requires_grad_(False)
    critic_target = copy.deepcopy(critic).requires_grad_(False)
    critic_lrs = [c.lr for c in members]
    actor_lrs = [c.actor_lr or c.lr for c in members]

    critic_opt, actor_opt = member_optimizer(critic, critic_lrs), member_optimizer(actor, actor_lrs)

    def noise(name: str) -> torch.Tensor:  # a fraction of the box's half-width per member, [M, 1, act]
        return box_fraction(member_column([getattr(c, name) for c in members], device, 3), low, high)

    update_fn = make_stacked_update(actor, critic, actor_target, critic_target, critic_opt, actor_opt, low, high,
                                    member_column([c.gamma for c in members], device, 2), twin, noise("policy_noise"),
                                    noise("noise_clip"), member_column([c.max_grad_norm for c in members], device, 1))
    rules = ([c.target_update for c in members], [c.tau for c in members], [c.target_period for c in members])
    targets = [make_member_target_updater(actor, actor_target, *rules),
               make_member_target_updater(critic, critic_target, *rules)]
    return StackedTD3(spec, cfg, members, actor, critic, actor_target, critic_target, critic_opt, actor_opt, targets,
                      update_fn, twin, member_generators(members, 1, device), device, planned_updates(cfg), critic_lrs, actor_lrs, low, high,
                      noise("exploration_noise"))
