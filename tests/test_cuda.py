"""The CUDA paths: run where a GPU exists, skipped cleanly elsewhere (no GPU on CI)."""

import copy

import numpy as np
import pytest
import torch

from fastrl.buffer import ReplayBuffer
from fastrl.config import resolve
from fastrl.dqn import build_dqn
from fastrl.envs import lookup_spec, TorchVecEnv

pytestmark = pytest.mark.cuda


def test_device_buffer_matches_the_cpu_buffer(cuda_device):
    bufs = [ReplayBuffer(64, 4, (3,), torch.float32, (), torch.int64, device, seed=0)
            for device in ("cpu", cuda_device)]
    rng = np.random.default_rng(0)
    for t in range(40):
        valid = rng.random(4) > 0.2
        for buf in bufs:
            d = buf.device
            buf.add(torch.full((4, 3), float(t), device=d), torch.arange(4, device=d), torch.full((4,), t + 0.5, device=d),
                    torch.zeros(4, device=d), valid)
    cpu, gpu = bufs
    assert len(cpu) == len(gpu)
    assert torch.equal(cpu.sampleable_rows(), gpu.sampleable_rows().cpu())
    rows = cpu.sampleable_rows()
    a, b = cpu.gather(rows), gpu.gather(rows.to(cuda_device))
    for name in ("obs", "actions", "rewards", "next_obs", "terminated"):
        assert torch.equal(getattr(a, name), getattr(b, name).cpu()), name


def test_graph_captured_update_equals_eager(cuda_device):
    spec = lookup_spec("CartPole-v1")
    cfg = resolve({"hidden_sizes": (64, 64)})
    torch.manual_seed(0)
    eager = build_dqn(spec, cfg, cuda_device, use_compile=False)
    graphed = build_dqn(spec, cfg, cuda_device, use_compile=True)
    graphed.q.load_state_dict(eager.q.state_dict())
    graphed.q_target.load_state_dict(eager.q_target.state_dict())
    buf = ReplayBuffer(4096, 8, spec.obs_shape, spec.obs_dtype, (), torch.int64, cuda_device)
    envs = TorchVecEnv(spec, 8, 0, cuda_device)
    obs = envs.reset()
    for _ in range(200):
        actions = eager.random_actions(8)
        step = envs.step(actions)
        buf.add(obs, actions, step.reward, step.terminated, ~step.is_reset_step)
        obs = step.next_obs
    for batch in buf.sample(20, 64).unbind():
        m_e, m_g = eager.update(copy.copy(batch)), graphed.update(batch)
        torch.testing.assert_close(m_e["loss"], m_g["loss"], rtol=1e-4, atol=1e-5)
    for a, b in zip(eager.q.parameters(), graphed.q.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
