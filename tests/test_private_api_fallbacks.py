"""Each private torch API fastrl uses has a public fallback, chosen once at import; each test here
forces the fallback and checks it gives the fast path's numbers.

- `torch._fused_adam_` (FusedAdam) -> torch.optim.Adam over the same tensors and state;
- `torch.ops.aten.threshold_backward.grad_input` (the MLP's ReLU backward) -> `masked_fill_`;
- `Tensor._base` (rebuildable_views) -> shared `untyped_storage()`.
"""

import copy

import pytest
import torch

import fastrl.fused_adam as fused_adam
import fastrl.stacked_mlp as stacked_mlp
from benchmarks.common import random_batch
from fastrl.config import resolve
from fastrl.dqn import build_dqn
from fastrl.envs import lookup_spec
from fastrl.fused_adam import FusedAdam, flatten_parameters_, rebuild_views, rebuildable_views
from fastrl.stacked_mlp import StackedMLP


def test_the_fast_paths_are_the_ones_this_torch_runs():
    assert fused_adam.HAS_FUSED_ADAM
    assert fused_adam.view_layout is fused_adam._layout_from_base
    assert stacked_mlp.relu_backward_ is stacked_mlp._relu_backward_aten


# --- Adam ---

def _adam_run(public: bool, flat: bool, monkeypatch, steps: int = 6):
    """Steps with random gradients and an lr change; returns (params, optimizer state) after a
    save/load into a fresh optimizer and two more steps."""
    monkeypatch.setattr(fused_adam, "HAS_FUSED_ADAM", not public)
    torch.manual_seed(0)
    net = StackedMLP(1, 5, (16, 8), 3)
    if flat:
        flat_p, flat_g = flatten_parameters_(net)
        params, grads = [flat_p], [flat_g]
    else:
        params = list(net.parameters())
        for p in params:
            p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
    opt = FusedAdam(params, lr=3e-3, betas=(0.8, 0.99), eps=1e-6, grads=grads)
    assert (opt._public is not None) == public
    g = torch.Generator().manual_seed(1)
    for k in range(steps):
        if k == 3:
            opt.lr = 1e-3
        for grad in grads:
            grad.copy_(torch.randn(grad.shape, generator=g))
        opt.step()
    fresh = FusedAdam([p.detach().clone() for p in params], lr=0.0, betas=(0.8, 0.99), eps=1e-6,
                      grads=[torch.zeros_like(p) for p in params])
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(2):
        for grad in fresh.grads:
            grad.copy_(torch.randn(grad.shape, generator=g))
        fresh.step()
    return [p.clone() for p in fresh.params], fresh.state_dict()


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "per-tensor"])
def test_public_adam_fallback_gives_the_fused_kernels_numbers(flat, monkeypatch):
    fast_params, fast_state = _adam_run(False, flat, monkeypatch)
    public_params, public_state = _adam_run(True, flat, monkeypatch)
    for a, b in zip(fast_params, public_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert fast_state["step_count"].item() == public_state["step_count"].item() == 8
    for name in ("exp_avg", "exp_avg_sq"):
        for a, b in zip(fast_state[name], public_state[name], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


# --- ReLU backward ---

def test_public_relu_backward_fallback_gives_identical_gradients(monkeypatch):
    torch.manual_seed(0)
    net = StackedMLP(2, 7, (32, 16), 3)
    x = torch.randn(2, 64, 7)
    grad_out = torch.randn(2, 64, 3)

    @torch.no_grad()
    def gradients():
        _, trace = net.forward_traced(x)
        weights, _ = net.layers()
        w_grads = [torch.empty_like(w) for w in weights]
        b_grads = [torch.empty_like(b) for b in net.layers()[1]]
        grad_in = stacked_mlp.backward(trace, grad_out, w_grads, b_grads, input_cols=slice(0, 7))
        return [*w_grads, *b_grads, grad_in]

    fast = gradients()
    monkeypatch.setattr(stacked_mlp, "relu_backward_", stacked_mlp._relu_backward_public)
    public = gradients()
    for a, b in zip(fast, public, strict=True):
        assert torch.equal(a, b)


# --- views of one flat tensor ---

def test_storage_fallback_finds_the_same_views_as_base(monkeypatch):
    net = StackedMLP(1, 3, (8,), 2)
    _flat, flat_grad = flatten_parameters_(net)
    grads = [w.grad for w in net.weights] + [b.grad for b in net.biases]
    monkeypatch.setattr(fused_adam, "view_layout", fused_adam._layout_from_storage)
    assert rebuildable_views(grads)() is grads  # eagerly: the views themselves
    for layout in (fused_adam._layout_from_base(grads), fused_adam._layout_from_storage(grads)):
        rebuilt = rebuild_views(layout)
        assert [(r.data_ptr(), r.shape, r.stride()) for r in rebuilt] == [(g.data_ptr(), g.shape, g.stride())
                                                                         for g in grads]
        assert layout[0].data_ptr() == flat_grad.data_ptr() and layout[0].numel() == flat_grad.numel()
    plain = [torch.zeros(2), torch.zeros(3)]
    assert fused_adam._layout_from_storage(plain) is None and fused_adam._layout_from_storage([]) is None
    other_net = StackedMLP(1, 3, (8,), 2)
    flatten_parameters_(other_net)
    for mixed in ([grads[0], torch.zeros(2)], [grads[0], other_net.weights[0].grad], [torch.zeros(4)[1:]]):
        with pytest.raises(ValueError, match="one tensor, or none"):
            fused_adam._layout_from_storage(mixed)


@pytest.mark.slow  # a cold compile, ~20 s on the CI CPU; the fast path's twin runs in the default suite
def test_every_fallback_at_once_compiles_cold_and_matches_the_fast_eager_agent(monkeypatch, cold_compile):
    """The trainer's DQN update, compiled with all three fallbacks in force, against the eager
    fast-path agent."""
    spec = lookup_spec("CartPole-v1")
    cfg = resolve(dict(algo="dqn", env="CartPole-v1", batch_size=32, hidden_sizes=(16, 16), lr_schedule="constant"))
    batches = [random_batch(spec, 32, torch.device("cpu"), step) for step in range(3)]

    def trajectory(use_compile: bool) -> list[torch.Tensor]:
        """Every update's metrics, then the final weights."""
        torch.manual_seed(0)
        agent = build_dqn(spec, cfg, torch.device("cpu"), use_compile)
        assert (agent.optimizer._public is None) == fused_adam.HAS_FUSED_ADAM
        metrics = [m for batch in batches for m in agent.update(batch).values()]
        return metrics + [p.detach().clone() for p in agent.q.parameters()]

    fast = trajectory(False)
    monkeypatch.setattr(fused_adam, "HAS_FUSED_ADAM", False)
    monkeypatch.setattr(fused_adam, "view_layout", fused_adam._layout_from_storage)
    monkeypatch.setattr(stacked_mlp, "relu_backward_", stacked_mlp._relu_backward_public)
    public = trajectory(True)
    assert len(fast) == len(public)
    for a, b in zip(fast, public):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
