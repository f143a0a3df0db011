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

Precision (`compute_dtype`, from `--precision`): in bf16 the hand-written path multiplies bf16
copies of the fp32 master weights, made once per change of the weights (an optimizer step, a
target update, a load: `weights_changed`), never per forward, and keeps the activations between
those layers in bf16. The output layer and a narrow-input first layer stay fp32
(`low_precision_layers`). Gradients land in the fp32 flat gradient: each bf16 weight-gradient
product accumulates its sum over the batch in fp32 inside oneDNN, and its result is rounded once
to bf16 and converted into the fp32 view. That is a relative error of at most 2^-9 per element,
unbiased, far below the mini-batch noise of the gradient, which Adam then divides by each
element's own running scale. Forming these products in fp32 from bf16-cast inputs instead made
the whole TD3 update ~20% slower.
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
    contiguous `out` when given, converted to its dtype (a bf16 product into an fp32 gradient)."""
    if a.shape[-1] == 1:
        product = a * b  # outer product: a broadcast multiply beats a K = 1 GEMM
    elif _is_narrow(a, b):
        product = torch.bmm(b.mT, a.mT).mT
    elif out is not None and out.dtype == a.dtype:
        return torch.bmm(a, b, out=out)
    else:
        product = torch.bmm(a, b)
    return product if out is None else out.copy_(product)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x @ weightᵀ + bias for every member: x [E, B, in], weight [E, out, in], bias [E, out]."""
    if _is_narrow(x, weight.mT):
        return torch.baddbmm(bias.unsqueeze(-1), weight, x.mT).mT
    return torch.baddbmm(bias.unsqueeze(1), x, weight.mT)


def relu_(h: torch.Tensor) -> torch.Tensor:
    """ReLU in place. A bf16 tensor is clamped through its int16 view, which is ReLU exactly (a
    negative bf16 has the sign bit set, so its int16 is negative; -0.0 becomes +0.0; a NaN with the
    sign bit set becomes 0, and the trainer's weight check still sees NaN weights): ATen's bf16
    kernels convert to fp32 and back, and ran ~4x slower than the int16 one on the AVX512-BF16 CPU."""
    if h.dtype == torch.bfloat16:
        h.view(torch.int16).clamp_min_(0)
        return h
    return h.relu_()


def _relu_backward_aten(g: torch.Tensor, x: torch.Tensor) -> None:
    """ReLU's gradient in place: g = 0 where the layer's output x (post-ReLU) is <= 0, through
    aten's out= overload (not a public API). A bf16 pair goes through its int16 views, as in
    `relu_` (x's int16 is positive exactly where x is)."""
    if g.dtype == torch.bfloat16:
        g, x = g.view(torch.int16), x.view(torch.int16)
    torch.ops.aten.threshold_backward.grad_input(g, x, 0, grad_input=g)


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


def low_precision_layers(sizes: list[int]) -> tuple[int, ...]:
    """The layers (indices) that may multiply in bf16, of an MLP with layer widths `sizes`. Not
    the output layer: its outputs are the Q values and actions that losses take small differences
    of, and bf16 resolves 1 part in 256 (a Q of -300 to about ±1, the size of a TD error). Nor a
    layer with a narrow input (< NARROW features: raw observations and actions): there bf16
    products ran at half the speed of fp32 ones on the AVX512-BF16 CPU, and rounding the inputs
    costs the most."""
    last = len(sizes) - 2
    return tuple(i for i in range(last) if sizes[i] >= NARROW)


def fp32_linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`linear` in fp32 under `torch.autocast` too (see `low_precision_layers`)."""
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return linear(h.float(), weight, bias)
    return linear(h, weight, bias)


def _casts_in_graph(t: torch.Tensor) -> bool:
    """Inside torch.compile or a CUDA-graph capture the low-precision copies are made in the graph,
    per forward: a Python-side cache would be read once, when traced or captured, and go stale."""
    return torch.compiler.is_compiling() or (t.is_cuda and torch.cuda.is_current_stream_capturing())


@dataclass
class Trace:
    """What the backward pass needs from a forward pass: each layer's input (post-ReLU) and weight,
    both as the forward multiplied them (in the layer's compute dtype)."""
    inputs: list[torch.Tensor]
    weights: list[torch.Tensor]


class StackedMLP(nn.Module):
    """`members` independent MLPs in -> hidden... -> out with ReLU between layers.

    Weights are [E, out, in] and biases [E, out]; member e's layers are nn.Linear-shaped slices and
    are initialised as nn.Linear initialises them (U(±1/sqrt(in))). `compute_dtype` is the dtype of
    the hand-written path's products (`forward_traced`, `infer`, `backward`) in the layers that
    `low_precision_layers` allows; `forward` (autograd) and `forward_one` (acting) multiply the
    fp32 weights, or, in those layers, what `torch.autocast` makes of them."""

    def __init__(self, members: int, in_dim: int, hidden_sizes: tuple[int, ...], out_dim: int,
                 compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.members = members
        self.out_dim = out_dim
        self.compute_dtype = compute_dtype
        sizes = [in_dim, *hidden_sizes, out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(members, fan_out, fan_in).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(members, fan_out).uniform_(-bound, bound)))
        self.low_precision_layers = low_precision_layers(sizes)
        # Iterating a ParameterList costs ~5 us; the hot path reads these lists instead. They hold
        # the same Parameter objects, which .to(), load_state_dict and deepcopy keep consistent.
        self._weights, self._biases = list(self.weights), list(self.biases)
        self._plain: list[tuple[torch.Tensor, ...]] = []  # forward_one's 2-D views (see there)
        self._plain_of: tuple[int, ...] = ()  # the parameter storage they view
        # The low-precision layers' weights then biases in compute_dtype, made from the masters in
        # this storage (None: to be remade on next use).
        self._low: list[torch.Tensor] | None = None
        self._low_of: tuple[int, ...] = ()
        self.register_load_state_dict_post_hook(StackedMLP._loaded)

    def forward(self, x: torch.Tensor, members: slice | None = None) -> torch.Tensor:
        """[B, in] or [E, B, in] -> [E, B, out], for all members or the slice `members`.
        Differentiable by autograd (the default update path, tests, export)."""
        weights, biases = self.layers(members)
        h = x.expand(weights[0].shape[0], *x.shape) if x.dim() == 2 else x
        for i, (w, b) in enumerate(zip(weights, biases)):
            h = linear(h, w, b) if i in self.low_precision_layers else fp32_linear(h, w, b)
            if i < len(weights) - 1:
                h = h.relu_()  # ATen's: autograd cannot differentiate `relu_`'s int16 view
        return h

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
        """Forward pass in the compute dtype, keeping what `backward` needs. `members` picks a
        subset (a view, no copy). x is [B, in], shared by the members, or [E, B, in], one input per
        member. The output is fp32 (`low_precision_layers`)."""
        weights, biases = self.compute_layers(members)
        h = x if x.dtype == weights[0].dtype else x.to(weights[0].dtype)
        h = h.expand(weights[0].shape[0], *h.shape) if h.dim() == 2 else h
        inputs = []
        for i, (w, b) in enumerate(zip(weights, biases)):
            if h.dtype != w.dtype:
                h = h.to(w.dtype)
            inputs.append(h)
            h = linear(h, w, b)
            if i < len(weights) - 1:
                h = relu_(h)
        return h, Trace(inputs, weights)

    def infer(self, x: torch.Tensor, members: slice | None = None) -> torch.Tensor:
        """`forward_traced`'s output alone: the hand-written updates' no-grad forwards (targets)."""
        return self.forward_traced(x, members)[0]

    def layers(self, members: slice | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if members is None:
            return self._weights, self._biases
        return [w[members] for w in self._weights], [b[members] for b in self._biases]

    def compute_layers(self, members: slice | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """`layers` as the hand-written path multiplies them: `low_precision_layers` in
        `compute_dtype`, the others in fp32. Low-precision copies are made once after each
        `weights_changed` (or a move to new storage), then reused by every forward until the
        weights change again."""
        low_layers = self.low_precision_layers
        if self.compute_dtype == self._weights[-1].dtype or not low_layers:
            return self.layers(members)
        masters = [self._weights[i] for i in low_layers] + [self._biases[i] for i in low_layers]
        if _casts_in_graph(masters[0]):
            low = [t.to(self.compute_dtype) for t in masters]
        else:
            storage = tuple(t.data_ptr() for t in masters)
            if self._low is None or storage != self._low_of:
                self._low = [t.detach().to(self.compute_dtype) for t in masters]
                self._low_of = storage
            low = self._low
        weights, biases = list(self._weights), list(self._biases)
        for k, i in enumerate(low_layers):
            weights[i], biases[i] = low[k], low[len(low_layers) + k]
        if members is None:
            return weights, biases
        return [w[members] for w in weights], [b[members] for b in biases]

    def weights_changed(self) -> None:
        """Say that the weights were changed in place (an optimizer step, a target update): the
        low-precision copies are remade on next use. (Version counters cannot tell: the fused Adam
        kernel bumps none, and a flat parameter's views count apart from it.) Compiled code makes
        its copies in the graph; it calls this too, for any eager use after it."""
        self._low = None

    @staticmethod
    def _loaded(module: StackedMLP, _incompatible_keys: object) -> None:
        module.weights_changed()


def backward(trace: Trace, grad_out: torch.Tensor, weight_grads: list[torch.Tensor] | None,
             bias_grads: list[torch.Tensor] | None, input_cols: slice | None = None) -> torch.Tensor | None:
    """Backpropagate `grad_out` ([E, B, out]) through the ReLU MLP that produced `trace`, with the
    weights that forward multiplied, each layer in its compute dtype.

    Writes the weight and bias gradients into `weight_grads` / `bias_grads` (overwriting, not
    accumulating; converted to their dtype) unless they are None. Returns the gradient with
    respect to the input columns `input_cols` ([E, B, len(cols)], in the first layer's dtype), or
    None when `input_cols` is None (then the first layer's input gradient is never computed)."""
    g = grad_out
    for i in range(len(trace.weights) - 1, -1, -1):
        x, weight = trace.inputs[i], trace.weights[i]
        if g.dtype != weight.dtype:
            g = g.to(weight.dtype)
        if weight_grads is not None:
            # dW = gᵀ x: with a narrow input (the first layer) the fast orientation is (xᵀ g)ᵀ.
            matmul(g.mT, x, out=weight_grads[i])
            if g.dtype == bias_grads[i].dtype:
                torch.sum(g, dim=1, out=bias_grads[i])
            else:  # a bf16 sum (accumulated in fp32 inside), rounded once as the weight gradient is
                bias_grads[i].copy_(g.sum(dim=1))
        if i > 0:
            g = matmul(g, weight)
            # ReLU's gradient: pass where the layer's output (the next layer's input) was positive.
            # In place: g is this function's own fresh product, still in cache; a new tensor costs
            # a cold write stream as large as g.
            relu_backward_(g, x)
        elif input_cols is not None:
            return matmul(g, weight[:, :, input_cols])
    return None
