"""A trained policy, loaded from a run folder, that acts without building the env.

    policy = fastrl.load_policy("runs/CartPole-v1-dqn-1-...")
    action = policy.act(obs)          # one observation, as the env returned it
    actions = policy.act(batch)       # or a batch [N, *obs_shape]

The checkpoint holds the agent's weights, the run's settings and the env's spec (observation shape
and dtype, action space), so nothing but torch is needed to act. It is read with
`torch.load(weights_only=True)`: loading a run folder runs no code from it.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastrl.algorithm import Agent
from fastrl.checkpoint import load_run_checkpoint, spec_from_payload
from fastrl.config import TrainConfig, config_from_checkpoint, resolve_device
from fastrl.envs import OBS_CHANNEL_LAST, OBS_NO_CHANNEL, EnvSpec, lookup_spec
from fastrl.members import member_configs, plan_members
from fastrl.settings import ConfigError
from fastrl.registry import build_agent


@dataclass
class Policy:
    """The agent of a checkpoint, for acting. `act` takes what the env gives and returns what the
    env takes; `greedy` is the raw evaluation callable (a torch batch on `device` in, actions out),
    the one `fastrl.evaluate.evaluate_policy` and the trainer use."""

    spec: EnvSpec
    config: TrainConfig
    agent: Agent
    device: torch.device
    env_step: int  # where the run was when the checkpoint was written

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        return self.agent.greedy(obs)

    @property
    def obs_shape(self) -> tuple[int, ...]:
        """The shape of one observation as the env gives it (`spec.obs_shape` is the learner's:
        images channel-first)."""
        shape = self.spec.obs_shape
        if self.spec.obs_layout == OBS_CHANNEL_LAST:
            return (*shape[1:], shape[0])
        if self.spec.obs_layout == OBS_NO_CHANNEL:
            return shape[1:]
        return shape

    @torch.no_grad()
    def act(self, obs: Any, deterministic: bool = True) -> Any:
        """Actions for one observation (of shape `obs_shape`, as the env gives it) or a batch of
        them ([N, *obs_shape]).

        numpy (or anything `np.asarray` takes) in, numpy out; a torch tensor in, a tensor out on
        its device. Discrete actions are integers; continuous ones lie in the action box.
        `deterministic=False` explores as in training: DQN's epsilon at the end of its schedule,
        DDPG/TD3's Gaussian noise."""
        as_torch = isinstance(obs, torch.Tensor)
        x = obs if as_torch else torch.from_numpy(np.asarray(obs))
        shape, obs_shape = tuple(x.shape), self.obs_shape
        single = shape == obs_shape
        if not single and shape[1:] != obs_shape:
            raise ValueError(f"act: observations of shape {shape}; this policy takes one of shape {obs_shape} "
                             f"or a batch of shape (N, {', '.join(map(str, obs_shape))})")
        x = x.to(self.device, self.spec.obs_dtype)
        if single:
            x = x.unsqueeze(0)
        if self.spec.obs_layout == OBS_CHANNEL_LAST:  # as fastrl.envs hands them to the learner
            x = x.permute(0, 3, 1, 2)
        elif self.spec.obs_layout == OBS_NO_CHANNEL:
            x = x.unsqueeze(1)
        # The end of the exploration schedule (DQN's final epsilon): the policy's own exploration.
        actions = self.agent.greedy(x) if deterministic else self.agent.act(x, self.config.total_steps)
        actions = self._in_action_space(actions)
        if as_torch:
            return (actions[0] if single else actions).to(obs.device)
        out = actions.cpu().numpy()
        return out[0] if single else out  # one discrete action: a numpy integer, as env.step takes

    def _in_action_space(self, actions: torch.Tensor) -> torch.Tensor:
        if self.spec.discrete:
            return actions.long()
        low = torch.tensor(self.spec.action_low, dtype=torch.float32, device=actions.device)
        high = torch.tensor(self.spec.action_high, dtype=torch.float32, device=actions.device)
        shape = self.spec.action_shape
        return actions.float().clamp(low.reshape(shape), high.reshape(shape))


def load_policy(run_dir: str | Path, device: str | torch.device = "cpu", member: int | None = None) -> Policy:
    """The policy saved in `run_dir`'s checkpoint, on `device` ("cpu", "cuda", "auto" or a
    torch.device). Raises `fastrl.ConfigError` for a folder without a readable checkpoint. A run of
    stacked members (`--num-seeds`, `--sweep`) needs `member`: the member's own single agent."""
    return policy_from_checkpoint(load_run_checkpoint(run_dir, flag="run_dir"), device, "run_dir", member)


def policy_from_checkpoint(state: dict[str, Any], device: str | torch.device, flag: str,
                           member: int | None = None) -> Policy:
    """`state` as `fastrl.checkpoint.load_run_checkpoint` returns it; `flag` names the run folder
    in errors; `member`: which member of a stacked run."""
    cfg = config_from_checkpoint(state["config"], flag)
    members = plan_members(cfg)
    if members is not None or member is not None:
        cfg, state = member_of(cfg, state, members, member, flag)
    if "env_spec" in state:
        spec = spec_from_payload(state["env_spec"], flag)
    else:
        warnings.warn(f"{flag}: this checkpoint predates saved env specs; taking {cfg.env}'s spec from "
                      f"the env as fastrl finds it now", UserWarning, stacklevel=3)
        spec = lookup_spec(cfg.env)
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    # Acting needs neither compilation nor CUDA graphs (which are for the update).
    agent = build_agent(spec, dataclasses.replace(cfg, cuda_graph=False), device, False)
    agent_state = dict(state["agent"])
    if agent_state.pop("member_only", False):  # one member's nets: the rest as the fresh agent has it,
        fresh = agent.state_dict()  # a net's entries that are not per member (an actor's action box) too
        agent_state = {**fresh, **{k: {**fresh[k], **v} if isinstance(v, dict) else v for k, v in agent_state.items()}}
    if "generator" in agent_state:  # its state is device-specific: act() explores from a fresh, seeded one
        agent_state["generator"] = agent.generator.get_state()
    agent.load_state_dict(agent_state)
    return Policy(spec, cfg, agent, device, int(state["counters"]["env_step"]))


# A stacked agent's checkpoint says how its single agent holds each stacked net: {name: (key prefix,
# rows per member)}. DQN's say nothing: its one-row Q-nets are keyed as the single agent's.
DQN_MEMBER_NETS = {"q": ("", 1), "q_target": ("", 1)}


def member_of(cfg: TrainConfig, state: dict[str, Any], members: list | None, member: int | None,
              flag: str) -> tuple[TrainConfig, dict[str, Any]]:
    """The config and a single-agent checkpoint of one member of a stacked run: its slices of the
    stacked nets (acting needs no optimizer state, which is left as a fresh agent has it)."""
    count = len(members) if members is not None else 1
    if member is None or not 0 <= member < count or members is None:
        what = "" if members is None else f" (this run trained {count} members: 0..{count - 1})"
        raise ConfigError(f"{'--member' if flag == 'RUN_DIR' else 'member'}: choose a member of a stacked "
                          f"run{what}, got {member}")
    one = dataclasses.replace(member_configs(cfg, members)[member], num_seeds=1, sweep=())
    agent_state = state["agent"]
    nets = {name: {prefix + k: v[member * rows:(member + 1) * rows] for k, v in agent_state[name].items()}
            for name, (prefix, rows) in agent_state.get("member_nets", DQN_MEMBER_NETS).items()}
    return one, {**state, "agent": {**nets, "member_only": True, "updates_done": agent_state["updates_done"]}}
