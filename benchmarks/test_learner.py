"""One learner update (`agent.update(batch)`: forward, loss, backward, clip, optimizer step,
target update) by batch size, eager and `torch.compile`d.

Fair comparison: eager and compiled build the same network from the same seed and train on the
same mini-batch; compilation (and any recompile) happens in warm-up calls that are not timed.
Compiling takes ~10-20 s per function on a small CPU, so compiled runs cover two batch sizes.
TD3 averages critic-only and critic+actor updates (policy delay 2), as training does.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import needs_algo, random_batch, synchronized
from fastrl.config import resolve
from fastrl.cuda_graph import WARMUP_CALLS
from fastrl.envs import lookup_spec

TASKS = {"dqn": "CartPole-v1", "td3": "Pendulum-v1"}
EAGER_BATCHES = [32, 128, 512, 2048, 8192]
COMPILED_BATCHES = [128, 2048]
COMPILE_WARMUP_CALLS = 5
GRAPH_WARMUP_CALLS = WARMUP_CALLS + 2


def build_agent(algo: str, batch_size: int, device: torch.device, use_compile: bool, cuda_graph: bool = False,
                env_id: str | None = None):
    from fastrl.registry import build_agent as build

    # Constant lr: a decayed-to-zero lr would still cost the same, but say what is measured.
    cfg = resolve({"algo": algo, "env": env_id or TASKS[algo], "batch_size": batch_size, "device": device.type,
                   "lr_schedule": "constant", "compile": use_compile, "cuda_graph": cuda_graph})
    spec = lookup_spec(cfg.env)
    torch.manual_seed(cfg.seed)
    return build(spec, cfg, device, use_compile), spec


def run_update_benchmark(benchmark, algo: str, batch_size: int, device: torch.device, use_compile: bool,
                         cuda_graph: bool = False, env_id: str | None = None) -> None:
    needs_algo(algo)
    mode = "graphed" if cuda_graph else "compiled" if use_compile else "eager"
    env_id = env_id or TASKS[algo]
    benchmark.group = f"learner-{algo}-{env_id}-{device.type}"
    agent, spec = build_agent(algo, batch_size, device, use_compile, cuda_graph, env_id)
    batch = random_batch(spec, batch_size, device, seed=0)
    update = synchronized(agent.update, device)
    # Warm-up past compilation and, graphed, past capture (TD3 captures two graphs).
    for _ in range(2 * GRAPH_WARMUP_CALLS if cuda_graph else COMPILE_WARMUP_CALLS if use_compile else 2):
        update(batch)
    benchmark.extra_info.update({"batch_size": batch_size, "mode": mode, "env": env_id})
    benchmark(update, batch)


@pytest.mark.parametrize("batch_size", EAGER_BATCHES)
@pytest.mark.parametrize("algo", list(TASKS))
def test_update_eager(benchmark, device, algo, batch_size):
    run_update_benchmark(benchmark, algo, batch_size, device, use_compile=False)


@pytest.mark.parametrize("batch_size", COMPILED_BATCHES)
@pytest.mark.parametrize("algo", list(TASKS))
def test_update_compiled(benchmark, device, algo, batch_size):
    run_update_benchmark(benchmark, algo, batch_size, device, use_compile=True)


@pytest.mark.cuda
@pytest.mark.parametrize("batch_size", [32, 256, 2048])
@pytest.mark.parametrize("algo", list(TASKS))
def test_update_cuda_graph(benchmark, algo, batch_size):
    if not torch.cuda.is_available():
        pytest.skip("CUDA graphs need a CUDA device")
    run_update_benchmark(benchmark, algo, batch_size, torch.device("cuda"), use_compile=False, cuda_graph=True)


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["eager", "graphed"])
def test_update_nature_cnn_batch_32(benchmark, device, cuda_graph):
    """DQN's Nature CNN on Atari frames (4x84x84 uint8) at batch 32."""
    if cuda_graph and device.type != "cuda":
        pytest.skip("CUDA graphs need a CUDA device")
    run_update_benchmark(benchmark, "dqn", 32, device, use_compile=False, cuda_graph=cuda_graph,
                         env_id="Breakout-v5")
