"""DQN (with the Double DQN switch): settings, presets, the loss as pure functions, the update, the agent.

The loss is `q_loss` (TD target, Huber or squared TD error). Two updates minimise it, each one
function with no Python branch on tensor values (so `torch.compile` takes it whole):
- `make_autograd_update`: any Q-net (the Nature CNN, or the MLP), gradients by autograd;
- `make_manual_update`: the MLP Q-net (a one-member `StackedMLP`) with the backward of the same
  loss written out; tests hold its gradients to autograd's of `q_loss`. `--gradients auto` picks
  it for vector observations on CPU, where it is the measured faster path (BENCHMARKS.md).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fastrl.algorithm import Algorithm
from fastrl.buffer import Batch
from fastrl.fused_adam import FusedAdam, clip_grad_norm_members_, flatten_parameters_, rebuildable_views
from fastrl.learner import PRECISIONS, autocast, clip_and_step, grads_into_, scheduled_lr, wrap_update
from fastrl.networks import NatureCNN
from fastrl.schedules import linear, planned_updates
from fastrl.settings import ConfigError, in_range, setting
from fastrl.stacked_mlp import StackedMLP, backward
from fastrl.targets import TargetUpdater, make_target_updater

if TYPE_CHECKING:
    from fastrl.config import TrainConfig
    from fastrl.envs import EnvSpec

# --- settings ---

LOSSES = ("huber", "mse")


@dataclass
class DQNSettings:
    loss: str = setting("huber", "TD loss", choices=LOSSES)
    double_dqn: bool = setting(True, "Double DQN targets")
    eps_start: float = setting(1.0, "initial epsilon", check=in_range(0, 1))
    eps_end: float = setting(0.05, "final epsilon", check=in_range(0, 1))
    eps_fraction: float = setting(0.1, "fraction of --total-steps over which epsilon decays", check=in_range(0, 1))
    eval_epsilon: float = setting(0.0, "epsilon of evaluation episodes (0 = greedy; the Atari protocol: 0.05)",
                                  check=in_range(0, 1))


DEFAULTS = {"target_update": "hard", "target_period": 500, "lr": 1e-3}

PRESETS = {
    # Tuned over seeds 1-10 (see README): long train phases with the target synced once per phase,
    # a 256-256 net (smaller ones reached 500 and then collapsed), lr annealed to 0, γ = 0.98
    # (with 0.99 a seed still collapsed late and its Q values ran away), and 3-step returns: with
    # 1-step returns some seeds were still near 200 at 60k steps.
    "CartPole-v1": {
        "total_steps": 60_000, "num_envs": 8, "buffer_size": 50_000, "batch_size": 128,
        "learning_starts": 1_000, "train_every": 32, "updates_per_train": 64, "lr": 2.3e-3,
        "lr_schedule": "linear", "lr_end_fraction": 0.0, "gamma": 0.98,
        "target_update": "hard", "target_period": 64, "tau": 0.01,
        "hidden_sizes": (256, 256), "eps_start": 1.0, "eps_end": 0.04, "eps_fraction": 0.16,
        "max_grad_norm": 10.0, "n_step": 3, "log_every": 5_000, "eval_every": 10_000, "eval_episodes": 10,
    },
    # CleanRL's dqn_atari.py (the Nature DQN protocol, fastrl.envs.envpool_options): 10M steps,
    # buffer 1M, batch 32, Adam lr 1e-4, γ 0.99, 80k random steps, one update per 4 transitions
    # (8 envs: 2 updates every vector step), ε 1 -> 0.01 over the first 10%, MSE loss, plain (not
    # Double) DQN targets, no gradient clipping, a hard target copy every 1000 env steps (= 250
    # updates: --target-period counts updates), 10 evaluation games at ε = 0.05.
    "Breakout-v5": {
        "total_steps": 10_000_000, "num_envs": 8, "buffer_size": 1_000_000, "batch_size": 32,
        "learning_starts": 80_000, "train_every": 1, "updates_per_train": 2, "lr": 1e-4, "gamma": 0.99,
        "target_update": "hard", "target_period": 250, "eps_start": 1.0, "eps_end": 0.01, "eps_fraction": 0.1,
        "loss": "mse", "double_dqn": False, "max_grad_norm": 0.0,
        "hidden_sizes": (512,), "log_every": 10_000, "eval_episodes": 10, "eval_epsilon": 0.05,
    },
}


def uses_manual_gradients(cfg: TrainConfig, spec: EnvSpec, device: torch.device) -> bool:
    """The hand-written MLP backward: asked for, or `auto` on CPU for vector observations."""
    if cfg.gradients == "auto":
        return not spec.is_image and device.type == "cpu"
    return cfg.gradients == "manual"


def check_spec(cfg: TrainConfig, spec: EnvSpec) -> None:
    if cfg.gradients == "manual" and spec.is_image:
        raise ConfigError(f"--gradients: manual is the ReLU-MLP backward, and {cfg.env} observes images "
                          f"(a CNN); use --gradients autograd or auto")


# --- the math ---


Discount = float | torch.Tensor  # γ, or γ^m per sample (n-step returns: the batch's `discount`)


def td_target(rewards: torch.Tensor, terminated: torch.Tensor, next_q_target: torch.Tensor,
              next_q_online: torch.Tensor | None, gamma: Discount) -> torch.Tensor:
    """r + γ (1 − terminated) Q⁻(s', a*). Truncation is not termination: a time-limit cut still
    bootstraps. With `next_q_online` (Double DQN), a* = argmax Q(s', ·), else argmax Q⁻(s', ·)."""
    if next_q_online is None:
        next_value = next_q_target.amax(dim=-1)  # amax: max() also builds the indices
    else:
        best = next_q_online.argmax(dim=-1, keepdim=True)
        next_value = next_q_target.gather(-1, best).squeeze(-1)
    next_value = next_value.float()  # the target in fp32 whatever the nets' compute dtype
    if isinstance(gamma, torch.Tensor):
        return torch.addcmul(rewards, gamma * (1.0 - terminated), next_value)
    return torch.addcmul(rewards, 1.0 - terminated, next_value, value=gamma)


def td_loss(q_taken: torch.Tensor, target: torch.Tensor, kind: str, weights: torch.Tensor | None = None,
            per_member: bool = False) -> torch.Tensor:
    """Mean Huber (δ = 1) or squared TD error; with `weights` (prioritized replay's importance
    weights), the weighted mean. `per_member`: inputs [E, B], one mean per member ([E])."""
    loss = F.smooth_l1_loss if kind == "huber" else F.mse_loss
    if weights is None and not per_member:
        return loss(q_taken, target)
    each = loss(q_taken, target, reduction="none")
    if weights is not None:
        each = weights * each
    return each.mean(-1) if per_member else each.mean()


def td_loss_grad(q_taken: torch.Tensor, target: torch.Tensor, kind: str,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """d td_loss / d q_taken: the mean's 1/B times the Huber (δ = 1) or squared-error slope (times
    each sample's weight). Inputs [B], or [E, B] for stacked members (each member's own mean)."""
    error = q_taken - target
    size = error.shape[-1]
    slope = error.clamp_(-1.0, 1.0).div_(size) if kind == "huber" else error.mul_(2.0 / size)
    return slope if weights is None else slope.mul_(weights)


QNet = Callable[[torch.Tensor], torch.Tensor]  # observations [B, ...] -> Q values [B, A]


def q_loss(q: QNet, q_target: QNet, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
           next_obs: torch.Tensor, terminated: torch.Tensor, discount: Discount, double: bool,
           kind: str, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DQN loss of one mini-batch, and its metrics (with `weights`, also each sample's |TD
    error|, "td_abs", for its new priority). No gradient flows through the target (nor, with
    Double DQN, through the online net's choice of a*). The loss is taken in fp32 (under autocast
    too)."""
    with torch.no_grad():
        next_q_online = q(next_obs) if double else None
        target = td_target(rewards, terminated, q_target(next_obs), next_q_online, discount)
    q_taken = q(obs).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1).float()
    loss = td_loss(q_taken, target, kind, weights)
    metrics = {"mean_q": q_taken.detach().mean()}
    if weights is not None:
        metrics["td_abs"] = (q_taken.detach() - target).abs()
    return loss, metrics


# --- the updates ---

UpdateFn = Callable[..., dict[str, torch.Tensor]]


def make_autograd_update(q: QNet, q_target: QNet, params: list[torch.Tensor], flat_grad: torch.Tensor,
                         optimizer: FusedAdam, gamma: float, double: bool, loss_kind: str,
                         max_grad_norm: float, dtype: torch.dtype = torch.float32) -> UpdateFn:
    """`q_loss`, differentiated by autograd into the flat gradient, clipped, one Adam step; the
    forward passes and the loss under `autocast` to `dtype`."""

    def update(obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, next_obs: torch.Tensor,
               terminated: torch.Tensor, discount: torch.Tensor | None = None,
               weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        with autocast(flat_grad.device, dtype):
            loss, metrics = q_loss(q, q_target, obs, actions, rewards, next_obs, terminated,
                                   gamma if discount is None else discount, double, loss_kind, weights)
        grads_into_(loss, params, flat_grad)
        grad_norm = clip_and_step(optimizer, max_grad_norm)
        return {"loss": loss.detach(), **metrics, "grad_norm": grad_norm}

    return update


def make_manual_update(q: StackedMLP, q_target: StackedMLP, optimizer: FusedAdam, gamma: float | torch.Tensor,
                       double: bool, loss_kind: str, max_grad_norm: float | torch.Tensor) -> UpdateFn:
    """`q_loss` for a one-member `StackedMLP` Q-net, with its backward written out: the loss's
    gradient reaches the net only through the taken action's Q, so the output gradient is the
    one-hot of the action times d loss / d Q(s, a). Products in the nets' `compute_dtype`.

    Stacked members (`max_grad_norm` a tensor [E], `gamma` [E, 1], `q` of E members): every batch
    field has a leading member axis ([E, B, ...]); each member's loss is its own batch mean, so its
    gradient is its own single-agent gradient, and the clip is per member. Metrics are [E]."""
    stacked = isinstance(max_grad_norm, torch.Tensor)
    weight_grads = rebuildable_views([w.grad for w in q.weights])  # views of the flat gradient
    bias_grads = rebuildable_views([b.grad for b in q.biases])
    action_ids = torch.arange(q.out_dim, dtype=torch.float32, device=q.weights[0].device)
    obs_from = 2 if stacked else 1  # where the observation dims start

    @torch.no_grad()
    def update(obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, next_obs: torch.Tensor,
               terminated: torch.Tensor, discount: torch.Tensor | None = None,
               weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        next_q_target = q_target.infer(next_obs.flatten(obs_from))
        next_q_online = q.infer(next_obs.flatten(obs_from)) if double else None
        if not stacked:
            next_q_target, next_q_online = next_q_target[0], next_q_online[0] if double else None
        target = td_target(rewards, terminated, next_q_target, next_q_online, gamma if discount is None else discount)
        q_all, trace = q.forward_traced(obs.flatten(obs_from))
        # One-hot of the taken action: its product with Q picks Q(s, a), and the same mask routes
        # the loss gradient back to that output alone (actions arrive as floats from the buffer).
        taken = (actions.unsqueeze(-1) == action_ids).to(q_all.dtype)
        q_taken = (q_all * taken).sum(-1) if stacked else (q_all[0] * taken).sum(-1)
        loss = td_loss(q_taken, target, loss_kind, weights, per_member=stacked)
        metrics = {"loss": loss, "mean_q": q_taken.mean(-1) if stacked else q_taken.mean()}
        if weights is not None:
            metrics["td_abs"] = (q_taken - target).abs()
        d_q_taken = td_loss_grad(q_taken, target, loss_kind, weights)
        grad_out = taken * d_q_taken.unsqueeze(-1)
        backward(trace, grad_out if stacked else grad_out.unsqueeze(0), weight_grads(), bias_grads())
        if stacked:
            metrics["grad_norm"] = clip_grad_norm_members_(weight_grads() + bias_grads(), max_grad_norm)
            optimizer.step()
        else:
            metrics["grad_norm"] = clip_and_step(optimizer, max_grad_norm)
        q.weights_changed()
        return metrics

    return update


# --- the agent ---


@dataclass
class DQN:
    spec: EnvSpec
    cfg: TrainConfig
    q: nn.Module  # a one-member StackedMLP (vector observations) or the Nature CNN
    q_target: nn.Module
    optimizer: FusedAdam
    targets: TargetUpdater
    update_fn: UpdateFn
    generator: torch.Generator  # exploration randomness, on the device
    device: torch.device
    total_updates: int
    greedy_actions: Callable[[torch.Tensor], torch.Tensor]  # obs -> argmax_a Q; compiled with --compile
    # Evaluation's ε draws, on the device. Not the exploration generator, and not checkpointed (like
    # the eval envs): how long evaluation games last never shifts the training run's random stream,
    # so a resumed run still trains exactly as the uninterrupted one.
    eval_generator: torch.Generator
    updates_done: int = 0

    # --- acting ---
    def epsilon(self, env_step: int) -> float:
        return linear(self.cfg.eps_start, self.cfg.eps_end, self.cfg.eps_fraction * self.cfg.total_steps, env_step)

    def exploration(self, env_step: int) -> dict[str, float]:
        return {"epsilon": self.epsilon(env_step)}

    @torch.no_grad()
    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        return self.greedy_actions(obs)

    def random_actions(self, n: int) -> torch.Tensor:
        return torch.randint(0, self.spec.num_actions, (n,), generator=self.generator, device=self.device)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, env_step: int) -> torch.Tensor:
        return epsilon_greedy(self.greedy(obs), self.epsilon(env_step), self.spec.num_actions, self.generator)

    @torch.no_grad()
    def evaluation_actions(self, obs: torch.Tensor) -> torch.Tensor:
        """ε-greedy at --eval-epsilon (an Atari agent that never presses FIRE after a lost life
        would stall its game until the time limit); greedy, with no draw at all, at 0."""
        greedy = self.greedy(obs)
        if self.cfg.eval_epsilon == 0.0:
            return greedy
        return epsilon_greedy(greedy, self.cfg.eval_epsilon, self.spec.num_actions, self.eval_generator)

    # --- learning ---
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        self.optimizer.lr = scheduled_lr(cfg, cfg.lr, self.updates_done, self.total_updates)
        metrics = self.update_fn(batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.terminated,
                                 batch.discount, batch.weights)
        self.updates_done += 1
        self.targets.step(self.updates_done)
        return metrics

    def current_lr(self) -> float:
        return self.optimizer.lr

    # --- checkpointing ---
    def state_dict(self) -> dict:
        return {"q": self.q.state_dict(), "q_target": self.q_target.state_dict(),
                "optimizer": self.optimizer.state_dict(), "updates_done": self.updates_done,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.q.load_state_dict(state["q"])
        self.q_target.load_state_dict(state["q_target"])
        self.optimizer.load_state_dict(flat_optimizer_state(state["optimizer"]))
        self.updates_done = int(state["updates_done"])
        self.generator.set_state(state["generator"])


def epsilon_greedy(greedy: torch.Tensor, epsilon: float, num_actions: int, generator: torch.Generator) -> torch.Tensor:
    """Each row's greedy action, or with probability ε a uniformly random one (which may be the
    greedy one too)."""
    explore = torch.rand(greedy.shape, generator=generator, device=greedy.device) < epsilon
    random = torch.randint(0, num_actions, greedy.shape, generator=generator, device=greedy.device)
    return torch.where(explore, random, greedy)


def flat_optimizer_state(state: dict) -> dict:
    """Adam moments saved per parameter (the Nature CNN's layout before its parameters were made
    flat) as the one flat tensor the optimizer now holds: the parameters' order is the same."""
    if len(state["exp_avg"]) == 1:
        return state
    return {**state, **{name: [torch.cat([t.reshape(-1) for t in state[name]])] for name in ("exp_avg", "exp_avg_sq")}}


def make_greedy(q: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """obs -> the greedy action of each row (the MLP through its 2-D acting path)."""
    if isinstance(q, StackedMLP):
        return lambda obs: q.forward_one(obs.flatten(1)).argmax(dim=-1)
    return lambda obs: q(obs).argmax(dim=-1)


def build_dqn(spec: EnvSpec, cfg: TrainConfig, device: torch.device, use_compile: bool) -> DQN:
    dtype = PRECISIONS[cfg.precision]
    if spec.is_image:
        q: nn.Module = NatureCNN(spec.obs_shape, cfg.hidden_sizes, spec.num_actions).to(device)
    else:
        q = StackedMLP(1, math.prod(spec.obs_shape), cfg.hidden_sizes, spec.num_actions, dtype).to(device)
    q_target = copy.deepcopy(q).requires_grad_(False)
    # The parameters (and gradients) share one flat tensor: the clip and the fused Adam step are
    # single-tensor ops, and torch.optim's per-step Python (~50 us on the CI CPU) is not paid.
    flat, flat_grad = flatten_parameters_(q)
    optimizer = FusedAdam([flat], lr=cfg.lr, grads=[flat_grad], lr_on_device=cfg.cuda_graph)
    args = (cfg.gamma, cfg.double_dqn, cfg.loss, cfg.max_grad_norm)
    if uses_manual_gradients(cfg, spec, device):
        update_fn = make_manual_update(q, q_target, optimizer, *args)
    else:
        if spec.is_image:
            q_fn, target_fn = q, q_target
        else:
            q_fn, target_fn = (lambda x: q(x.flatten(1))[0]), (lambda x: q_target(x.flatten(1))[0])
        update_fn = make_autograd_update(q_fn, target_fn, list(q.parameters()), flat_grad, optimizer, *args, dtype)
    update_fn = wrap_update(update_fn, cfg, use_compile, device)
    targets = make_target_updater([(q, q_target)], cfg.target_update, cfg.tau, cfg.target_period)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed + 1)
    eval_generator = torch.Generator(device=device)
    eval_generator.manual_seed(cfg.seed + 2)
    # The acting policy is compiled with the update (so that on CUDA its small kernels can fuse); the
    # epsilon draw stays eager, as it uses the agent's generator.
    greedy = torch.compile(make_greedy(q)) if use_compile else make_greedy(q)
    return DQN(spec, cfg, q, q_target, optimizer, targets, update_fn, generator, device, planned_updates(cfg), greedy,
               eval_generator)


def build_dqn_members(spec: EnvSpec, cfg: TrainConfig, members: list[TrainConfig], device: torch.device):
    from fastrl.dqn_members import build_dqn_members as build  # it imports this module

    return build(spec, cfg, members, device)


ALGORITHMS = (
    Algorithm("dqn", discrete=True, build=build_dqn, section=DQNSettings, reads=tuple(DQNSettings.__dataclass_fields__),
              defaults=DEFAULTS, presets=PRESETS, check_spec=check_spec,
              notes="--target-period counts gradient updates", build_members=build_dqn_members),
)
