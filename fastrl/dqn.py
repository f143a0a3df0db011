"""DQN (with the Double DQN switch): the loss as pure functions, the update as one function.

`make_update` returns `update(obs, actions, rewards, next_obs, terminated) -> (loss, mean_q,
grad_norm)`: forward, loss, backward, clip, optimizer step. It holds no Python branch on tensor
values, so `torch.compile` can take it whole.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastrl.buffer import Batch
from fastrl.config import TrainConfig
from fastrl.envs import EnvSpec
from fastrl.networks import q_network
from fastrl.schedules import learning_rate, linear
from fastrl.targets import TargetUpdater, make_target_updater


def td_target(rewards: torch.Tensor, terminated: torch.Tensor, next_q_target: torch.Tensor,
              next_q_online: torch.Tensor | None, gamma: float) -> torch.Tensor:
    """r + γ (1 − terminated) Q⁻(s', a*). Truncation is not termination: a time-limit cut still
    bootstraps. With `next_q_online` (Double DQN), a* = argmax Q(s', ·), else argmax Q⁻(s', ·)."""
    if next_q_online is None:
        next_value = next_q_target.max(dim=-1).values
    else:
        best = next_q_online.argmax(dim=-1, keepdim=True)
        next_value = next_q_target.gather(-1, best).squeeze(-1)
    return rewards + gamma * (1.0 - terminated) * next_value


def td_loss(q_taken: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "huber":
        return F.smooth_l1_loss(q_taken, target)
    return F.mse_loss(q_taken, target)


UpdateFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def make_update(q: nn.Module, q_target: nn.Module, optimizer: torch.optim.Optimizer, gamma: float,
                double: bool, loss_kind: str, max_grad_norm: float) -> UpdateFn:
    params = [p for p in q.parameters()]

    def update(obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, next_obs: torch.Tensor,
               terminated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            next_q_target = q_target(next_obs)
            # Double DQN picks a* with the online net; no gradient flows through that choice.
            next_q_online = q(next_obs) if double else None
        q_all = q(obs)
        target = td_target(rewards, terminated, next_q_target, next_q_online, gamma)
        q_taken = q_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        loss = td_loss(q_taken, target, loss_kind)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))
        optimizer.step()
        return loss.detach(), q_taken.detach().mean(), grad_norm.detach()

    return update


@dataclass
class DQN:
    spec: EnvSpec
    cfg: TrainConfig
    q: nn.Module
    q_target: nn.Module
    optimizer: torch.optim.Optimizer
    targets: TargetUpdater
    update_fn: UpdateFn
    generator: torch.Generator  # exploration randomness, on the device
    device: torch.device
    total_updates: int
    updates_done: int = 0

    # --- acting ---
    def epsilon(self, env_step: int) -> float:
        return linear(self.cfg.eps_start, self.cfg.eps_end, self.cfg.eps_fraction * self.cfg.total_steps, env_step)

    def exploration(self, env_step: int) -> dict[str, float]:
        return {"epsilon": self.epsilon(env_step)}

    @torch.no_grad()
    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        return self.q(obs).argmax(dim=-1)

    def random_actions(self, n: int) -> torch.Tensor:
        return torch.randint(0, self.spec.num_actions, (n,), generator=self.generator, device=self.device)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, env_step: int) -> torch.Tensor:
        greedy = self.greedy(obs)
        explore = torch.rand(greedy.shape, generator=self.generator, device=greedy.device) < self.epsilon(env_step)
        return torch.where(explore, self.random_actions(greedy.shape[0]), greedy)

    # --- learning ---
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        lr = learning_rate(self.cfg.lr_schedule, self.cfg.lr, self.updates_done, self.total_updates,
                           end_fraction=self.cfg.lr_end_fraction, k0=self.cfg.lr_k0, power=self.cfg.lr_power)
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        loss, mean_q, grad_norm = self.update_fn(batch.obs, batch.actions, batch.rewards, batch.next_obs,
                                                 batch.terminated)
        self.updates_done += 1
        self.targets.step(self.updates_done)
        return {"loss": loss, "mean_q": mean_q, "grad_norm": grad_norm}

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # --- checkpointing ---
    def state_dict(self) -> dict:
        return {"q": self.q.state_dict(), "q_target": self.q_target.state_dict(),
                "optimizer": self.optimizer.state_dict(), "updates_done": self.updates_done,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.q.load_state_dict(state["q"])
        self.q_target.load_state_dict(state["q_target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates_done = int(state["updates_done"])
        self.generator.set_state(state["generator"])

    def policy_module(self) -> nn.Module:
        return self.q


def total_updates(cfg: TrainConfig) -> int:
    train_steps = max(cfg.num_vector_steps - cfg.learning_starts // cfg.num_envs, 0)
    return max(train_steps // cfg.train_every * cfg.updates_per_train, 1)


def build_dqn(spec: EnvSpec, cfg: TrainConfig, device: torch.device, use_compile: bool) -> DQN:
    q = q_network(spec.obs_shape, spec.is_image, cfg.hidden_sizes, spec.num_actions).to(device)
    q_target = copy.deepcopy(q).requires_grad_(False)
    cuda = device.type == "cuda"
    # Fused Adam: one kernel for all parameters (3x faster than foreach on the CI CPU). On CUDA the lr
    # lives in a device tensor and the step is capturable, so the compiled update can be replayed
    # as a CUDA graph ("reduce-overhead") while the schedule changes the lr between replays.
    lr = torch.tensor(cfg.lr, device=device) if cuda else cfg.lr
    optimizer = torch.optim.Adam(q.parameters(), lr=lr, fused=True, capturable=cuda)
    update_fn = make_update(q, q_target, optimizer, cfg.gamma, cfg.double_dqn, cfg.loss, cfg.max_grad_norm)
    if use_compile:
        update_fn = torch.compile(update_fn, mode="reduce-overhead" if cuda else None)
    targets = make_target_updater([(q, q_target)], cfg.target_update, cfg.tau, cfg.target_period)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed + 1)
    return DQN(spec, cfg, q, q_target, optimizer, targets, update_fn, generator, device, total_updates(cfg))
