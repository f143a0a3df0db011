"""DQN's ε-greedy exploration: ε follows the linear schedule (start -> end over fraction x total
steps, then end), and `act()` plays a uniformly random action at rate ε (statistical, seeded)."""

import math

import pytest
import torch

from fastrl.config import resolve
from fastrl.dqn import build_dqn
from fastrl.envs import EnvSpec

NUM_ACTIONS = 6
SPEC = EnvSpec("Test-v0", "gymnasium", (4,), torch.float32, True, NUM_ACTIONS, (), (), (), None)
SETTINGS = dict(algo="dqn", env="Test-v0", total_steps=10_000, eps_start=0.9, eps_end=0.1, eps_fraction=0.4,
                hidden_sizes=(8,), seed=3)


def _agent():
    torch.manual_seed(0)  # the Q-net's initial weights; exploration draws from the agent's own generator
    return build_dqn(SPEC, resolve(SETTINGS), torch.device("cpu"), False)


@pytest.mark.parametrize("step,expected", [
    (0, 0.9), (1000, 0.7), (2000, 0.5), (3999, 0.1 + 0.8 / 4000), (4000, 0.1), (9999, 0.1), (50_000, 0.1),
])
def test_epsilon_follows_the_linear_schedule(step, expected):
    assert _agent().epsilon(step) == pytest.approx(expected, abs=1e-12)
    assert _agent().exploration(step) == {"epsilon": pytest.approx(expected, abs=1e-12)}


def one_state(n: int = 40_000) -> torch.Tensor:
    """n rows of one observation: one greedy action."""
    return torch.randn(1, 4, generator=torch.Generator().manual_seed(5)).expand(n, 4).contiguous()


def assert_epsilon_greedy(actions: torch.Tensor, greedy: int, eps: float, num_actions: int) -> None:
    """Actions played in one state: each drawn with probability eps / A, the greedy one also with
    1 - eps (within 5 sigma)."""
    n = len(actions)
    counts = torch.bincount(actions, minlength=num_actions).double()
    p = torch.full((num_actions,), eps / num_actions, dtype=torch.float64)
    p[greedy] += 1 - eps
    sigma = torch.sqrt(n * p * (1 - p))
    assert torch.all((counts - n * p).abs() <= 5 * sigma), (counts, n * p)
    non_greedy = 1 - counts[greedy] / n
    expected = eps * (num_actions - 1) / num_actions
    assert abs(non_greedy - expected) <= 5 * math.sqrt(expected * (1 - expected) / n)


@pytest.mark.parametrize("step", [0, 2000, 4000])
def test_act_explores_uniformly_at_rate_epsilon(step):
    agent = _agent()
    obs = one_state()
    greedy = int(agent.greedy(obs[:1])[0])
    assert_epsilon_greedy(agent.act(obs, step), greedy, agent.epsilon(step), NUM_ACTIONS)


def test_exploration_is_seeded():
    obs = torch.randn(512, 4)
    assert torch.equal(_agent().act(obs, 1000), _agent().act(obs, 1000))
    torch.manual_seed(0)
    other_seed = build_dqn(SPEC, resolve({**SETTINGS, "seed": 4}), torch.device("cpu"), False)
    assert not torch.equal(other_seed.act(obs, 1000), _agent().act(obs, 1000))
