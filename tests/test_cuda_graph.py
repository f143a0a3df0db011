"""`--cuda-graph`: what can be checked on CPU here (the device-tensor lr, the setting's checks,
the CPU pass-through), and graphed-against-eager updates where a GPU exists (skipped elsewhere)."""

import copy

import pytest
import torch

from fastrl.buffer import Batch
from fastrl.config import ConfigError, resolve
from fastrl.cuda_graph import GraphedUpdate
from fastrl.envs import lookup_spec
from fastrl.fused_adam import FusedAdam
from fastrl.registry import build_agent
from fastrl.train import check_setup


def _adam_pair(lr: float) -> tuple[FusedAdam, FusedAdam, list[torch.Tensor]]:
    torch.manual_seed(0)
    grads = [torch.randn(5, 3), torch.randn(7)]
    opts = []
    for on_device in (False, True):
        params = [torch.randn(5, 3, generator=torch.Generator().manual_seed(1)),
                  torch.randn(7, generator=torch.Generator().manual_seed(2))]
        opts.append(FusedAdam(params, lr=lr, grads=grads, lr_on_device=on_device))
    return opts[0], opts[1], grads


def test_device_tensor_lr_steps_exactly_like_the_float_lr_through_schedule_changes():
    plain, on_device, _ = _adam_pair(1e-2)
    for lr in (1e-2, 1e-2, 5e-3, 2.5e-3, 0.0, 1e-3):
        plain.lr = on_device.lr = lr
        plain.step()
        on_device.step()
        assert on_device.lr == lr and float(on_device._lr_tensor) == pytest.approx(lr)
    for a, b in zip(plain.params, on_device.params):
        assert torch.equal(a, b)
    assert not torch.equal(plain.params[0], torch.randn(5, 3, generator=torch.Generator().manual_seed(1)))


def test_the_device_lr_comes_back_from_a_checkpoint():
    _, opt, _ = _adam_pair(1e-2)
    state = copy.deepcopy(opt.state_dict())
    opt.lr = 7e-4
    opt.load_state_dict(state)
    assert opt.lr == 1e-2 and float(opt._lr_tensor) == pytest.approx(1e-2)


def test_cuda_graph_on_a_cpu_device_is_bad_input():
    cfg = resolve({"device": "cpu", "cuda_graph": True})
    with pytest.raises(ConfigError, match="--cuda-graph: needs a CUDA device"):
        check_setup(cfg)


def test_off_cuda_the_wrapper_calls_the_update_itself():
    calls = []
    graphed = GraphedUpdate(lambda x, flag: calls.append((x, flag)) or x * 2, torch.device("cpu"))
    for i in range(6):
        assert torch.equal(graphed(torch.tensor(float(i)), True), torch.tensor(2.0 * i))
    assert len(calls) == 6 and graphed.graphs_captured == 0


# --- on a GPU ---

def _agents(algo: str, env_id: str, device: torch.device, **settings):
    spec = lookup_spec(env_id)
    cfg = resolve({"algo": algo, "env": env_id, "device": "cuda", "hidden_sizes": (64, 64), "batch_size": 64,
                   "lr_schedule": "linear", "total_steps": 2_000, "learning_starts": 0, **settings})
    torch.manual_seed(0)
    eager = build_agent(spec, cfg, device, False)
    graphed = build_agent(spec, resolve({**cfg.to_json(), "cuda_graph": True}), device, False)
    graphed.load_state_dict(copy.deepcopy(eager.state_dict()))
    return spec, eager, graphed


def _random_batches(spec, n: int, batch_size: int, device: torch.device) -> list[Batch]:
    from benchmarks.common import random_batch

    return [random_batch(spec, batch_size, device, seed=i) for i in range(n)]


@pytest.mark.cuda
@pytest.mark.parametrize("algo,env_id", [("dqn", "CartPole-v1"), ("td3", "Pendulum-v1"), ("ddpg", "Pendulum-v1")])
def test_graphed_updates_equal_eager_ones(cuda_device, algo, env_id):
    """Warm-up calls, capture, then replays (TD3: one graph with and one without the actor step),
    with the lr changing every update (linear schedule): the same metrics and weights as eager."""
    spec, eager, graphed = _agents(algo, env_id, cuda_device)
    for batch in _random_batches(spec, 16, 64, cuda_device):
        m_eager, m_graphed = eager.update(batch), graphed.update(batch)
        for name in ("loss", "mean_q", "grad_norm"):
            torch.testing.assert_close(m_graphed[name], m_eager[name], rtol=1e-4, atol=1e-5)
    assert graphed.update_fn.graphs_captured == (2 if algo == "td3" else 1)
    state_e, state_g = eager.state_dict(), graphed.state_dict()
    for net in ("q", "q_target") if algo == "dqn" else ("actor", "critic", "actor_target", "critic_target"):
        for key, value in state_e[net].items():
            torch.testing.assert_close(state_g[net][key], value, rtol=1e-4, atol=1e-5)
