"""The CUDA paths: run where a GPU exists, skipped cleanly elsewhere (no GPU on CI)."""

import numpy as np
import pytest
import torch

from fastrl.buffer import ReplayBuffer
from tests.graph_compare import assert_updates_match, buffer_batches, paired_agents

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


@pytest.mark.parametrize("algo,env_id", [("td3", "Pendulum-v1"), ("dqn", "CartPole-v1")])
def test_graph_captured_update_equals_eager(cuda_device, cold_compile, algo, env_id):
    """--compile --cuda-graph, as a first run on a fresh machine meets it (cold compile cache):
    the compiled update warms up and is captured on its static inputs (a recompile inside the
    capture would break it), then replays; on strided buffer batches, with the lr changing every
    update and TD3 alternating critic-only and actor updates, it gives the eager update's metrics
    and states."""
    spec, eager, graphed = paired_agents(algo, env_id, cuda_device, use_compile=True)
    assert graphed.update_fn.enabled
    assert_updates_match(eager, graphed, buffer_batches(spec, cuda_device, 16), rtol=1e-4, atol=1e-5)
    assert graphed.update_fn.graphs_captured == (2 if algo == "td3" else 1)
