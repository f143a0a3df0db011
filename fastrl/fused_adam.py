"""Adam over a fixed list of parameters: one fused kernel call per step, no per-step bookkeeping;
with the two helpers it needs, preallocated gradients and a global-norm clip over them.

`torch.optim.Adam(fused=True)` runs the same kernel (`torch._fused_adam_`), but first regroups the
tensors by device and dtype and re-reads its state in Python on every step: ~50 us a step on the
2-core CPU, 5-8% of a TD3 update there. Here the tensor lists are built once; the gradients are
the parameters' preallocated `.grad` tensors, which the hand-written backward overwrites in place.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import nn


def preallocate_grads(module: nn.Module) -> None:
    """Give every parameter a .grad tensor once; backward passes write into them in place."""
    for p in module.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def flatten_parameters_(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Move every parameter of `module`, and its gradient, into one contiguous tensor each, and
    return those two (the parameters become views of the first, their `.grad`s views of the
    second). The global-norm clip and the Adam step are then single-tensor ops: on the CI CPU the
    clip over a 3-layer MLP's 6 tensors costs 50 us as lists and ~10 us flat.

    Only for nets whose gradients are written explicitly (the hand-written backward): autograd may
    replace a `.grad` instead of accumulating into it, which would cut the view. Call it after the
    module is on its device; `.to()` would copy the parameters out of the shared storage."""
    params = list(module.parameters())
    total = sum(p.numel() for p in params)
    flat = torch.empty(total, dtype=params[0].dtype, device=params[0].device)
    flat_grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        flat[offset:offset + n].copy_(p.detach().reshape(-1))
        p.data = flat[offset:offset + n].view_as(p)
        p.grad = flat_grad[offset:offset + n].view_as(p)
        offset += n
    for t in (flat, flat_grad):
        _flat_tensors[t.untyped_storage().data_ptr()] = t
    return flat, flat_grad


ViewLayout = tuple[torch.Tensor, list[tuple[int, int, torch.Size]]]  # a base, and (offset, numel, shape) of each view


def _layout_from_base(views: list[torch.Tensor]) -> ViewLayout | None:
    """Through `Tensor._base` (private): the tensor the views were cut from."""
    base = views[0]._base if views else None
    if base is None or any(v._base is not base for v in views):
        if any(v._base is not None for v in views):
            raise ValueError("rebuildable_views: the views must all view one tensor, or none")
        return None
    return base, [(v.storage_offset() - base.storage_offset(), v.numel(), v.shape) for v in views]


# The flat tensors `flatten_parameters_` made, by the address of their storage: what the public-API
# fallback of `view_layout` finds a view's base by.
_flat_tensors: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()


def _layout_from_storage(views: list[torch.Tensor]) -> ViewLayout | None:
    """Public API only: views of one flat tensor of `flatten_parameters_` share its storage."""
    bases = [_flat_tensors.get(v.untyped_storage().data_ptr()) for v in views]
    if views and bases[0] is not None and all(b is bases[0] for b in bases):
        base = bases[0]
        return base, [(v.storage_offset() - base.storage_offset(), v.numel(), v.shape) for v in views]
    storages = [v.untyped_storage() for v in views]
    alone = all(b is None and v.storage_offset() == 0 and v.numel() * v.element_size() == s.nbytes()
                for v, b, s in zip(views, bases, storages))
    if alone and len({s.data_ptr() for s in storages}) == len(views):
        return None
    raise ValueError("rebuildable_views: the views must all view one tensor, or none "
                     "(without Tensor._base: one flat tensor of flatten_parameters_)")


# Chosen once: `Tensor._base` where torch has it (every version this project runs).
view_layout = _layout_from_base if hasattr(torch.empty(1)[:1], "_base") else _layout_from_storage


def rebuild_views(layout: ViewLayout) -> list[torch.Tensor]:
    base, parts = layout
    return [base.reshape(-1).narrow(0, offset, n).view(shape) for offset, n, shape in parts]


def rebuildable_views(views: list[torch.Tensor]) -> Callable[[], list[torch.Tensor]]:
    """A zero-argument function giving `views` back: the same list when run eagerly; inside
    torch.compile, each view made afresh from the one tensor they all view (the flat gradient of
    `flatten_parameters_`). A compiled graph then takes no view whose base is not itself an input:
    torch 2.13 fails to build the guards for such an input on a cold compile cache ("sources must
    not be empty for symbol", for the base's size), so every first `--compile` run crashed.
    Tensors that view nothing are returned as they are."""
    layout = view_layout(views)
    if layout is None:
        return lambda: views

    def get() -> list[torch.Tensor]:
        if torch.compiler.is_compiling():
            return rebuild_views(layout)
        return views

    return get


def clip_grad_norm_(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale `grads` in place so that their global L2 norm is at most `max_norm` (0 = no clip);
    returns the norm before clipping. The scale is computed on the device: no host sync."""
    if len(grads) == 1:  # flat gradients: one reduction, one scale
        norm = torch.linalg.vector_norm(grads[0])
    else:
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if max_norm > 0:  # a config switch, not a tensor value: the scale itself is branch-free
        scale = torch.clamp_max_(torch.reciprocal(norm + 1e-6).mul_(max_norm), 1.0)
        torch._foreach_mul_(grads, scale)
    return norm


def clip_grad_norm_members_(grads: list[torch.Tensor], max_norm: torch.Tensor) -> torch.Tensor:
    """`clip_grad_norm_` for stacked members: every tensor of `grads` is [E k, ...] (contiguous),
    member e's part of it rows [e k, (e + 1) k) (k = 1, or TD3's two critics per member). Each
    member's norm is over its own parts only, and each member's parts are scaled by its own factor
    (`max_norm` [E]; 0 = no clip for that member). Returns the norms [E].
    Branch-free: a NaN in one member's gradient stays in that member's parts."""
    members = max_norm.shape[0]
    per_tensor = torch.stack([torch.linalg.vector_norm(g.reshape(members, -1), dim=1) for g in grads])
    norm = torch.linalg.vector_norm(per_tensor, dim=0)  # (no squared temporaries)
    scale = torch.clamp_max_(torch.reciprocal(norm + 1e-6).mul_(max_norm), 1.0)
    scale = torch.where(max_norm > 0, scale, torch.ones_like(scale))
    for g in grads:
        g.view(members, -1).mul_(scale.unsqueeze(1))
    return norm


# Chosen once: the fused kernel (private, `torch._fused_adam_`) where torch has it; otherwise the
# public torch.optim.Adam over the same tensors and state (slower, the same math).
HAS_FUSED_ADAM = hasattr(torch, "_fused_adam_")


class FusedAdam:
    """`params` are stepped with the gradients in `grads`, or by default their own `.grad`s (which
    must exist); both may be the flat tensors of `flatten_parameters_`. Without
    `torch._fused_adam_` the step is `torch.optim.Adam`'s, over the same tensors and state."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, grads: list[torch.Tensor] | None = None, lr_on_device: bool = False,
                 lr_groups: list[tuple[float, list[tuple[int, int]]]] | None = None):
        """`lr_groups` (stacked members with their own lrs; one flat parameter): (factor, element
        ranges [start, stop) of the flat parameter) per distinct lr; the elements of a group step
        with lr `lr * factor`. The fused kernel takes one lr, so it runs once per group, over
        views of those ranges (a member's part of a layer is one contiguous range)."""
        if grads is None and any(p.grad is None for p in params):
            raise ValueError("FusedAdam needs every parameter's .grad preallocated (or grads=)")
        # With lr_on_device the kernel reads lr from a device tensor that setting `lr` overwrites:
        # a CUDA graph replays the step with whatever lr that tensor holds (see cuda_graph.py).
        self._lr_tensor = (torch.full((), lr, dtype=torch.float32, device=params[0].device)
                           if lr_on_device else None)
        self._lr = lr
        self.betas = betas
        self.eps = eps
        self.params = [p.detach() for p in params]  # same storage: stepping these steps the parameters
        self.grads = grads if grads is not None else [p.grad for p in params]
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        # The step count for the bias correction: float32 on the parameters' device, as the kernel
        # wants it. All parameters step together, so they share one count.
        self.step_count = torch.zeros((), dtype=torch.float32, device=self.params[0].device)
        self._groups = None
        if lr_groups is not None:
            if lr_on_device or len(self.params) != 1:
                raise ValueError("FusedAdam: lr_groups need one flat parameter and a host lr")
            self._groups = [(factor, *([t.narrow(0, a, b - a) for a, b in ranges]
                                       for t in (self.params[0], self.grads[0], self.exp_avg[0], self.exp_avg_sq[0])))
                            for factor, ranges in lr_groups]
        self._public = None if HAS_FUSED_ADAM or self._groups is not None else self._public_adam(lr_on_device)

    def _public_adam(self, capturable: bool) -> torch.optim.Adam:
        """torch.optim.Adam stepping `params` with `grads` into `exp_avg`/`exp_avg_sq`. It counts
        steps per tensor (on the host unless capturable, as it wants them), kept equal to
        `step_count`. Capturable (the CUDA-graph path) reads lr from the device tensor."""
        adam = torch.optim.Adam(self.params, lr=self._lr_tensor if capturable else self._lr, betas=self.betas,
                                eps=self.eps, foreach=False, capturable=capturable)
        for p, g, m, v in zip(self.params, self.grads, self.exp_avg, self.exp_avg_sq, strict=True):
            p.grad = g
            step = torch.zeros((), dtype=torch.float32, device=p.device if capturable else "cpu")
            adam.state[p] = {"step": step, "exp_avg": m, "exp_avg_sq": v}
        return adam

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        if value != self._lr and self._lr_tensor is not None:
            self._lr_tensor.fill_(value)
        self._lr = value

    @torch.compiler.disable  # an in-place multi-tensor kernel: run it eagerly, as torch.optim does
    def step(self) -> None:
        self.step_count.add_(1.0)  # the kernel reads the count of the step it is taking
        if self._groups is not None:
            for factor, params, grads, exp_avg, exp_avg_sq in self._groups:
                self._adam(params, grads, exp_avg, exp_avg_sq, self._lr * factor)
            return
        if self._public is not None:
            if self._lr_tensor is None:
                self._public.param_groups[0]["lr"] = self._lr
            self._public.step()
            return
        self._adam(self.params, self.grads, self.exp_avg, self.exp_avg_sq,
                   self._lr_tensor if self._lr_tensor is not None else self._lr)

    def _adam(self, params: list[torch.Tensor], grads: list[torch.Tensor], exp_avg: list[torch.Tensor],
              exp_avg_sq: list[torch.Tensor], lr: float | torch.Tensor) -> None:
        """One Adam step of these tensors (all of them, or one lr group's views): the fused kernel,
        or without it (lr groups only: the plain step then uses torch.optim.Adam) Adam's formula as
        torch.optim.Adam writes it."""
        if HAS_FUSED_ADAM:
            torch._fused_adam_(params, grads, exp_avg, exp_avg_sq, [], [self.step_count] * len(params), lr=lr,
                               beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0, eps=self.eps,
                               amsgrad=False, maximize=False)
            return
        beta1, beta2 = self.betas
        bias1 = 1.0 - torch.pow(beta1, self.step_count)
        bias2_sqrt = (1.0 - torch.pow(beta2, self.step_count)).sqrt_()
        for p, g, m, v in zip(params, grads, exp_avg, exp_avg_sq):
            m.lerp_(g, 1.0 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
            p.sub_(m.mul(lr).div_(bias1).div_((v.sqrt() / bias2_sqrt).add_(self.eps)))

    def state_dict(self) -> dict:
        return {"lr": self.lr, "step_count": self.step_count, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def load_state_dict(self, state: dict) -> None:
        # In place: the step's tensor lists must keep pointing at these tensors.
        self.lr = float(state["lr"])
        self.step_count.copy_(state["step_count"])
        for name in ("exp_avg", "exp_avg_sq"):
            for mine, saved in zip(getattr(self, name), state[name], strict=True):
                mine.copy_(saved)
        if self._public is not None:
            for p in self.params:
                self._public.state[p]["step"].copy_(self.step_count)
