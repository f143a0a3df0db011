"""M independent SAC agents trained as one stacked computation (`--num-seeds`, `--sweep`).

The M actors are one `StackedMLP` with M members (each the GaussianActor's net: μ and raw log σ per
action dim); the 2M twin critics are one `StackedMLP` with member m's two at rows 2m, 2m + 1, and
their targets one more. Each update is `sac.make_manual_update` in stacked form over a batch
[M, B, ...]: the critics' inputs are presented per critic ([2M, B, ...]), each member's target takes
the min over its own two critics, and the actor climbs that min. Nothing is shared between members
but the kernels: each has its own initial weights (member m's are those a single-agent run with its
seed starts from), Adam moments (Adam is per element), clip, lr, γ, target rule, temperature (a
fixed α, or log α with its own target entropy, stepped per element) and generator (its policy's
sampling noise, the update's noise and its random actions).

The nets' flat parameters are laid out member by member within each layer (`dqn_members.lr_groups`
cuts an lr group per distinct lr from that), the per-member clip (`clip_grad_norm_members_`) sees a
member's two critics as one [2, ...] block, and the target rule is per critic row, each member's
repeated for its two.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fastrl.buffer import Batch
from fastrl.dqn_members import (
    lr_groups, member_draws, member_generators, member_optimizer, seeded_stacks, uniform_box_actions,
)
from fastrl.fused_adam import FusedAdam, clip_grad_norm_members_
from fastrl.learner import PRECISIONS, scheduled_lr
from fastrl.sac import (
    TracedSample, UpdateFn, bounded_log_std, squashed_gaussian_grads, squashed_sample, soft_td_target, traced_sample,
)
from fastrl.schedules import planned_updates
from fastrl.stacked_mlp import StackedMLP, backward
from fastrl.targets import MemberTargetUpdater, make_member_target_updater
from fastrl.td3 import box_fraction, to_box

if TYPE_CHECKING:
    from fastrl.config import TrainConfig
    from fastrl.envs import EnvSpec

CRITICS = 2  # twin critics per member: rows [2m, 2m + 2) of the critic stacks


# --- the math ---


def per_critic(obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """The critics' input [2M, B, obs + act] from each member's ([M, B, ...]): member m's rows go to
    both its critics."""
    x = torch.cat((obs.flatten(2), actions), dim=2)
    return x.repeat_interleave(CRITICS, dim=0)


def pairs(q: torch.Tensor) -> torch.Tensor:
    """[2M, B] critic outputs as [M, 2, B]: each member's two critics side by side."""
    return q.view(-1, CRITICS, q.shape[-1])


def member_critic_loss(q: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """`td3.critic_loss` of every member ([M]): q is [M, 2, B], target and the importance weights [M, B]."""
    squared = (q - target.unsqueeze(1)).square()
    return (squared if weights is None else squared * weights.unsqueeze(1)).mean(dim=2).sum(dim=1)


def min_critic_grad(q_pi: torch.Tensor) -> torch.Tensor:
    """d mean(α log π − min(Q₁, Q₂)) / d Q of every member's two critics ([M, 2, B]): −1/B through
    the min, split evenly among tied critics (as autograd's amin)."""
    is_min = (q_pi == q_pi.amin(dim=1, keepdim=True)).float()
    return is_min.div_(is_min.sum(dim=1, keepdim=True).mul_(-q_pi.shape[-1]))


# --- the temperature ---


@dataclass
class MemberTemperature:
    """Every member's α: fixed (`log_alpha` None), or tuned, log α [M] then stepped by its own Adam
    (per element: each member's as its single agent's) toward each member's target entropy."""
    fixed: torch.Tensor | None  # [M] when fixed
    log_alpha: torch.Tensor | None  # [M] when tuned
    opt: FusedAdam | None
    target_entropy: torch.Tensor  # [M]
    lrs: list[float]  # each member's base lr of log α (tuned)

    def value(self) -> torch.Tensor:
        return self.fixed if self.log_alpha is None else self.log_alpha.exp()

    def step(self, mean_log_prob: torch.Tensor) -> torch.Tensor:
        """`sac._temperature_step_by_hand` for every member: the gradient −(mean log π + H̄) into
        the optimizer's, one Adam step; the members' α losses (before the step)."""
        grad = self.opt.grads[0]
        torch.neg(mean_log_prob.add(self.target_entropy), out=grad)
        loss = self.log_alpha * grad
        self.opt.step()
        return loss


def make_member_temperature(members: list[TrainConfig], action_dim: int, device: torch.device) -> MemberTemperature:
    """As `sac.make_temperature` per member. A swept α fixes it for every member, so the members
    are all fixed or all tuned."""
    target_entropy = torch.tensor([c.target_entropy if c.target_entropy is not None else -float(action_dim)
                                   for c in members], device=device)
    fixed = [c.alpha is not None for c in members]
    if all(fixed):
        return MemberTemperature(torch.tensor([float(c.alpha) for c in members], device=device), None, None,
                                 target_entropy, [])
    if any(fixed):
        raise ValueError("stacked SAC: α fixed for some members and tuned for others")
    log_alpha = torch.zeros(len(members), device=device)  # α = 1 at the start, as the single agent
    lrs = [c.alpha_lr or c.lr for c in members]
    groups = lr_groups(lrs, [log_alpha]) if len(set(lrs)) > 1 else None
    opt = FusedAdam([log_alpha], lr=lrs[0], grads=[torch.zeros_like(log_alpha)], lr_groups=groups)
    return MemberTemperature(None, log_alpha, opt, target_entropy, lrs)


# --- the update ---


def make_member_update(actor: StackedMLP, low: torch.Tensor, high: torch.Tensor, critic: StackedMLP,
                       critic_target: StackedMLP, critic_opt: FusedAdam, actor_opt: FusedAdam,
                       temperature: MemberTemperature, gamma: torch.Tensor, max_grad_norm: torch.Tensor) -> UpdateFn:
    """`sac.make_manual_update` for M members: every batch field [M, B, ...], `gamma` [M, 1] and
    `max_grad_norm` [M]; metrics [M]. Each member's losses are its own batch means, so its
    gradients are its single agent's, and every clip is per member."""
    members = actor.members
    weight_grads = [w.grad for w in actor.weights]  # views of the flat gradients
    bias_grads = [b.grad for b in actor.biases]
    critic_w_grads, critic_b_grads = [w.grad for w in critic.weights], [b.grad for b in critic.biases]
    critic_clip = [g.unflatten(0, (members, CRITICS)) for g in critic_w_grads + critic_b_grads]  # a block a member
    clip_actor = bool((max_grad_norm > 0).any())  # the actor's norm is not logged: only to clip
    action_dim = low.numel()
    action_cols = slice(critic.weights[0].shape[2] - action_dim, None)
    half_width, log_half_width = box_fraction(1.0, low, high), box_fraction(1.0, low, high).log()

    def sample(obs: torch.Tensor, noise: torch.Tensor) -> TracedSample:
        out, trace = actor.forward_traced(obs)
        return traced_sample(out, trace, noise, low, high, log_half_width)

    @torch.no_grad()
    def update(obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, next_obs: torch.Tensor,
               terminated: torch.Tensor, next_noise: torch.Tensor, noise: torch.Tensor | None, update_actor: bool,
               discount: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        batch = rewards.shape[1]
        alpha = temperature.value().unsqueeze(1)  # [M, 1]: the α from before this update
        if update_actor:  # one forward over s' and s (as the single agent)
            both = sample(torch.cat((next_obs.flatten(2), obs.flatten(2)), dim=1), torch.cat((next_noise, noise), 1))
            after, now = both.rows(slice(0, batch)), both.rows(slice(batch, None))
        else:
            after = sample(next_obs.flatten(2), next_noise)
        next_q = pairs(critic_target.infer(per_critic(next_obs, after.action))[..., 0])
        # soft_td_target takes the min over its first axis: each member's two critics.
        target = soft_td_target(rewards, terminated, next_q.transpose(0, 1), after.log_prob, alpha,
                                gamma if discount is None else discount)

        q_out, trace = critic.forward_traced(per_critic(obs, actions))
        q = pairs(q_out[..., 0].float())
        error = q - target.unsqueeze(1)
        d_q = (2.0 / batch) * error
        if weights is not None:
            d_q = d_q * weights.unsqueeze(1)
        backward(trace, d_q.view(members * CRITICS, batch, 1), critic_w_grads, critic_b_grads)
        metrics = {"loss": member_critic_loss(q, target, weights), "mean_q": q.mean(dim=(1, 2)),
                   "grad_norm": clip_grad_norm_members_(critic_clip, max_grad_norm)}
        critic_opt.step()
        critic.weights_changed()
        if weights is not None:  # prioritized replay: each sample's new priority
            metrics["td_abs"] = error.abs().mean(dim=1)

        if update_actor:
            q_pi_out, q_trace = critic.forward_traced(per_critic(obs, now.action))  # the stepped critics
            q_pi = pairs(q_pi_out[..., 0])
            policy_loss = (alpha * now.log_prob - q_pi.amin(dim=1)).mean(dim=1)
            d_q_pi = min_critic_grad(q_pi).view(members * CRITICS, batch, 1)
            d_action = backward(q_trace, d_q_pi, None, None, input_cols=action_cols)
            d_action = d_action.view(members, CRITICS, batch, -1).sum(dim=1)
            d_out = squashed_gaussian_grads(d_action, (alpha / batch).unsqueeze(-1), now.unit, now.scaled_noise,
                                            now.raw_log_std, half_width)
            backward(now.trace, d_out, weight_grads, bias_grads)
            if clip_actor:
                clip_grad_norm_members_(weight_grads + bias_grads, max_grad_norm)
            actor_opt.step()
            actor.weights_changed()
            mean_log_prob = now.log_prob.mean(dim=1)
            metrics.update(actor_loss=policy_loss, alpha=alpha[:, 0], entropy=-mean_log_prob)
            if temperature.log_alpha is not None:
                metrics["alpha_loss"] = temperature.step(mean_log_prob)
        return metrics

    return update


# --- the agent ---


@dataclass
class StackedSAC:
    spec: EnvSpec
    cfg: TrainConfig  # the run's settings (member 0's where a member differs)
    members: list[TrainConfig]  # each member's settings
    actor: StackedMLP  # M members, out (μ, raw log σ)
    low: torch.Tensor
    high: torch.Tensor
    critic: StackedMLP  # 2M members: member m's twin critics at rows 2m, 2m + 1
    critic_target: StackedMLP
    critic_opt: FusedAdam
    actor_opt: FusedAdam
    temperature: MemberTemperature
    targets: MemberTargetUpdater
    update_fn: UpdateFn
    generators: list[torch.Generator]  # each member's acting, update noise and random actions
    device: torch.device
    total_updates: int
    lrs: list[float]  # each member's base critic lr
    actor_lrs: list[float]
    updates_done: int = 0  # critic updates
    actor_updates: int = 0

    @property
    def num_members(self) -> int:
        return len(self.members)

    @property
    def generator(self) -> torch.Generator:  # the Agent contract's; member 0's
        return self.generators[0]

    # --- acting: observations [M * n, ...], member m's envs at rows [m n, (m + 1) n) ---
    def exploration(self, env_step: int) -> dict[str, list[float]]:
        return {}  # exploration is each policy's own sampling; α reaches the log through the metrics

    def _normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normals of `shape` from every member's generator, stacked: [M, *shape]."""
        return member_draws(torch.randn, self.generators, shape, self.device)

    def random_actions(self, n: int) -> torch.Tensor:
        return uniform_box_actions(self.generators, self.low, self.high, n, self.device)

    def _policy(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's (μ, log σ) at its own envs' observations, [M, n, A] each."""
        out = self.actor(obs.reshape(self.num_members, obs.shape[0] // self.num_members, -1))
        action_dim = self.low.numel()
        return out[..., :action_dim], bounded_log_std(out[..., action_dim:])

    @torch.no_grad()
    def act(self, obs: torch.Tensor, env_step: int) -> torch.Tensor:
        mean, log_std = self._policy(obs)
        unit = squashed_sample(mean, log_std, self._normal(tuple(mean.shape[1:])))[1]
        return to_box(unit, self.low, self.high).reshape(obs.shape[0], -1)

    @torch.no_grad()
    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        """Each member's deterministic action to_box(tanh(μ))."""
        mean = self._policy(obs)[0]
        return to_box(torch.tanh(mean), self.low, self.high).reshape(obs.shape[0], -1)

    # --- learning ---
    def _set_lr(self) -> None:
        """The schedule's factor on every optimizer; lr groups scale it per member."""
        factor = scheduled_lr(self.cfg, 1.0, self.updates_done, self.total_updates)
        self.critic_opt.lr = self.lrs[0] * factor
        self.actor_opt.lr = self.actor_lrs[0] * factor
        if self.temperature.opt is not None:
            self.temperature.opt.lr = self.temperature.lrs[0] * factor

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One update of every member from `batch` ([M, B, ...]: member m's rows at [m])."""
        if self.cfg.lr_schedule != "constant":
            self._set_lr()
        update_actor = (self.updates_done + 1) % self.cfg.policy_delay == 0
        shape = tuple(batch.actions.shape[1:])
        if update_actor:  # one draw a member for both samples, as the single agent
            next_noise, noise = self._normal((2, *shape)).unbind(1)
        else:
            next_noise, noise = self._normal(shape), None
        metrics = self.update_fn(batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.terminated,
                                 next_noise, noise, update_actor, batch.discount, batch.weights)
        self.updates_done += 1
        self.actor_updates += update_actor
        self.targets.step(self.updates_done)
        return metrics

    def current_lr(self) -> list[float]:
        factor = self.critic_opt.lr / self.lrs[0]
        return [lr * factor for lr in self.lrs]

    def weights_of(self, members: list[int]) -> dict[str, list[torch.Tensor]]:
        """The weights (and tuned log α) of `members` alone (the checkpoint's NaN check skips
        stopped members)."""
        out = {"actor": [p.detach()[members] for p in self.actor.parameters()]}
        for name in ("critic", "critic_target"):
            out[name] = [p.detach().unflatten(0, (-1, CRITICS))[members] for p in getattr(self, name).parameters()]
        if self.temperature.log_alpha is not None:
            out["log_alpha"] = [self.temperature.log_alpha[members]]
        return out

    # --- checkpointing ---
    def state_dict(self) -> dict:
        """The single agent's layout with a member axis, so that `fastrl.policy` can take one
        member's nets out (`member_nets`: each stacked net's key prefix in the single agent's
        state, here already applied, and its rows per member)."""
        t = self.temperature
        return {"actor": {f"net.{k}": v for k, v in self.actor.state_dict().items()},
                "critic": self.critic.state_dict(), "critic_target": self.critic_target.state_dict(),
                "critic_opt": self.critic_opt.state_dict(), "actor_opt": self.actor_opt.state_dict(),
                "log_alpha": t.log_alpha.clone() if t.log_alpha is not None else None,
                "alpha_opt": t.opt.state_dict() if t.opt is not None else None,
                "updates_done": self.updates_done, "actor_updates": self.actor_updates,
                "generators": [g.get_state() for g in self.generators], "members": self.num_members,
                "member_nets": {"actor": ["", 1], "critic": ["", CRITICS], "critic_target": ["", CRITICS]}}

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict({k.removeprefix("net."): v for k, v in state["actor"].items()})
        for name in ("critic", "critic_target", "critic_opt", "actor_opt"):
            getattr(self, name).load_state_dict(state[name])
        t = self.temperature
        if (t.log_alpha is None) != (state["log_alpha"] is None):
            raise ValueError("checkpoint: α fixed in one of the run and the checkpoint, tuned in the other")
        if t.log_alpha is not None:
            t.log_alpha.copy_(state["log_alpha"])  # in place: the optimizer steps this tensor
            t.opt.load_state_dict(state["alpha_opt"])
        self.updates_done = int(state["updates_done"])
        self.actor_updates = int(state["actor_updates"])
        for g, saved in zip(self.generators, state["generators"], strict=True):
            g.set_state(saved)


def build_sac_members(spec: EnvSpec, cfg: TrainConfig, members: list[TrainConfig], device: torch.device) -> StackedSAC:
    """The stacked agent of `members` (each member's full settings; only per-member settings
    differ). The hand-written update, eager: --compile and CUDA graphs are not wired for it."""
    dtype = PRECISIONS[cfg.precision]
    obs_dim = math.prod(spec.obs_shape)
    low = torch.tensor(spec.action_low, dtype=torch.float32, device=device).reshape(-1)
    high = torch.tensor(spec.action_high, dtype=torch.float32, device=device).reshape(-1)
    action_dim = low.numel()
    # In the order build_sac builds them: the actor's net, then the twin critics.
    hidden = tuple(cfg.hidden_sizes)
    actor, critic = (net.to(device) for net in seeded_stacks(
        [c.seed for c in members], [(1, obs_dim, hidden, 2 * action_dim), (CRITICS, obs_dim + action_dim, hidden, 1)],
        dtype))
    critic_target = copy.deepcopy(critic).requires_grad_(False)
    lrs, actor_lrs = [c.lr for c in members], [c.actor_lr or c.lr for c in members]
    critic_opt, actor_opt = member_optimizer(critic, lrs), member_optimizer(actor, actor_lrs)
    temperature = make_member_temperature(members, action_dim, device)
    gamma = torch.tensor([c.gamma for c in members], device=device).unsqueeze(1)
    max_norm = torch.tensor([c.max_grad_norm for c in members], device=device)
    update_fn = make_member_update(actor, low, high, critic, critic_target, critic_opt, actor_opt, temperature,
                                   gamma, max_norm)
    per_row = [c for c in members for _ in range(CRITICS)]  # each member's rule for both its critics
    targets = make_member_target_updater(critic, critic_target, [c.target_update for c in per_row],
                                         [c.tau for c in per_row], [c.target_period for c in per_row])
    return StackedSAC(spec, cfg, members, actor, low, high, critic, critic_target, critic_opt, actor_opt,
                      temperature, targets, update_fn, member_generators(members, 1, device), device,
                      planned_updates(cfg), lrs, actor_lrs)
