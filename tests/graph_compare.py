"""Graphed against eager updates on real replay-buffer batches: the pieces that
tests/test_cuda_graph.py (on CPU, through a stand-in for CUDA graphs) and tests/test_cuda.py (on a
GPU) share.

The batches come from a `ReplayBuffer` filled by env steps (random frames for the image net) and
drawn by `sample_batches`, as in training: strided views of the buffer's pair rows, never the
contiguous tensors a graph's static inputs are.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from fastrl.buffer import Batch, ReplayBuffer
from fastrl.config import resolve
from fastrl.cuda_graph import GraphedUpdate, check_graph_outputs
from fastrl.envs import EnvSpec, TorchVecEnv, lookup_spec
from fastrl.registry import build_agent

# DQN's Nature CNN without an Atari env: only the spec's shapes matter to the update.
ATARI_SPEC = EnvSpec("Breakout-v5", "envpool", (4, 84, 84), torch.uint8, True, 4, (), (), (), None)
# Linear lr over 20 updates: the lr changes a lot at every update, so a graph that baked in its
# capture-time lr (instead of reading the optimizer's device tensor) would step differently.
SCHEDULE_UPDATES = 20


def small_config(algo: str, env_id: str, device: torch.device, **settings: Any):
    """One update per vector step of 2 envs; the lr annealed to 0 over SCHEDULE_UPDATES updates."""
    net = {"hidden_sizes": (64,)} if env_id == ATARI_SPEC.env_id else {"hidden_sizes": (64, 64)}
    return resolve({"algo": algo, "env": env_id, "device": device.type, "num_envs": 2, "batch_size": 32,
                    "buffer_size": 4096, "learning_starts": 0, "train_every": 1, "updates_per_train": 1,
                    "total_steps": 2 * SCHEDULE_UPDATES, "lr_schedule": "linear", **net, **settings})


def paired_agents(algo: str, env_id: str, device: torch.device, use_compile: bool = False, **settings: Any):
    """(spec, eager agent, graphed agent) with equal weights, optimizer states and generators. The
    graphed agent's config is the eager one with `cuda_graph` set (its lr lives on the device); it
    is compiled when `use_compile`, the eager one never."""
    spec = ATARI_SPEC if env_id == ATARI_SPEC.env_id else lookup_spec(env_id)
    cfg = small_config(algo, env_id, device, **settings)
    torch.manual_seed(0)
    eager = build_agent(spec, cfg, device, False)
    graphed = build_agent(spec, dataclasses.replace(cfg, cuda_graph=True), device, use_compile)
    graphed.load_state_dict(copy.deepcopy(eager.state_dict()))
    return spec, eager, graphed


def buffer_batches(spec: EnvSpec, device: torch.device, count: int, batch_size: int = 32,
                   draws_of: int = 4) -> list[Batch]:
    """`count` mini-batches, `draws_of` per `sample_batches` call, from a buffer of 4 envs filled
    with 200 random steps (its own generator: the agents' generators stay untouched)."""
    num_envs, steps = 4, 200
    gen = torch.Generator(device=device).manual_seed(7)
    buf = ReplayBuffer(2048, num_envs, spec.obs_shape, spec.obs_dtype, spec.action_shape, spec.action_dtype,
                       device, seed=3)
    envs = None if spec.is_image else TorchVecEnv(spec, num_envs, 0, device)
    obs = envs.reset() if envs else _frames(spec, num_envs, gen, device)
    for _ in range(steps):
        actions = random_actions(spec, num_envs, gen, device)
        if envs is None:
            buf.add(obs, actions, torch.rand(num_envs, generator=gen, device=device), torch.zeros(num_envs, device=device),
                    valid=[True] * num_envs)
            obs = _frames(spec, num_envs, gen, device)
            continue
        step = envs.step(actions)
        buf.add(obs, actions, step.reward, step.terminated, valid=~step.is_reset_step)
        obs = step.next_obs
    if envs is not None:
        envs.close()
    return [b for _ in range(count // draws_of) for b in buf.sample_batches(draws_of, batch_size)]


def random_actions(spec: EnvSpec, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    if spec.discrete:
        return torch.randint(0, spec.num_actions, (n,), generator=gen, device=device)
    low = torch.tensor(spec.action_low, device=device)
    high = torch.tensor(spec.action_high, device=device)
    return low + (high - low) * torch.rand((n, low.numel()), generator=gen, device=device)


def _frames(spec: EnvSpec, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randint(0, 256, (n, *spec.obs_shape), generator=gen, device=device, dtype=torch.uint8)


def assert_updates_match(eager: Any, graphed: Any, batches: list[Batch], rtol: float, atol: float) -> None:
    """Every update's metrics, then every tensor of the agents' states (weights, targets, Adam)."""
    for i, batch in enumerate(batches):
        m_eager, m_graphed = eager.update(batch), graphed.update(batch)
        assert m_graphed.keys() == m_eager.keys()
        for name, value in m_eager.items():
            torch.testing.assert_close(m_graphed[name], value, rtol=rtol, atol=atol,
                                       msg=lambda m, i=i, name=name: f"update {i}, {name}: {m}")
    state_e, state_g = eager.state_dict(), graphed.state_dict()
    for part in state_e:
        if part == "generator":
            continue
        for e, g in zip(tree_leaves(state_e[part]), tree_leaves(state_g[part]), strict=True):
            if isinstance(e, torch.Tensor):
                torch.testing.assert_close(g, e, rtol=rtol, atol=atol, msg=lambda m, part=part: f"{part}: {m}")
            else:
                assert g == e, part


class ReplayByCalling:
    """A stand-in for CUDA graphs (a `GraphStrategy`), for CPU tests: warm-up calls the function;
    capture only keeps it, as a graph records without running; each replay calls it and writes its
    outputs into the tensors the first replay returned, as a graph overwrites its static outputs."""

    def __init__(self) -> None:
        self.warmups = 0
        self.captures = 0
        self.replays = 0

    def warm_up(self, fn: Callable[[], Any]) -> Any:
        self.warmups += 1
        return fn()

    def capture(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        self.captures += 1
        static: list[Any] = []

        def replay() -> Any:
            self.replays += 1
            fresh = fn()
            check_graph_outputs(fresh)
            if not static:
                static.append(fresh)
            else:
                for mine, new in zip(tree_leaves(static[0]), tree_leaves(fresh), strict=True):
                    mine.copy_(new)
            return static[0]

        return replay


def graph_through(agent: Any, graphs: Any) -> None:
    """Give `agent`'s GraphedUpdate the strategy `graphs` (off CUDA it has none)."""
    inner = agent.update_fn.update_fn if isinstance(agent.update_fn, GraphedUpdate) else agent.update_fn
    agent.update_fn = GraphedUpdate(inner, agent.device, graphs=graphs)
