import pytest
import torch

from tests.counter_env import register

register()


@pytest.fixture
def cuda_device():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")


@pytest.fixture
def cold_compile():
    """torch.compile as on a fresh machine: no FX-graph cache to hit (a hit takes another path,
    which hid a guard-building crash that every cold compile met), and dynamo's caches reset."""
    torch._dynamo.reset()
    with torch._inductor.config.patch(fx_graph_cache=False):
        yield
    torch._dynamo.reset()
