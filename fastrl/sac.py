"""SAC (soft actor-critic, Haarnoja et al. 2018, with the automatic temperature of the 2018
"Algorithms and Applications" paper): a squashed-Gaussian actor, twin critics, no actor target.

The math is pure functions (the squashed Gaussian's sample and log-density, the soft Bellman target,
the three losses). Two builders make the update, one function each: the critic step on every call
and, when the host's counter says it is due, the actor and temperature steps, then clip and fused
Adam per net:
- `make_autograd_update`: gradients by autograd (`fastrl.learner.grads_into_`) into each net's
  flat gradient, through a feature-major forward (`autograd_forward`) whose gradients come out
  contiguous;
- `make_manual_update`: the same losses with the ReLU MLPs' backward written out (`stacked_mlp`):
  the actor's needs only dQ/da from the critics, and the squashed Gaussian's own gradient is
  `squashed_gaussian_grads`. Tests hold it to the autograd update; `--gradients auto` picks it on
  CPU, where it is the faster path. It alone has `--precision bf16` (the nets' `compute_dtype`, as
  TD3's: bf16 copies of fp32 master weights in `stacked_mlp.low_precision_layers`); the autograd
  update is fp32 only, and bf16 is refused where it would run.
Neither holds a Python branch on tensor values: `update_actor` is a host bool and fixed-vs-tuned α
a build-time switch; the Gaussian noise comes in as arguments, drawn from the agent's generator
outside the function, so a CUDA graph can replay it.

Order within an update (as CleanRL's `sac_continuous_action.py`): the critic step with the current
α, then the actor step through the freshly stepped critic (the actor climbs min(Q₁, Q₂) minus
α log π, α held fixed), then the α step on the log π of that same actor sample (detached: as SB3,
which also measures log π before its actor step; CleanRL draws a second sample after it). So every
step of an update uses the α from before that update.

The critic target moves after every critic update (soft τ, or a hard copy every `--target-period`
critic updates); SAC has no actor target.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from fastrl.algorithm import Algorithm
from fastrl.buffer import Batch
from fastrl.envs import EnvSpec
from fastrl.fused_adam import FusedAdam, flatten_parameters_, rebuildable_views
from fastrl.learner import PRECISIONS, clip_and_step, grads_into_, scheduled_lr, wrap_update
from fastrl.schedules import planned_updates
from fastrl.settings import ConfigError, optional, positive, setting
from fastrl.stacked_mlp import StackedMLP, Trace, backward
from fastrl.targets import TargetUpdater, make_target_updater
from fastrl.td3 import (
    box_fraction, check_spec, critic_input, critic_loss, manual_critic_step, td_abs, td_target, to_box,
    uses_manual_gradients,
)

if TYPE_CHECKING:
    from fastrl.config import TrainConfig

# --- settings ---


@dataclass
class SACSettings:
    alpha: float | None = setting(
        None, "SAC: fixed entropy temperature α; unset = tuned automatically toward --target-entropy",
        check=optional(positive))
    target_entropy: float | None = setting(
        None, "SAC: the entropy α is tuned toward (nats, of the env's actions); unset = −(action dims)")
    alpha_lr: float | None = setting(
        None, "SAC: Adam step size of log α; unset = --lr", check=optional(positive))


# The published SAC settings (the SAC paper's table, as SB3 and CleanRL default to): batch 256,
# 256-256 nets, Adam 3e-4, τ 0.005, one update per env step, the actor every update (SB3; CleanRL
# steps it every 2nd update, twice). No gradient clipping in any of them.
DEFAULTS: dict[str, Any] = {
    "batch_size": 256, "lr": 3e-4, "tau": 0.005, "target_update": "soft", "policy_delay": 1,
    "learning_starts": 5_000, "buffer_size": 1_000_000, "max_grad_norm": 0.0, "gamma": 0.99,
    "hidden_sizes": (256, 256), "eval_episodes": 10,
}

# The MuJoCo presets start learning after 5k random steps, CleanRL's `sac_continuous_action.py`
# default (`learning_starts = 5e3`); the SB3 zoo's `hyperparams/sac.yml` uses 10k for all four.
_MUJOCO = {"total_steps": 1_000_000, "learning_starts": 5_000, "log_every": 10_000, "eval_every": 50_000}
PRESETS: dict[str, dict[str, Any]] = {
    "Pendulum-v1": {"total_steps": 20_000, "learning_starts": 1_000, "log_every": 2_000, "eval_every": 5_000},
    **{env: dict(_MUJOCO) for env in ("HalfCheetah-v4", "Hopper-v4", "Walker2d-v4", "Ant-v4")},
}

# --- the math ---

# log σ is squashed smoothly into [LOG_STD_MIN, LOG_STD_MAX] (as CleanRL), not clamped (SB3: [−20, 2]):
# a clamp's gradient is zero outside its range, so a log σ pushed past it can never come back, and
# σ ≥ e⁻⁵ keeps log π finite in float32 where tanh saturates.
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def bounded_log_std(raw: torch.Tensor) -> torch.Tensor:
    """The net's raw output mapped smoothly onto [LOG_STD_MIN, LOG_STD_MAX] by a scaled tanh."""
    return LOG_STD_MIN + (0.5 * (LOG_STD_MAX - LOG_STD_MIN)) * (torch.tanh(raw) + 1.0)


def log_one_minus_tanh_sq(pre: torch.Tensor) -> torch.Tensor:
    """log(1 − tanh²u) = 2(log 2 − u − softplus(−2u)): finite where tanh²u rounds to 1."""
    return 2.0 * (math.log(2.0) - pre - F.softplus(-2.0 * pre))


def squashed_sample(mean: torch.Tensor, log_std: torch.Tensor,
                    noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-tanh sample u = μ + σ·ε and the unit action tanh(u) in [−1, 1]."""
    pre = torch.addcmul(mean, log_std.exp(), noise)
    return pre, torch.tanh(pre)


def squashed_log_prob(noise: torch.Tensor, log_std: torch.Tensor, pre: torch.Tensor,
                      log_half_width: torch.Tensor) -> torch.Tensor:
    """log π(a|s) of the env action a = to_box(tanh(u)), u = μ + σε, summed over action dims:
    Σ_d [log N(u_d; μ_d, σ_d) − log(1 − tanh²u_d) − log half_width_d] (the change of variables
    through tanh and the affine map onto the box). log N is written with ε = (u − μ)/σ as given."""
    log_normal = -0.5 * noise.square() - log_std - _HALF_LOG_2PI
    return (log_normal - log_one_minus_tanh_sq(pre) - log_half_width).sum(dim=-1)


def soft_td_target(rewards: torch.Tensor, terminated: torch.Tensor, next_q: torch.Tensor,
                   next_log_prob: torch.Tensor, alpha: torch.Tensor | float,
                   gamma: float | torch.Tensor) -> torch.Tensor:
    """y = r + γ(1 − terminated)(min_e Q⁻_e(s', a') − α log π(a'|s')), a' ~ π(·|s'); next_q is [E, B];
    `gamma` may be γ^m per sample (n-step returns). (The entropy term is the same for every critic,
    so it may go inside the min.)"""
    return td_target(rewards, terminated, next_q - alpha * next_log_prob, gamma)


def actor_loss(q_pi: torch.Tensor, log_prob: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """mean(α log π(a|s) − min_e Q_e(s, a)), a ~ π(·|s) reparameterised; q_pi is [E, B]."""
    return (alpha * log_prob - q_pi.amin(dim=0)).mean()


def squashed_gaussian_grads(d_action: torch.Tensor, d_log_prob: torch.Tensor | float, unit: torch.Tensor,
                            scaled_noise: torch.Tensor, raw_log_std: torch.Tensor,
                            half_width: torch.Tensor) -> torch.Tensor:
    """The hand-written path's gradient of a loss with respect to the actor's raw output (μ, raw
    log σ), [B, 2A], given dL/da for the env action a = to_box(tanh(u)), u = μ + σε, and dL/d log π
    per sample (`squashed_log_prob`). With ε held fixed, log N(u; μ, σ) = −ε²/2 − log σ − c, so
    d log π/du = 2 tanh u (from −log(1 − tanh²u)) and d log π/d log σ = −1 besides u's share σε."""
    d_pre = torch.addcmul(d_action * half_width * (1.0 - unit.square()), unit, d_log_prob, value=2.0)
    d_log_std = d_pre * scaled_noise - d_log_prob
    d_raw = d_log_std * ((0.5 * (LOG_STD_MAX - LOG_STD_MIN)) * (1.0 - torch.tanh(raw_log_std).square()))
    return torch.cat((d_pre, d_raw), dim=-1)


def temperature_loss(log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """−mean(log α · (log π(a|s) + H̄)), its gradient into log α only: α rises while the policy's
    entropy −E[log π] is below the target H̄ and falls while above."""
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean()


# --- networks ---


def autograd_forward(net: StackedMLP, x: torch.Tensor) -> torch.Tensor:
    """`net.forward(x)` for a shared input x [B, in] -> [E, B, out] (a transposed view), computed
    feature-major (activations [E·features, B]) so that autograd's backward is fast.

    With StackedMLP.forward's batch-major layers, autograd gives every weight gradient as a
    transposed view (the gradient of Wᵀ in x Wᵀ), which `grads_into_` must copy, and the narrow head's
    gradient comes back transposed into the ReLU's backward, whose kernel is many times slower on a
    transposed input than on a contiguous one on CPU. Feature-major, every layer is zᵀ = W hᵀ + b:
    autograd's products come out contiguous in W's own [out, in] layout, and the head's last dim is
    the batch. The first layer of all E members is one 2-D GEMM on the shared input."""
    weights, biases = net.layers()
    members, batch = net.members, x.shape[0]
    h = torch.addmm(biases[0].reshape(-1, 1), weights[0].flatten(0, 1), x.mT)  # [E·out, B]
    for w, b in zip(weights[1:], biases[1:]):
        h = h.relu_()
        if members == 1:  # 2-D: no batch dimension to carry (flatten(0, 1) of [1, out, in] is a view)
            h = torch.addmm(b.reshape(-1, 1), w.flatten(0, 1), h)
        else:
            h = torch.baddbmm(b.unsqueeze(-1), w, h.view(members, -1, batch)).flatten(0, 1)
    return h.view(members, -1, batch).mT


@dataclass
class TracedSample:
    """A batch of actor samples from the hand-written forward: what the losses read (the env
    action, log π) and what `squashed_gaussian_grads` and `backward` need (tanh u, σε, the raw
    log σ, the net's trace). `rows` takes a contiguous block of the samples."""
    action: torch.Tensor  # [B, A]
    log_prob: torch.Tensor  # [B]
    unit: torch.Tensor  # tanh(u), [B, A]
    scaled_noise: torch.Tensor  # σε = u − μ, [B, A]
    raw_log_std: torch.Tensor  # [B, A]
    trace: Trace

    def rows(self, rows: slice) -> TracedSample:
        """Samples `rows` only, of every member where the fields carry a leading member axis
        (views: the trace's activations are [E, B, features], so with one member a block of rows is
        still one contiguous block for the backward's products)."""
        return TracedSample(self.action[..., rows, :], self.log_prob[..., rows], self.unit[..., rows, :],
                            self.scaled_noise[..., rows, :], self.raw_log_std[..., rows, :],
                            Trace([x[:, rows] for x in self.trace.inputs], self.trace.weights))


def traced_sample(out: torch.Tensor, trace: Trace, noise: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                  log_half_width: torch.Tensor) -> TracedSample:
    """The squashed-Gaussian sample of an actor net's output `out` (μ then raw log σ, [..., B, 2A])
    at `noise` ε ([..., B, A]), with what the actor's backward needs; `trace` is the forward's."""
    action_dim = noise.shape[-1]
    mean, raw = out[..., :action_dim], out[..., action_dim:]
    log_std = bounded_log_std(raw)
    pre, unit = squashed_sample(mean, log_std, noise)
    log_prob = squashed_log_prob(noise, log_std, pre, log_half_width)
    return TracedSample(to_box(unit, low, high), log_prob, unit, pre - mean, raw, trace)


class GaussianActor(nn.Module):
    """Squashed-Gaussian policy: an MLP giving (μ, raw log σ) per action dim; the action is
    to_box(tanh(μ + σε))."""

    def __init__(self, obs_dim: int, hidden_sizes: tuple[int, ...], low: torch.Tensor, high: torch.Tensor,
                 compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.action_dim = low.numel()
        self.net = StackedMLP(1, obs_dim, hidden_sizes, 2 * self.action_dim, compute_dtype)
        low, high = low.reshape(-1).float().clone(), high.reshape(-1).float().clone()
        self.register_buffer("low", low)
        self.register_buffer("high", high)
        self.register_buffer("log_half_width", box_fraction(1.0, low, high).log())

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return out[..., :self.action_dim], bounded_log_std(out[..., self.action_dim:])

    def distribution(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ), [B, A] each, through the forward autograd differentiates fast."""
        return self._split(autograd_forward(self.net, obs.flatten(1))[0])

    def sample(self, obs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised env action and its log π (the training path)."""
        mean, log_std = self.distribution(obs)
        pre, unit = squashed_sample(mean, log_std, noise)
        return to_box(unit, self.low, self.high), squashed_log_prob(noise, log_std, pre, self.log_half_width)

    def sample_traced(self, obs: torch.Tensor, noise: torch.Tensor) -> TracedSample:
        """`sample` through the hand-written path's forward (`forward_traced`, in the net's compute
        dtype), keeping what the actor's backward needs."""
        out, trace = self.net.forward_traced(obs.flatten(1))
        return traced_sample(out[0], trace, noise, self.low, self.high, self.log_half_width)

    def act(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """A sampled env action through the 2-D acting path (`StackedMLP.forward_one`)."""
        mean, log_std = self._split(self.net.forward_one(obs.flatten(1)))
        return to_box(squashed_sample(mean, log_std, noise)[1], self.low, self.high)

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action to_box(tanh(μ)) through the acting path."""
        out = self.net.forward_one(obs.flatten(1))
        return to_box(torch.tanh(out[:, :self.action_dim]), self.low, self.high)


# --- the update ---

UpdateFn = Callable[..., dict[str, torch.Tensor]]


@dataclass
class Temperature:
    """α: fixed (`log_alpha` None) or tuned, log α then being a one-element leaf with its own Adam."""
    fixed: torch.Tensor | None  # 0-d α when fixed
    log_alpha: torch.Tensor | None  # [1], requires grad, when tuned
    opt: FusedAdam | None
    target_entropy: float

    def value(self) -> torch.Tensor:
        """α as a 0-d device tensor, out of any autograd graph."""
        return self.fixed if self.log_alpha is None else self.log_alpha.detach().exp().reshape(())


def _soft_target(actor: GaussianActor, critic_target: StackedMLP, rewards: torch.Tensor, terminated: torch.Tensor,
                 next_obs: torch.Tensor, next_noise: torch.Tensor, alpha: torch.Tensor,
                 gamma: float | torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        next_actions, next_log_prob = actor.sample(next_obs, next_noise)
        next_q = critic_target(critic_input(next_obs, next_actions))[..., 0]
        return soft_td_target(rewards, terminated, next_q, next_log_prob, alpha, gamma)


def _temperature_step(temperature: Temperature, log_prob: torch.Tensor, metrics: dict[str, torch.Tensor]) -> None:
    """The α step (when tuned) on the actor step's detached log π, by autograd; its loss into `metrics`."""
    log_alpha = temperature.log_alpha
    if log_alpha is None:
        return
    with torch.enable_grad():
        alpha_loss = temperature_loss(log_alpha, log_prob, temperature.target_entropy)
        grads_into_(alpha_loss, [log_alpha], temperature.opt.grads[0])
    clip_and_step(temperature.opt, 0.0, norm_wanted=False)  # never clipped; averaged over the ranks
    metrics["alpha_loss"] = alpha_loss.detach()


def _temperature_step_by_hand(temperature: Temperature, mean_log_prob: torch.Tensor,
                              metrics: dict[str, torch.Tensor]) -> None:
    """`_temperature_step` from the batch's mean log π: `temperature_loss` is −log α · (mean log π + H̄),
    so its gradient is g = −(mean log π + H̄) and the loss log α · g."""
    log_alpha = temperature.log_alpha
    if log_alpha is None:
        return
    grad = temperature.opt.grads[0]
    torch.neg(mean_log_prob.add(temperature.target_entropy), out=grad[0])
    metrics["alpha_loss"] = log_alpha.detach()[0] * grad[0]  # before the step, as autograd's loss
    clip_and_step(temperature.opt, 0.0, norm_wanted=False)  # never clipped; averaged over the ranks


def make_autograd_update(actor: GaussianActor, critic: StackedMLP, critic_target: StackedMLP,
                         critic_opt: FusedAdam, actor_opt: FusedAdam, temperature: Temperature, gamma: float,
                         max_grad_norm: float) -> UpdateFn:
    """The update with every gradient by autograd (`grads_into_`)."""
    critic_params, actor_params = list(critic.parameters()), list(actor.parameters())
    critic_grad, actor_grad = critic_opt.grads[0], actor_opt.grads[0]  # the flat gradients

    def update(obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, next_obs: torch.Tensor,
               terminated: torch.Tensor, next_noise: torch.Tensor, noise: torch.Tensor | None, update_actor: bool,
               discount: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        alpha = temperature.value()  # the α from before this update, for all of its steps
        # Critic: regress both critics on the soft clipped-double-Q target.
        target = _soft_target(actor, critic_target, rewards, terminated, next_obs, next_noise, alpha,
                              gamma if discount is None else discount)
        q = autograd_forward(critic, critic_input(obs, actions))[..., 0]  # both critics, one batched forward
        loss = critic_loss(q, target, weights)
        grads_into_(loss, critic_params, critic_grad)
        metrics = {"loss": loss.detach(), "mean_q": q.detach().mean(),
                   "grad_norm": clip_and_step(critic_opt, max_grad_norm)}
        if weights is not None:  # prioritized replay: each sample's new priority
            metrics["td_abs"] = td_abs(q.detach(), target)

        if update_actor:  # decided by the host's update counter, never by a tensor
            # Actor: through the stepped critic; only d min Q / da flows back, the critic's
            # weight gradients are never formed (autograd.grad to the actor's parameters only).
            action, log_prob = actor.sample(obs, noise)
            q_pi = autograd_forward(critic, critic_input(obs, action))[..., 0]
            policy_loss = actor_loss(q_pi, log_prob, alpha)
            grads_into_(policy_loss, actor_params, actor_grad)
            clip_and_step(actor_opt, max_grad_norm, norm_wanted=False)  # its norm is not logged: only to clip
            log_prob = log_prob.detach()
            metrics.update(actor_loss=policy_loss.detach(), alpha=alpha, entropy=-log_prob.mean())
            _temperature_step(temperature, log_prob, metrics)
        return metrics

    return update


def make_manual_update(actor: GaussianActor, critic: StackedMLP, critic_target: StackedMLP, critic_opt: FusedAdam,
                       actor_opt: FusedAdam, temperature: Temperature, gamma: float,
                       max_grad_norm: float) -> UpdateFn:
    """`make_autograd_update` with the backward passes written out for the ReLU MLPs
    (`stacked_mlp.backward`): the same losses, tested against it, with the products in the nets'
    `compute_dtype` (`--precision`). The actor's gradient takes only dQ/da from the critics and goes
    through the squashed Gaussian by `squashed_gaussian_grads`.

    On an actor update the actor's samples at s' (for the target) and at s (for its own step) come
    from one forward over both batches: nothing changes the actor's weights before its own step, so
    the sample at s is the one a forward after the critic step would draw (the critic it climbs is
    still the freshly stepped one). One forward of twice the rows runs its products at a better rate
    and every small op of the squashed Gaussian once instead of twice."""
    critic_w_grads, critic_b_grads = _grad_views(critic)
    actor_w_grads, actor_b_grads = _grad_views(actor.net)
    action_cols = slice(critic.weights[0].shape[2] - actor.action_dim, None)  # the critic input's action columns
    half_width = box_fraction(1.0, actor.low, actor.high)

    @torch.no_grad()
    def update(obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, next_obs: torch.Tensor,
               terminated: torch.Tensor, next_noise: torch.Tensor, noise: torch.Tensor | None, update_actor: bool,
               discount: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        batch = rewards.shape[0]
        alpha = temperature.value()
        if update_actor:  # decided by the host's update counter, never by a tensor
            both = actor.sample_traced(torch.cat((next_obs.flatten(1), obs.flatten(1))), torch.cat((next_noise, noise)))
            after, now = both.rows(slice(0, batch)), both.rows(slice(batch, None))
        else:
            after = actor.sample_traced(next_obs, next_noise)
        next_q = critic_target.infer(critic_input(next_obs, after.action))[..., 0]
        target = soft_td_target(rewards, terminated, next_q, after.log_prob, alpha,
                                gamma if discount is None else discount)
        metrics = manual_critic_step(critic, critic_opt, critic_w_grads(), critic_b_grads(), obs, actions, target,
                                     weights, max_grad_norm)

        if update_actor:
            q_out, q_trace = critic.forward_traced(critic_input(obs, now.action))  # the stepped critic
            q_pi = q_out[..., 0]
            policy_loss = actor_loss(q_pi, now.log_prob, alpha)
            # d loss/d Q_e = −1/B through the min, split evenly among tied critics (as autograd's amin)
            is_min = (q_pi == q_pi.amin(dim=0)).float()
            d_q = is_min.div_(is_min.sum(dim=0).mul_(-batch))
            d_action = backward(q_trace, d_q.unsqueeze(-1), None, None, input_cols=action_cols)
            d_out = squashed_gaussian_grads(d_action.sum(dim=0), alpha / batch, now.unit, now.scaled_noise,
                                            now.raw_log_std, half_width)
            backward(now.trace, d_out.unsqueeze(0), actor_w_grads(), actor_b_grads())
            clip_and_step(actor_opt, max_grad_norm, norm_wanted=False)  # its norm is not logged: only to clip
            actor.net.weights_changed()  # as td3: any low-precision copies of the weights are stale
            mean_log_prob = now.log_prob.mean()
            metrics.update(actor_loss=policy_loss, alpha=alpha, entropy=-mean_log_prob)
            _temperature_step_by_hand(temperature, mean_log_prob, metrics)
        return metrics

    return update


def _grad_views(net: StackedMLP) -> tuple[Callable[[], list[torch.Tensor]], Callable[[], list[torch.Tensor]]]:
    """The net's weight and bias gradients, as `rebuildable_views` of its flat gradient."""
    return rebuildable_views([w.grad for w in net.weights]), rebuildable_views([b.grad for b in net.biases])


# --- the agent ---


@dataclass
class SAC:
    spec: EnvSpec
    cfg: TrainConfig
    actor: GaussianActor
    critic: StackedMLP
    critic_target: StackedMLP
    critic_opt: FusedAdam
    actor_opt: FusedAdam
    temperature: Temperature
    targets: TargetUpdater
    update_fn: UpdateFn
    generator: torch.Generator  # exploration (the policy's own sampling) and the update's noise
    device: torch.device
    total_updates: int
    policy_sample: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (obs, ε) -> action; compiled with --compile
    policy_greedy: Callable[[torch.Tensor], torch.Tensor]  # obs -> to_box(tanh(μ)); compiled with --compile
    updates_done: int = 0  # critic updates
    actor_updates: int = 0

    # --- acting ---
    def exploration(self, env_step: int) -> dict[str, float]:
        return {}  # exploration is the policy's own sampling; α reaches the log through the metrics

    def _normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device)

    def random_actions(self, n: int) -> torch.Tensor:
        low, high = self.actor.low, self.actor.high
        return low + (high - low) * torch.rand((n, low.numel()), generator=self.generator, device=self.device)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, env_step: int) -> torch.Tensor:
        return self.policy_sample(obs, self._normal((obs.shape[0], self.actor.action_dim)))

    @torch.no_grad()
    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy_greedy(obs)

    # --- learning ---
    def _set_lr(self) -> None:
        cfg = self.cfg
        opts = [(self.critic_opt, cfg.lr), (self.actor_opt, cfg.actor_lr or cfg.lr)]
        if self.temperature.opt is not None:
            opts.append((self.temperature.opt, cfg.alpha_lr or cfg.lr))
        for opt, base in opts:
            opt.lr = scheduled_lr(cfg, base, self.updates_done, self.total_updates)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.cfg.lr_schedule != "constant":
            self._set_lr()
        update_actor = (self.updates_done + 1) % self.cfg.policy_delay == 0
        shape = tuple(batch.actions.shape)
        if update_actor:  # one draw for both samples: ε for a' ~ π(·|s') and for a ~ π(·|s)
            next_noise, noise = self._normal((2, *shape)).unbind(0)
        else:
            next_noise, noise = self._normal(shape), None
        metrics = self.update_fn(batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.terminated,
                                 next_noise, noise, update_actor, batch.discount, batch.weights)
        self.updates_done += 1
        self.actor_updates += update_actor
        self.targets.step(self.updates_done)  # the critic target moves with every critic update
        return metrics

    def current_lr(self) -> float:
        return self.critic_opt.lr

    # --- checkpointing ---
    def state_dict(self) -> dict:
        t = self.temperature
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "critic_target": self.critic_target.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "actor_opt": self.actor_opt.state_dict(),
                "log_alpha": t.log_alpha.detach() if t.log_alpha is not None else None,
                "alpha_opt": t.opt.state_dict() if t.opt is not None else None,
                "updates_done": self.updates_done, "actor_updates": self.actor_updates,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        for name in ("actor", "critic", "critic_target", "critic_opt", "actor_opt"):
            getattr(self, name).load_state_dict(state[name])
        t = self.temperature
        if (t.log_alpha is None) != (state["log_alpha"] is None):
            raise ValueError("checkpoint: α fixed in one of the run and the checkpoint, tuned in the other")
        if t.log_alpha is not None:
            with torch.no_grad():
                t.log_alpha.copy_(state["log_alpha"])  # in place: the optimizer steps this tensor
            t.opt.load_state_dict(state["alpha_opt"])
        self.updates_done = int(state["updates_done"])
        self.actor_updates = int(state["actor_updates"])
        self.generator.set_state(state["generator"])


def make_temperature(cfg: TrainConfig, action_dim: int, device: torch.device) -> Temperature:
    target_entropy = cfg.target_entropy if cfg.target_entropy is not None else -float(action_dim)
    if cfg.alpha is not None:
        return Temperature(torch.tensor(float(cfg.alpha), device=device), None, None, target_entropy)
    log_alpha = torch.zeros(1, device=device, requires_grad=True)  # α = 1 at the start, as SB3 and CleanRL
    grad = torch.zeros_like(log_alpha)
    opt = FusedAdam([log_alpha], lr=cfg.alpha_lr or cfg.lr, grads=[grad], lr_on_device=cfg.cuda_graph)
    return Temperature(None, log_alpha, opt, target_entropy)


def build_sac(spec: EnvSpec, cfg: TrainConfig, device: torch.device, use_compile: bool) -> SAC:
    obs_dim = math.prod(spec.obs_shape)
    low = torch.tensor(spec.action_low, dtype=torch.float32)
    high = torch.tensor(spec.action_high, dtype=torch.float32)
    hidden = tuple(cfg.hidden_sizes)
    manual = uses_manual_gradients(cfg, device)
    if cfg.precision != "fp32" and not manual:
        raise ConfigError(_autograd_fp32_only(cfg))
    dtype = PRECISIONS[cfg.precision]  # the hand-written path's products (`StackedMLP.compute_dtype`)
    actor = GaussianActor(obs_dim, hidden, low, high, dtype).to(device)
    critic = StackedMLP(2, obs_dim + low.numel(), hidden, 1, dtype).to(device)  # twin critics, one batched net
    critic_target = copy.deepcopy(critic).requires_grad_(False)
    # Each net's parameters (and gradients) share one flat tensor: clip and Adam are single-tensor ops.
    critic_flat, critic_flat_grad = flatten_parameters_(critic)
    actor_flat, actor_flat_grad = flatten_parameters_(actor)
    critic_opt = FusedAdam([critic_flat], lr=cfg.lr, grads=[critic_flat_grad], lr_on_device=cfg.cuda_graph)
    actor_opt = FusedAdam([actor_flat], lr=cfg.actor_lr or cfg.lr, grads=[actor_flat_grad],
                          lr_on_device=cfg.cuda_graph)
    temperature = make_temperature(cfg, low.numel(), device)
    make = make_manual_update if manual else make_autograd_update
    update_fn = make(actor, critic, critic_target, critic_opt, actor_opt, temperature, cfg.gamma, cfg.max_grad_norm)
    update_fn = wrap_update(update_fn, cfg, use_compile, device)
    targets = make_target_updater([(critic, critic_target)], cfg.target_update, cfg.tau, cfg.target_period)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed + 1)
    # The acting paths are compiled with the update; the noise is drawn eagerly from the agent's
    # generator and passed in.
    policy_sample = torch.compile(actor.act) if use_compile else actor.act
    policy_greedy = torch.compile(actor.greedy) if use_compile else actor.greedy
    return SAC(spec, cfg, actor, critic, critic_target, critic_opt, actor_opt, temperature, targets, update_fn,
               generator, device, planned_updates(cfg), policy_sample, policy_greedy)


def _autograd_fp32_only(cfg: Any) -> str:
    return (f"--precision {cfg.precision}: SAC's autograd update (--gradients {cfg.gradients} on this device) "
            f"trains in fp32 only; use --precision fp32, or the hand-written update (--gradients manual, or auto "
            f"on CPU) for bf16")


def validate(cfg: Any) -> None:
    """A fixed α is never tuned: the tuning settings would be silently ignored. bf16 runs on the
    hand-written update only: the autograd update's feature-major forward has no autocast path."""
    if cfg.precision != "fp32":
        from fastrl.config import resolve_device  # not at the top: fastrl.config imports the registry

        device = resolve_device(cfg.device)
        if not uses_manual_gradients(cfg, device):
            raise ConfigError(_autograd_fp32_only(cfg))
    if cfg.alpha is not None:
        for name in ("target_entropy", "alpha_lr"):
            if getattr(cfg, name) is not None:
                raise ConfigError(f"--{name.replace('_', '-')}: only used when α is tuned; drop it or --alpha")


def build_sac_members(spec: EnvSpec, cfg: TrainConfig, members: list[TrainConfig], device: torch.device) -> Any:
    from fastrl.sac_members import build_sac_members as build  # it imports this module

    return build(spec, cfg, members, device)


ALGORITHM = Algorithm(
    name="sac", discrete=False, build=build_sac, section=SACSettings,
    reads=("alpha", "target_entropy", "alpha_lr", "policy_delay", "actor_lr"),
    defaults=DEFAULTS, presets=PRESETS, validate=validate, check_spec=check_spec,  # MLPs: no image observations
    notes=("the critic target moves after every critic update, so --target-period (hard targets) counts "
           "critic updates; --policy-delay D steps the actor and α every D critic updates; α is tuned toward "
           "--target-entropy unless --alpha fixes it"),
    build_members=build_sac_members,
)
ALGORITHMS = (ALGORITHM,)
