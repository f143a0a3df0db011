"""The pieces every update shares: gradients from autograd into a net's flat gradient, the
clip + Adam step over it (where a data-parallel run averages the gradient over its ranks), and the
precision of the matrix products (`--precision`).

Each net's parameters and gradients live in one flat tensor (`fused_adam.flatten_parameters_`),
so clipping and Adam are single-tensor ops whichever way the gradient was made: by autograd
(`grads_into_`, the default path of every algorithm) or by a hand-written backward (the measured
fast path for ReLU MLPs in `stacked_mlp`, tested against autograd of the same loss).

Mixed precision keeps everything that accumulates in fp32: master weights, gradients, their clip,
Adam's moments, target nets, TD targets and losses. Only matrix products (and the activations
between them) run in bf16. An autograd update gets this by running its forward passes and loss
under `autocast`; the hand-written path by the nets' `compute_dtype` (`stacked_mlp`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from fastrl.cuda_graph import GraphedUpdate
from fastrl.distributed import average_gradients_
from fastrl.fused_adam import FusedAdam, clip_grad_norm_
from fastrl.schedules import learning_rate

# --precision: the dtype of the updates' matrix products.
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def bf16_unsupported_note(precision: str, device: torch.device) -> str | None:
    """Why `--precision bf16` would slow this run down instead of speeding it up: a CPU without
    AVX512-BF16 or AMX has no bf16 products, and oneDNN then emulates them. None where bf16 has
    hardware support (or the run is fp32, or on a GPU)."""
    if precision != "bf16" or device.type != "cpu":
        return None
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(probe is None for probe in probes) or any(probe() for probe in probes):
        return None  # supported, or this torch cannot tell
    return (f"--precision bf16: this CPU has no bf16 matrix products (torch reports "
            f"{torch.backends.cpu.get_cpu_capability()}, no AVX512-BF16 or AMX), so they run emulated, many "
            f"times slower than fp32; use --precision fp32 here")


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """The context an autograd update runs its forward passes and loss in: for bf16,
    `torch.autocast`, whose matrix products multiply bf16 casts of the fp32 parameters (their
    gradients come out fp32); for fp32, nothing. Take the gradients after leaving it
    (`grads_into_`), and cast network outputs up (`.float()`) before a loss or TD target takes
    their differences: autocast leaves other ops in the dtype of their inputs."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    # No cast cache: an update uses each weight once per region, so it saves nothing, and a cache
    # is what CUDA-graph capture of autocast regions must not hold (torch's CUDA-graph notes).
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


def grads_into_(loss: torch.Tensor, params: list[torch.Tensor], flat_grad: torch.Tensor) -> None:
    """d loss / d params, written into `flat_grad` in the parameters' order (their flat layout).
    `torch.autograd.grad`, not `backward`: only the paths to `params` are differentiated (an actor
    loss through a critic forms no critic weight gradients), and no `.grad` is replaced."""
    grads = torch.autograd.grad(loss, params)
    torch.cat([g.reshape(-1) for g in grads], out=flat_grad)


def clip_and_step(optimizer: FusedAdam, max_grad_norm: float, norm_wanted: bool = True) -> torch.Tensor | None:
    """Average the optimizer's gradients over the ranks of a data-parallel run (one all_reduce per
    flat gradient; nothing in a plain run), clip them to `max_grad_norm` (0 = off) and take its
    Adam step. Every update of every algorithm steps through here, so every rank takes the same
    step. Returns the norm before clipping (a device scalar), or None when there is no clip and the
    caller does not want the norm (`norm_wanted=False`: it costs a reduction over the gradient)."""
    average_gradients_(optimizer.grads)
    norm = clip_grad_norm_(optimizer.grads, max_grad_norm) if norm_wanted or max_grad_norm > 0 else None
    optimizer.step()
    return norm


def scheduled_lr(cfg, base: float, update: int, total_updates: int) -> float:
    """The lr of update `update` under the run's --lr-schedule, starting from `base`."""
    return learning_rate(cfg.lr_schedule, base, update, total_updates, end_fraction=cfg.lr_end_fraction,
                         k0=cfg.lr_k0, power=cfg.lr_power)


def wrap_update(update_fn: Callable, cfg, use_compile: bool, device: torch.device) -> Callable:
    """The update as the trainer calls it: compiled under --compile, replayed as a CUDA graph
    under --cuda-graph (the graph captures the compiled function)."""
    if use_compile:
        update_fn = torch.compile(update_fn)
    if cfg.cuda_graph:
        update_fn = GraphedUpdate(update_fn, device)
    return update_fn
