"""The pieces every update shares: gradients from autograd into a net's flat gradient, and the
clip + Adam step over it.

Each net's parameters and gradients live in one flat tensor (`fused_adam.flatten_parameters_`),
so clipping and Adam are single-tensor ops whichever way the gradient was made: by autograd
(`grads_into_`, the default path of every algorithm) or by a hand-written backward (the measured
fast path for ReLU MLPs in `stacked_mlp`, tested against autograd of the same loss).
"""

from __future__ import annotations

import torch

from fastrl.fused_adam import FusedAdam, clip_grad_norm_


def grads_into_(loss: torch.Tensor, params: list[torch.Tensor], flat_grad: torch.Tensor) -> None:
    """d loss / d params, written into `flat_grad` in the parameters' order (their flat layout).
    `torch.autograd.grad`, not `backward`: only the paths to `params` are differentiated (an actor
    loss through a critic forms no critic weight gradients), and no `.grad` is replaced."""
    grads = torch.autograd.grad(loss, params)
    torch.cat([g.reshape(-1) for g in grads], out=flat_grad)


def clip_and_step(optimizer: FusedAdam, max_grad_norm: float) -> torch.Tensor:
    """Clip the optimizer's gradients to `max_grad_norm` (0 = off) and take its Adam step;
    returns the norm before clipping (a device scalar)."""
    norm = clip_grad_norm_(optimizer.grads, max_grad_norm)
    optimizer.step()
    return norm
