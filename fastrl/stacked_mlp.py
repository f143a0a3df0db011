"""E ReLU MLPs of one shape kept as stacked weights and run as batched GEMMs, with the backward
pass written out.

TD3's twin critics are one `StackedMLP` with E = 2: every layer of both critics is one `bmm`, not
two modules run in turn. Actors and DDPG's critic are the E = 1 case.

Why a hand-written backward instead of autograd (measured on the 2-core EPYC, fp32, batch 256):
- MKL's batched sgemm is 5-10x slower when a product's last dimension is small: the 256 -> 1
  critic head took 140 us instead of ~15 us. Each product here runs in whichever orientation has a
  wide last dimension ((A B)^T = B^T A^T), and the K = 1 outer product is a broadcast multiply.
  Autograd fixes the orientation of every backward product itself.
- It skips work autograd cannot know is unneeded: the actor's loss needs the critic's gradient
  with respect to the action only, not the critic's weight gradients.
Tests check every gradient against autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

# A GEMM whose last dimension is below this runs faster transposed on MKL (see the module doc).
NARROW = 16


def _is_narrow(a: torch.Tensor, b: torch.Tensor) -> bool:
    return b.shape[-1] < NARROW <= a.shape[-2]


def matmul(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Batched `a @ b` ([E, M, K] @ [E, K, N]) in the orientation MKL runs fast; written into the
    contiguous `out` when given."""
    if a.shape[-1] == 1:
        product = a * b  # outer product: a broadcast multiply beats a K = 1 GEMM
    elif _is_narrow(a, b):
        product = torch.bmm(b.mT, a.mT).mT
    elif out is not None:
        return torch.bmm(a, b, out=out)
    else:
        return torch.bmm(a, b)
    return product if out is None else out.copy_(product)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x @ weightᵀ + bias for every member: x [E, B, in], weight [E, out, in], bias [E, out]."""
    if _is_narrow(x, weight.mT):
        return torch.baddbmm(bias.unsqueeze(-1), weight, x.mT).mT
    return torch.baddbmm(bias.unsqueeze(1), x, weight.mT)


@dataclass
class Trace:
    """What the backward pass needs from a forward pass: each layer's input (post-ReLU)."""
    inputs: list[torch.Tensor]


class StackedMLP(nn.Module):
    """`members` independent MLPs in -> hidden... -> out with ReLU between layers.

    Weights are [E, out, in] and biases [E, out]; member e's layers are nn.Linear-shaped slices and
    are initialised as nn.Linear initialises them (U(±1/sqrt(in)))."""

    def __init__(self, members: int, in_dim: int, hidden_sizes: tuple[int, ...], out_dim: int):
        super().__init__()
        self.members = members
        self.out_dim = out_dim
        sizes = [in_dim, *hidden_sizes, out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(members, fan_out, fan_in).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(members, fan_out).uniform_(-bound, bound)))
        # Iterating a ParameterList costs ~5 us; the hot path reads these lists instead. They hold
        # the same Parameter objects, which .to(), load_state_dict and deepcopy keep consistent.
        self._weights, self._biases = list(self.weights), list(self.biases)
        self._plain: list[tuple[torch.Tensor, ...]] = []  # forward_one's 2-D views (see there)
        self._plain_of: tuple[int, ...] = ()  # the parameter storage they view

    def forward(self, x: torch.Tensor, members: slice | None = None) -> torch.Tensor:
        """[B, in] or [E, B, in] -> [E, B, out], for all members or the slice `members`.
        Differentiable by autograd (the default update path, tests, export)."""
        weights, biases = self.layers(members)
        h = x.expand(weights[0].shape[0], *x.shape) if x.dim() == 2 else x
        for i in range(len(weights) - 1):
            h = linear(h, weights[i], biases[i]).relu_()
        return linear(h, weights[-1], biases[-1])

    def forward_one(self, x: torch.Tensor) -> torch.Tensor:
        """Member 0 only, [B, in] -> [B, out], as 2-D GEMMs on views taken once: the acting path.
        Acting on a few observations is per-op overhead, and inside the training loop each op runs
        with cold caches (~10-20 us an op on the 2-core CPU), so the batch dimension, the squeeze
        and the per-call transposes of `forward` are worth dropping there."""
        h = x
        layers = self._plain_layers()
        for weight_t, bias, _weight, _bias_col in layers[:-1]:
            h = torch.addmm(bias, h, weight_t).relu_()
        weight_t, bias, weight, bias_col = layers[-1]
        if _is_narrow(h, weight_t):
            return torch.addmm(bias_col, weight, h.mT).mT
        return torch.addmm(bias, h, weight_t)

    def _plain_layers(self) -> list[tuple[torch.Tensor, ...]]:
        """(Wᵀ, b, W, b as a column) of member 0 per layer, views of the parameters. Rebuilt when
        the parameters move to new storage (`.to()`, `flatten_parameters_`); in-place updates
        (optimizer steps, load_state_dict) keep the views current."""
        if torch.compiler.is_compiling():  # traced (a compiled acting policy): views are graph ops
            return [(w[0].mT, b[0], w[0], b[0].unsqueeze(1)) for w, b in zip(self._weights, self._biases)]
        storage = tuple(p.data_ptr() for p in self._weights)
        if storage != self._plain_of:
            pairs = [(w.detach()[0], b.detach()[0]) for w, b in zip(self._weights, self._biases)]
            self._plain = [(w.mT, b, w, b.unsqueeze(1)) for w, b in pairs]
            self._plain_of = storage
        return self._plain

    def forward_traced(self, x: torch.Tensor, members: slice | None = None) -> tuple[torch.Tensor, Trace]:
        """Forward pass keeping what `backward` needs. `members` picks a subset (a view, no copy).
        x is [B, in], shared by the members, or [E, B, in], one input per member."""
        weights, biases = self.layers(members)
        h = x.expand(weights[0].shape[0], *x.shape) if x.dim() == 2 else x
        inputs = []
        for i, (w, b) in enumerate(zip(weights, biases)):
            inputs.append(h)
            h = linear(h, w, b)
            if i < len(weights) - 1:
                h = h.relu_()
        return h, Trace(inputs)

    def layers(self, members: slice | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if members is None:
            return self._weights, self._biases
        return [w[members] for w in self._weights], [b[members] for b in self._biases]


def _relu_backward_aten(g: torch.Tensor, x: torch.Tensor) -> None:
    """g = 0 where x <= 0, in place, through aten's out= overload (not a public API)."""
    torch.ops.aten.threshold_backward.grad_input(g, x, 0.0, grad_input=g)


def _relu_backward_public(g: torch.Tensor, x: torch.Tensor) -> None:
    """The same, public API: a mask tensor more."""
    g.masked_fill_(x <= 0, 0.0)


def _has_threshold_backward_out() -> bool:
    try:
        return torch.ops.aten.threshold_backward.grad_input is not None
    except (AttributeError, RuntimeError):
        return False


# Chosen once: the aten overload where torch has it (every version this project runs).
relu_backward_ = _relu_backward_aten if _has_threshold_backward_out() else _relu_backward_public


def backward(weights: list[torch.Tensor], trace: Trace, grad_out: torch.Tensor,
             weight_grads: list[torch.Tensor] | None, bias_grads: list[torch.Tensor] | None,
             input_cols: slice | None = None) -> torch.Tensor | None:
    """Backpropagate `grad_out` ([E, B, out]) through the ReLU MLP that produced `trace`.

    Writes the weight and bias gradients into `weight_grads` / `bias_grads` (overwriting, not
    accumulating) unless they are None. Returns the gradient with respect to the input columns
    `input_cols` ([E, B, len(cols)]), or None when `input_cols` is None (then the first layer's
    input gradient is never computed)."""
    g = grad_out
    for i in range(len(weights) - 1, -1, -1):
        x = trace.inputs[i]
        if weight_grads is not None:
            # dW = gᵀ x: with a narrow input (the first layer) the fast orientation is (xᵀ g)ᵀ.
            matmul(g.mT, x, out=weight_grads[i])
            torch.sum(g, dim=1, out=bias_grads[i])
        if i > 0:
            g = matmul(g, weights[i])
            # ReLU's gradient: pass where the layer's output (the next layer's input) was positive.
            # In place: g is this function's own fresh product, still in cache; a new tensor costs
            # a cold write stream as large as g.
            relu_backward_(g, x)
        elif input_cols is not None:
            return matmul(g, weights[0][:, :, input_cols])
    return None
