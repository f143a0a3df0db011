"""TD3 and DDPG: one implementation; DDPG is TD3 with one critic, no target smoothing and an actor
update after every critic update. Settings, presets, the math, the updates, the agent.

The losses are pure functions (`critic_loss_of`, `actor_loss_of`, on top of the TD target and the
smoothing below). Two updates minimise them, each one function holding no Python branch on
tensor values (so `torch.compile` takes it whole):
- `make_autograd_update`: gradients by autograd (`fastrl.learner.grads_into_`);
- `make_manual_update`: the same losses with the ReLU MLPs' backward written out (see
  `stacked_mlp`); the actor's needs only dQ/da from the critic, so no critic weight gradient is
  formed for it. Tests hold its gradients to autograd's of the same losses. `--gradients auto`
  picks it on CPU, where it is the measured faster path (BENCHMARKS.md).
The critic step runs every update and the actor step when the host's update counter says so.

Targets (actor and critics) move together, in one fused soft or hard update after each actor
update, as in TD3; `--target-period` (hard updates) therefore counts actor updates.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from fastrl.algorithm import Algorithm
from fastrl.buffer import Batch
from fastrl.fused_adam import FusedAdam, flatten_parameters_, rebuildable_views
from fastrl.learner import PRECISIONS, autocast, clip_and_step, grads_into_, scheduled_lr, wrap_update
from fastrl.schedules import planned_updates
from fastrl.settings import ConfigError, non_negative, optional, positive, positive_int, setting
from fastrl.stacked_mlp import StackedMLP, Trace, backward
from fastrl.targets import TargetUpdater, make_target_updater

if TYPE_CHECKING:
    from fastrl.config import TrainConfig
    from fastrl.envs import EnvSpec

# --- settings ---


@dataclass
class TD3Settings:
    exploration_noise: float = setting(0.1, "Gaussian action noise, as a fraction of the action range's half-width",
                                       check=non_negative())
    policy_noise: float = setting(0.2, "TD3 target smoothing noise (fraction of half-width)", check=non_negative())
    noise_clip: float = setting(0.5, "TD3 target smoothing clip (fraction of half-width)", check=non_negative())
    policy_delay: int = setting(1, "critic updates per actor update", check=positive_int)
    actor_lr: float | None = setting(None, "actor learning rate (default: --lr)", check=optional(positive))


# The published TD3/DDPG settings (Fujimoto et al. 2018; CleanRL). The 25k random steps are for
# 1M-step runs: without a preset, `fastrl.config.fit_to_run_length` shortens them for short runs.
_PUBLISHED = {"batch_size": 256, "lr": 3e-4, "tau": 0.005, "target_update": "soft", "learning_starts": 25_000,
              "buffer_size": 1_000_000, "max_grad_norm": 0.0, "eval_episodes": 10}
DDPG_DEFAULTS = {**_PUBLISHED, "policy_delay": 1}
TD3_DEFAULTS = {**_PUBLISHED, "policy_delay": 2}

PRESETS = {
    # One update per env step with a 1k-step random start: seeds 1 and 2 end at -130 to -144
    # after 20k steps.
    "Pendulum-v1": {"total_steps": 20_000, "learning_starts": 1_000, "log_every": 2_000, "eval_every": 5_000},
    "MountainCarContinuous-v0": {"total_steps": 100_000, "exploration_noise": 0.5, "learning_starts": 5_000},
    **{env: {"total_steps": 1_000_000, "learning_starts": 25_000, "log_every": 10_000, "eval_every": 50_000}
       for env in ("HalfCheetah-v4", "Hopper-v4", "Walker2d-v4", "Ant-v4")},
}


def check_spec(cfg: TrainConfig, spec: EnvSpec) -> None:
    if spec.is_image:
        raise ConfigError(f"--env: {cfg.env} observes images and --algo {cfg.algo}'s networks are MLPs over vector "
                          f"observations; use --algo dqn for image observations")


def uses_manual_gradients(cfg: TrainConfig, device: torch.device) -> bool:
    """The hand-written MLP backward: asked for, or `auto` on CPU."""
    return cfg.gradients == "manual" or (cfg.gradients == "auto" and device.type == "cpu")

# --- the math ---


def to_box(unit: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Map [-1, 1] affinely onto [low, high]. lerp hits both ends exactly; the clamp is a last guard
    against float rounding past the bounds."""
    return torch.clamp(torch.lerp(low, high, unit.mul(0.5).add_(0.5)), low, high)


def box_fraction(fraction: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """`fraction` of the box's half-width per action dim: the unit of every noise std and clip."""
    return fraction * (high - low) / 2


def explore(action: torch.Tensor, normal: torch.Tensor, std: torch.Tensor, low: torch.Tensor,
            high: torch.Tensor) -> torch.Tensor:
    """Gaussian exploration: action + std·ε, kept in the box."""
    return torch.clamp(torch.addcmul(action, normal, std), low, high)


def smooth_target_action(target_action: torch.Tensor, normal: torch.Tensor, std: torch.Tensor,
                         clip: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """TD3 target policy smoothing: ã = clip(μ'(s') + clip(std·ε, −c, c), low, high)."""
    return torch.clamp(target_action + torch.clamp(normal * std, -clip, clip), low, high)


def td_target(rewards: torch.Tensor, terminated: torch.Tensor, next_q: torch.Tensor,
              gamma: float | torch.Tensor) -> torch.Tensor:
    """r + γ (1 − terminated) min_e Q⁻_e(s', ã), next_q being [E, B]. With two critics the min is
    TD3's clipped double Q; with one it is DDPG's target. Truncation still bootstraps. `gamma` may
    be γ^m per sample (n-step returns). In fp32."""
    return rewards + gamma * (1.0 - terminated) * next_q.float().amin(dim=0)


def critic_loss(q: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over critics of each critic's mean squared TD error; q is [E, B], target [B]; with
    `weights` (importance weights, [B]), each critic's weighted mean. In fp32. Stacked members
    (q [M, E, B], target and weights [M, 1, B]): each member's own sum, [M]."""
    squared = (q.float() - target.float()).square()
    return (squared if weights is None else squared * weights).mean(dim=-1).sum(dim=-1)


def td_abs(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|TD error| per sample, averaged over the critics (q [E, B] or, stacked, [M, E, B]): the
    sample's new priority. In fp32."""
    return (q.float() - target.float()).abs().mean(dim=-2)


Net = Callable[..., torch.Tensor]


@torch.no_grad()
def bootstrap_target(critic_target: Net, actor_target: Net, rewards: torch.Tensor, next_obs: torch.Tensor,
                     terminated: torch.Tensor, normal: torch.Tensor | None, smoothing_std: torch.Tensor,
                     smoothing_clip: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                     gamma: float | torch.Tensor) -> torch.Tensor:
    """The critics' regression target, through the target nets (smoothed when `normal` is given)."""
    next_actions = actor_target(next_obs)
    if normal is not None:
        next_actions = smooth_target_action(next_actions, normal, smoothing_std, smoothing_clip, low, high)
    return td_target(rewards, terminated, critic_target(critic_input(next_obs, next_actions))[..., 0], gamma)


def critic_loss_of(critic: Net, critic_target: Net, actor_target: Net, obs: torch.Tensor, actions: torch.Tensor,
                   rewards: torch.Tensor, next_obs: torch.Tensor, terminated: torch.Tensor,
                   normal: torch.Tensor | None, smoothing_std: torch.Tensor, smoothing_clip: torch.Tensor,
                   low: torch.Tensor, high: torch.Tensor, gamma: float | torch.Tensor,
                   weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The critics' loss against the clipped-double-Q target (TD3), or one critic's (DDPG: no
    `normal`, no smoothing). Critics map [B, obs + act] to [E, B, 1]. With `weights`, the metrics
    carry each sample's |TD error| ("td_abs") for its new priority."""
    target = bootstrap_target(critic_target, actor_target, rewards, next_obs, terminated, normal, smoothing_std,
                              smoothing_clip, low, high, gamma)
    q = critic(critic_input(obs, actions))[..., 0]
    metrics = {"mean_q": q.detach().mean()}
    if weights is not None:
        metrics["td_abs"] = td_abs(q.detach(), target)
    return critic_loss(q, target, weights), metrics


def actor_loss_of(actor: Net, critic: Net, obs: torch.Tensor) -> torch.Tensor:
    """−mean Q₁(s, μ(s)): the actor climbs its first critic (TD3), or the only one (DDPG). In fp32."""
    return -critic(critic_input(obs, actor(obs)), members=slice(0, 1)).float().mean()


# --- networks ---


class Actor(nn.Module):
    """Deterministic policy: an MLP whose tanh output is scaled onto the action box."""

    def __init__(self, obs_dim: int, hidden_sizes: tuple[int, ...], low: torch.Tensor, high: torch.Tensor,
                 compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.net = StackedMLP(1, obs_dim, hidden_sizes, low.numel(), compute_dtype)
        self.register_buffer("low", low.reshape(-1).float().clone())
        self.register_buffer("high", high.reshape(-1).float().clone())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Differentiable by autograd (the default update path)."""
        return to_box(torch.tanh(self.net(obs.flatten(1))[0]), self.low, self.high)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """`forward` through the 2-D acting path (`StackedMLP.forward_one`): fewer ops per call."""
        return to_box(torch.tanh(self.net.forward_one(obs.flatten(1))), self.low, self.high)

    def forward_traced(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Trace]:
        """Action, tanh output, and the trace for the backward pass."""
        pre, trace = self.net.forward_traced(obs.flatten(1))
        t = torch.tanh(pre[0])
        return to_box(t, self.low, self.high), t, trace

    def infer(self, obs: torch.Tensor) -> torch.Tensor:
        """The action of `forward_traced` alone: the hand-written update's target actor."""
        return self.forward_traced(obs)[0]


def critic_input(obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """[B, obs + act], or [M, B, obs + act] for stacked members' [M, B, ...] batches."""
    return torch.cat((obs.flatten(actions.dim() - 1), actions), dim=-1)


# --- the update ---

UpdateFn = Callable[..., dict[str, torch.Tensor]]


def _grads(net: StackedMLP) -> tuple[Callable[[], list[torch.Tensor]], Callable[[], list[torch.Tensor]]]:
    """The net's weight and bias gradients, as `rebuildable_views` (they view the flat gradient)."""
    return rebuildable_views([w.grad for w in net.weights]), rebuildable_views([b.grad for b in net.biases])


def manual_critic_step(critic: StackedMLP, critic_opt: FusedAdam, weight_grads: list[torch.Tensor],
                       bias_grads: list[torch.Tensor], obs: torch.Tensor, actions: torch.Tensor, target: torch.Tensor,
                       weights: torch.Tensor | None, max_grad_norm: float) -> dict[str, torch.Tensor]:
    """Regress every critic on `target` (`critic_loss`) with the backward written out, clip, step;
    the metrics "loss", "mean_q", "grad_norm" and, with importance `weights`, "td_abs"."""
    q_out, trace = critic.forward_traced(critic_input(obs, actions))
    q = q_out[..., 0].float()  # the output layer multiplies in fp32 (`low_precision_layers`)
    metrics = {"loss": critic_loss(q, target, weights), "mean_q": q.mean()}
    d_q = (2.0 / q.shape[1]) * (q - target)
    if weights is not None:
        metrics["td_abs"] = td_abs(q, target)
        d_q = d_q * weights
    backward(trace, d_q.unsqueeze(-1), weight_grads, bias_grads)
    metrics["grad_norm"] = clip_and_step(critic_opt, max_grad_norm)
    critic.weights_changed()
    return metrics


def make_manual_update(actor: Actor, critic: StackedMLP, actor_target: Actor, critic_target: StackedMLP,
                       critic_opt: FusedAdam, actor_opt: FusedAdam, gamma: float,
                       smoothing: bool, policy_noise: float, noise_clip: float, max_grad_norm: float) -> UpdateFn:
    """`critic_loss_of` and `actor_loss_of` with their backward written out; products in the nets'
    `compute_dtype`."""
    critic_w_grads, critic_b_grads = _grads(critic)
    actor_w_grads, actor_b_grads = _grads(actor.net)
    first_critic = slice(0, 1)  # the actor climbs Q₁ only (TD3); with one critic, that one
    low, high = actor.low, actor.high
    half_width = box_fraction(1.0, low, high)
    smoothing_std, smoothing_clip = box_fraction(policy_noise, low, high), box_fraction(noise_clip, low, high)

    @torch.no_grad()
    def update(obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, next_obs: torch.Tensor,
               terminated: torch.Tensor, normal: torch.Tensor | None, update_actor: bool,
               discount: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        batch = rewards.shape[0]
        # Critic: regress every critic on the shared clipped-double-Q target.
        target = bootstrap_target(critic_target.infer, actor_target.infer, rewards, next_obs, terminated,
                                  normal if smoothing else None, smoothing_std, smoothing_clip, low, high,
                                  gamma if discount is None else discount)
        metrics = manual_critic_step(critic, critic_opt, critic_w_grads(), critic_b_grads(), obs, actions, target,
                                     weights, max_grad_norm)

        if update_actor:  # decided by the host's update counter, never by a tensor
            # Actor: ascend Q₁(s, μ(s)) through the freshly updated critic. Only dQ/da is needed
            # from the critic, so its weight gradients are never formed.
            action, tanh_out, actor_trace = actor.forward_traced(obs)
            q1, q1_trace = critic.forward_traced(critic_input(obs, action), members=first_critic)
            d_q1 = torch.full_like(q1, -1.0 / batch)  # d(−mean Q₁)/dQ₁
            d_action = backward(q1_trace, d_q1, None, None, input_cols=slice(obs.flatten(1).shape[1], None))
            d_pre = d_action * (half_width * (1.0 - tanh_out.square()))  # through action = mid + hw·tanh
            backward(actor_trace, d_pre, actor_w_grads(), actor_b_grads())
            clip_and_step(actor_opt, max_grad_norm, norm_wanted=False)  # its norm is not logged: only to clip
            actor.net.weights_changed()
            metrics["actor_loss"] = -q1.mean()
        return metrics

    return update


def make_autograd_update(actor: Actor, critic: StackedMLP, actor_target: Actor, critic_target: StackedMLP,
                         critic_opt: FusedAdam, actor_opt: FusedAdam, gamma: float, smoothing: bool,
                         policy_noise: float, noise_clip: float, max_grad_norm: float,
                         dtype: torch.dtype = torch.float32) -> UpdateFn:
    """`critic_loss_of` and `actor_loss_of` differentiated by autograd into the flat gradients; the
    forward passes and losses under `autocast` to `dtype`."""
    critic_params, actor_params = list(critic.parameters()), list(actor.parameters())
    low, high = actor.low, actor.high
    smoothing_std, smoothing_clip = box_fraction(policy_noise, low, high), box_fraction(noise_clip, low, high)

    def update(obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, next_obs: torch.Tensor,
               terminated: torch.Tensor, normal: torch.Tensor | None, update_actor: bool,
               discount: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        with autocast(low.device, dtype):
            loss, metrics = critic_loss_of(critic, critic_target, actor_target, obs, actions, rewards, next_obs,
                                           terminated, normal if smoothing else None, smoothing_std, smoothing_clip,
                                           low, high, gamma if discount is None else discount, weights)
        grads_into_(loss, critic_params, critic_opt.grads[0])
        metrics = {"loss": loss.detach(), **metrics, "grad_norm": clip_and_step(critic_opt, max_grad_norm)}
        if update_actor:  # decided by the host's update counter, never by a tensor
            with autocast(low.device, dtype):
                actor_loss = actor_loss_of(actor, critic, obs)
            grads_into_(actor_loss, actor_params, actor_opt.grads[0])
            clip_and_step(actor_opt, max_grad_norm, norm_wanted=False)
            metrics["actor_loss"] = actor_loss.detach()
        return metrics

    return update


# --- the agent ---


@dataclass
class TD3:
    spec: EnvSpec
    cfg: TrainConfig
    actor: Actor
    critic: StackedMLP
    actor_target: Actor
    critic_target: StackedMLP
    critic_opt: FusedAdam
    actor_opt: FusedAdam
    targets: TargetUpdater
    update_fn: UpdateFn
    smoothing: bool
    generator: torch.Generator  # exploration and smoothing noise, on the device
    device: torch.device
    total_updates: int
    explore_std: torch.Tensor  # per action dim
    policy: Callable[[torch.Tensor], torch.Tensor]  # obs -> μ(s), `actor.act`; compiled with --compile
    updates_done: int = 0  # critic updates
    actor_updates: int = 0

    # --- acting ---
    def exploration(self, env_step: int) -> dict[str, float]:
        return {"exploration_noise": self.cfg.exploration_noise}

    @torch.no_grad()
    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy(obs)

    def random_actions(self, n: int) -> torch.Tensor:
        low, high = self.actor.low, self.actor.high
        return low + (high - low) * torch.rand((n, low.numel()), generator=self.generator, device=self.device)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, env_step: int) -> torch.Tensor:
        action = self.policy(obs)
        normal = torch.randn(action.shape, generator=self.generator, device=self.device)
        return explore(action, normal, self.explore_std, self.actor.low, self.actor.high)

    # --- learning ---
    def _set_lr(self) -> None:
        cfg = self.cfg
        for opt, base in ((self.critic_opt, cfg.lr), (self.actor_opt, cfg.actor_lr or cfg.lr)):
            opt.lr = scheduled_lr(cfg, base, self.updates_done, self.total_updates)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.cfg.lr_schedule != "constant":
            self._set_lr()
        update_actor = (self.updates_done + 1) % self.cfg.policy_delay == 0
        normal = (torch.randn(batch.actions.shape, generator=self.generator, device=self.device)
                  if self.smoothing else None)
        metrics = self.update_fn(batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.terminated,
                                 normal, update_actor, batch.discount, batch.weights)
        self.updates_done += 1
        if update_actor:
            # Targets move with the actor (every policy_delay critic updates), as in TD3.
            self.actor_updates += 1
            self.targets.step(self.actor_updates)
        return metrics

    def current_lr(self) -> float:
        return self.critic_opt.lr

    # --- checkpointing ---
    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "actor_target": self.actor_target.state_dict(), "critic_target": self.critic_target.state_dict(),
                "critic_opt": self.critic_opt.state_dict(), "actor_opt": self.actor_opt.state_dict(),
                "updates_done": self.updates_done, "actor_updates": self.actor_updates,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        for name in ("actor", "critic", "actor_target", "critic_target", "critic_opt", "actor_opt"):
            getattr(self, name).load_state_dict(state[name])
        self.updates_done = int(state["updates_done"])
        self.actor_updates = int(state["actor_updates"])
        self.generator.set_state(state["generator"])


def _build(spec: EnvSpec, cfg: TrainConfig, device: torch.device, use_compile: bool, twin: bool) -> TD3:
    obs_dim = math.prod(spec.obs_shape)
    low = torch.tensor(spec.action_low, dtype=torch.float32)
    high = torch.tensor(spec.action_high, dtype=torch.float32)
    dtype = PRECISIONS[cfg.precision]
    actor = Actor(obs_dim, cfg.hidden_sizes, low, high, dtype).to(device)
    critic = StackedMLP(2 if twin else 1, obs_dim + low.numel(), cfg.hidden_sizes, 1, dtype).to(device)
    actor_target = copy.deepcopy(actor).requires_grad_(False)
    critic_target = copy.deepcopy(critic).requires_grad_(False)
    # Each net's parameters (and gradients) share one flat tensor: clip and Adam are single-tensor ops.
    critic_flat, critic_flat_grad = flatten_parameters_(critic)
    actor_flat, actor_flat_grad = flatten_parameters_(actor)
    critic_opt = FusedAdam([critic_flat], lr=cfg.lr, grads=[critic_flat_grad], lr_on_device=cfg.cuda_graph)
    actor_opt = FusedAdam([actor_flat], lr=cfg.actor_lr or cfg.lr, grads=[actor_flat_grad],
                          lr_on_device=cfg.cuda_graph)
    args = (actor, critic, actor_target, critic_target, critic_opt, actor_opt, cfg.gamma, twin, cfg.policy_noise,
            cfg.noise_clip, cfg.max_grad_norm)
    if uses_manual_gradients(cfg, device):
        update_fn = make_manual_update(*args)  # the nets' compute_dtype sets its precision
    else:
        update_fn = make_autograd_update(*args, dtype)
    update_fn = wrap_update(update_fn, cfg, use_compile, device)
    targets = make_target_updater([(actor, actor_target), (critic, critic_target)], cfg.target_update, cfg.tau,
                                  cfg.target_period)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed + 1)
    # The acting policy is compiled with the update (so that on CUDA its small kernels can fuse); the
    # exploration noise stays eager, as it draws from the agent's generator.
    policy = torch.compile(actor.act) if use_compile else actor.act
    return TD3(spec, cfg, actor, critic, actor_target, critic_target, critic_opt, actor_opt, targets, update_fn,
               twin, generator, device, planned_updates(cfg), box_fraction(cfg.exploration_noise, actor.low, actor.high),
               policy)


def build_td3(spec: EnvSpec, cfg: TrainConfig, device: torch.device, use_compile: bool) -> TD3:
    return _build(spec, cfg, device, use_compile, twin=True)


def build_ddpg(spec: EnvSpec, cfg: TrainConfig, device: torch.device, use_compile: bool) -> TD3:
    return _build(spec, cfg, device, use_compile, twin=False)


def members_builder(twin: bool) -> Callable[..., object]:
    """`Algorithm.build_members` of TD3 (`twin`) or DDPG: `fastrl.td3_members`."""
    def build(spec: EnvSpec, cfg: TrainConfig, members: list[TrainConfig], device: torch.device) -> object:
        from fastrl.td3_members import build_td3_members  # it imports this module

        return build_td3_members(spec, cfg, members, device, twin)

    return build


_NOTES = "--target-period counts actor updates (targets move with the actor)"
ALGORITHMS = (
    Algorithm("ddpg", discrete=False, build=build_ddpg, section=TD3Settings,
              reads=("exploration_noise", "policy_delay", "actor_lr"), defaults=DDPG_DEFAULTS, presets=PRESETS,
              check_spec=check_spec, notes=_NOTES, build_members=members_builder(twin=False)),
    Algorithm("td3", discrete=False, build=build_td3, section=TD3Settings,
              reads=tuple(TD3Settings.__dataclass_fields__), defaults=TD3_DEFAULTS, presets=PRESETS,
              check_spec=check_spec, notes=_NOTES, build_members=members_builder(twin=True)),
)
