"""One training update replayed as a CUDA graph (`--cuda-graph`).

A CUDA graph records the kernels of one call of the update once, with the address of every tensor
they read or write, and replays them all with one launch: no per-kernel launch cost and no Python
between them. The update functions are built for this: no host sync, no Python branch on tensor
values, every state tensor (weights, flat gradients, Adam moments and step count) preallocated and
updated in place. What changes from call to call lives at fixed addresses:
- the mini-batch (and TD3's smoothing noise): copied into static input tensors before each replay;
- the learning rate: a device tensor that the optimizer's `lr` setter overwrites
  (`FusedAdam(lr_on_device=True)`);
- the outputs (loss, mean Q, grad norm): static tensors that each replay overwrites, so a caller
  must use (or clone) them before the next update, as the trainer does.
Arguments that are not tensors (TD3's `update_actor`, a None noise) select one graph per value.
Target updates stay outside: whether a hard copy is due is the host's counter's call.

Off CUDA `GraphedUpdate` calls the update directly, so everything above it runs the same code on
CPU. NOT YET RUN ON A GPU in this repository (none was lent): `tests/test_cuda.py` compares graphed
against eager updates where CUDA exists, which is why the setting is off by default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

WARMUP_CALLS = 3  # eager calls per graph before capture: lazy cuBLAS/allocator set-up, compilation


class GraphedUpdate:
    def __init__(self, update_fn: Callable[..., Any], device: torch.device, warmup_calls: int = WARMUP_CALLS):
        self.update_fn = update_fn
        self.device = device
        self.enabled = device.type == "cuda"
        self.warmup_calls = warmup_calls
        self._calls: dict[tuple, int] = {}
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor | Any], Any]] = {}

    @staticmethod
    def _key(args: tuple) -> tuple:
        """The non-tensor arguments, which the graph bakes in; tensors are replaced by a marker."""
        return tuple(None if isinstance(a, torch.Tensor) else ("value", a) for a in args)

    def __call__(self, *args: Any) -> Any:
        if not self.enabled:
            return self.update_fn(*args)
        key = self._key(args)
        if key in self._graphs:
            graph, static_args, static_out = self._graphs[key]
            for static, arg in zip(static_args, args):
                if isinstance(static, torch.Tensor):
                    static.copy_(arg, non_blocking=True)
            graph.replay()
            return static_out
        calls = self._calls.get(key, 0)
        if calls < self.warmup_calls:
            # Warm-up calls are real updates, run on a side stream as capture requires.
            self._calls[key] = calls + 1
            return self._on_side_stream(lambda: self.update_fn(*args))
        self._capture(key, args)
        return self(*args)  # capture records, it does not run: replay does this update

    def _on_side_stream(self, fn: Callable[[], Any]) -> Any:
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = fn()
        main.wait_stream(side)
        return out

    def _capture(self, key: tuple, args: tuple) -> None:
        static_args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        # Each graph gets its own memory pool: a shared pool is only safe when graphs replay in
        # the order they were captured, and TD3's two interleave as the policy delay says.
        with torch.cuda.graph(graph):
            static_out = self.update_fn(*static_args)
        self._graphs[key] = (graph, static_args, static_out)

    @property
    def graphs_captured(self) -> int:
        return len(self._graphs)
