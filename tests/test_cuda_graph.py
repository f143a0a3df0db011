"""`--cuda-graph`: what can be checked on CPU (the device-tensor lr, the setting's checks, the CPU
pass-through, and GraphedUpdate's bookkeeping through a stand-in for CUDA graphs that calls the
function at each replay, real agents included), and graphed-against-eager updates where a GPU
exists (skipped elsewhere)."""

import copy
import dataclasses

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from fastrl.config import ConfigError, resolve
from fastrl.cuda_graph import WARMUP_CALLS, GraphedUpdate, check_graph_outputs, graph_key
from fastrl.fused_adam import FusedAdam
from fastrl.train import check_setup
from tests.graph_compare import (
    ReplayByCalling, assert_updates_match, buffer_batches, graph_through, paired_agents, small_config,
)


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
    assert len(calls) == 6 and graphed.graphs_captured == 0 and not graphed.enabled


# --- GraphedUpdate's bookkeeping, through ReplayByCalling ---

def _strided_args(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views of one row block, as a buffer gather gives them: neither is contiguous."""
    rows = torch.arange(48.0).reshape(8, 6) * (step + 1)
    x, _, y = rows.split_with_sizes([2, 1, 3], dim=-1)
    assert not x.is_contiguous() and not y.is_contiguous()
    return x, y


def test_warm_up_and_replay_see_only_the_static_inputs_which_every_call_refills():
    seen = []
    state = torch.zeros(())

    def update(x, y, scale):
        seen.append((x.data_ptr(), y.data_ptr(), x.is_contiguous() and y.is_contiguous()))
        state.add_(1.0)  # state kept across calls, like the Adam step count
        return {"sum": (x.sum() + y.sum()) * scale + state, "x_max": x.amax()}

    graphs = ReplayByCalling()
    graphed = GraphedUpdate(update, torch.device("cpu"), graphs=graphs)
    outs = []
    for step in range(WARMUP_CALLS + 4):
        x, y = _strided_args(step)
        out = graphed(x, y, 2.0)
        expected_sum = (x.sum() + y.sum()) * 2.0 + (step + 1)
        assert torch.equal(out["sum"], expected_sum) and torch.equal(out["x_max"], x.amax()), step
        assert all(p not in (x.data_ptr(), y.data_ptr()) for p in seen[-1][:2])  # copies, never the args
        outs.append(out)
    assert len(set(seen)) == 1 and seen[0][2], "every call must see the same contiguous static tensors"
    assert (graphs.warmups, graphs.captures, graphs.replays) == (WARMUP_CALLS, 1, 4)
    replayed = outs[WARMUP_CALLS:]
    assert all(o is replayed[0] for o in replayed)  # static outputs, overwritten by each replay
    assert graphed.graphs_captured == 1 and state.item() == WARMUP_CALLS + 4


def test_graphs_are_keyed_by_shape_dtype_and_the_other_arguments():
    x32, x64, x_long = torch.ones(4), torch.ones(4, dtype=torch.float64), torch.ones(5)
    assert len({graph_key(a) for a in [(x32, True), (x64, True), (x_long, True), (x32, False), (x32, None),
                                       (x32, 1), (x32, x32)]}) == 7
    assert graph_key((x32, True)) == graph_key((torch.zeros(4), True))  # values do not key a graph
    graphs = ReplayByCalling()
    graphed = GraphedUpdate(lambda x, flag: x.sum() * (2.0 if flag else 1.0), torch.device("cpu"), graphs=graphs)
    for step in range(WARMUP_CALLS + 1):
        for x, flag in [(x32, True), (x32, False), (x64, True), (x_long, True)]:
            assert graphed(x * step, flag).item() == (x * step).sum().item() * (2.0 if flag else 1.0)
    assert graphed.graphs_captured == 4 and graphs.warmups == 4 * WARMUP_CALLS and graphs.replays == 4


def test_a_compiled_update_compiles_in_warm_up_and_never_again():
    """The capture bug: had the warm-up seen the strided batch and the capture a contiguous copy,
    the compiled function would recompile at capture (which breaks it on CUDA). Here every call
    after the warm-up, replays included, reuses the compiled code: no new frame is compiled."""
    counter = CompileCounter()
    compiled = torch.compile(lambda x, y, flag: (x * 2.0).sum() + (y.sum() if flag else 0.0), backend=counter)
    graphed = GraphedUpdate(compiled, torch.device("cpu"), graphs=ReplayByCalling())
    for step in range(WARMUP_CALLS):
        for flag in (True, False):
            graphed(*_strided_args(step), flag)
    after_warm_up = counter.frame_count
    assert after_warm_up >= 2  # one per flag value
    for step in range(4):
        for flag in (True, False):
            x, y = _strided_args(step)
            assert torch.allclose(graphed(x, y, flag), (x * 2.0).sum() + (y.sum() if flag else 0.0))
    assert counter.frame_count == after_warm_up and graphed.graphs_captured == 2


def test_graph_outputs_must_be_tensors():
    check_graph_outputs((torch.zeros(()), torch.ones(2)))
    check_graph_outputs({"loss": torch.zeros(()), "nested": [torch.ones(1)]})
    with pytest.raises(TypeError, match="float beside its tensors"):
        check_graph_outputs({"loss": torch.zeros(()), "lr": 1e-3})


def test_the_graphed_config_differs_from_the_eager_one_in_cuda_graph_only():
    """The GPU tests once built theirs with resolve({**cfg.to_json(), "cuda_graph": True}), which
    every algorithm refuses (to_json carries the other algorithms' settings too)."""
    for algo, env_id in [("dqn", "CartPole-v1"), ("td3", "Pendulum-v1"), ("ddpg", "Pendulum-v1")]:
        cfg = small_config(algo, env_id, torch.device("cpu"))
        graphed = dataclasses.replace(cfg, cuda_graph=True)
        assert {k for k, v in cfg.to_json().items() if graphed.to_json()[k] != v} == {"cuda_graph"}
        with pytest.raises(ConfigError):
            resolve({**cfg.to_json(), "cuda_graph": True})


@pytest.mark.parametrize("algo,env_id", [("dqn", "CartPole-v1"), ("td3", "Pendulum-v1"), ("ddpg", "Pendulum-v1"),
                                         ("dqn", "Breakout-v5")])
def test_real_updates_through_the_stand_in_graph_equal_eager_ones(algo, env_id):
    """The trainer's agents on strided buffer batches, graphed through ReplayByCalling: warm-up,
    capture and replays (TD3: one graph with and one without the actor step) give the eager
    metrics and states."""
    device = torch.device("cpu")
    spec, eager, graphed = paired_agents(algo, env_id, device)
    graphs = ReplayByCalling()
    graph_through(graphed, graphs)
    count = 8 if spec.is_image else 16
    # The CNN's convolutions sum in another order on the contiguous static copies than on the
    # strided batches: its weights differ in the last bits after a few Adam steps.
    atol = 1e-5 if spec.is_image else 1e-6
    assert_updates_match(eager, graphed, buffer_batches(spec, device, count), rtol=1e-5, atol=atol)
    keys = 2 if algo == "td3" else 1
    assert graphed.update_fn.graphs_captured == keys and graphs.replays == count - keys * WARMUP_CALLS


# --- on a GPU ---

@pytest.mark.cuda
@pytest.mark.parametrize("algo,env_id", [("dqn", "CartPole-v1"), ("td3", "Pendulum-v1"), ("ddpg", "Pendulum-v1"),
                                         ("dqn", "Breakout-v5")])
def test_graphed_updates_equal_eager_ones(cuda_device, monkeypatch, algo, env_id):
    """Real CUDA graphs, not compiled, on strided buffer batches: warm-up calls, capture, then
    replays, with the lr changing every update: the same metrics and states as eager. (Graphed and
    compiled: tests/test_cuda.py.)"""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the Nature CNN's convolutions
    spec, eager, graphed = paired_agents(algo, env_id, cuda_device)
    assert graphed.update_fn.enabled
    assert_updates_match(eager, graphed, buffer_batches(spec, cuda_device, 16), rtol=1e-4, atol=1e-5)
    assert graphed.update_fn.graphs_captured == (2 if algo == "td3" else 1)
