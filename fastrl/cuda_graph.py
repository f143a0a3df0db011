"""One training update replayed as a CUDA graph (`--cuda-graph`).

A CUDA graph records the kernels of one call of the update once, with the address of every tensor
they read or write, and replays them all with one launch: no per-kernel launch cost and no Python
between them. The update functions are built for this: no host sync, no Python branch on tensor
values, every state tensor (weights, flat gradients, Adam moments and step count) preallocated and
updated in place. What changes from call to call lives at fixed addresses:
- the tensor arguments (the mini-batch, TD3's smoothing noise): each graph owns static input
  tensors, allocated once, contiguous, and every call copies its arguments into them: the warm-up
  calls, the capture and the replays alike. So the update (compiled or not) only ever sees those
  tensors. Training batches are strided slices of the replay buffer's pair rows; had the warm-up
  seen them and the capture contiguous copies, `torch.compile` would recompile inside the capture,
  and a fresh Triton kernel's first launch synchronizes, which breaks the capture;
- the learning rate: a device tensor that the optimizer's `lr` setter overwrites
  (`FusedAdam(lr_on_device=True)`);
- the outputs (any pytree of tensors: the update's tuple today, a dict of named scalars soon):
  the tensors the capture produced, which every replay overwrites. A caller must use (or clone)
  them before its next call; the trainer adds them to its metric sums at once.
One graph per key: the tensor arguments' shapes, dtypes and devices, and the values of the other
arguments (TD3's `update_actor`, a None noise), which the graph bakes in.
Target updates stay outside: whether a hard copy is due is the host's counter's call.

How a graph is made is a strategy (`CudaGraphs` on CUDA, the default there); a test can inject one
that calls the function at "replay" to check the bookkeeping on CPU. With no strategy (off CUDA)
`GraphedUpdate` calls the update directly. NOT YET RUN ON A GPU in this repository (none was lent):
`tests/test_cuda.py` and `tests/test_cuda_graph.py` compare graphed against eager updates where
CUDA exists, which is why the setting is off by default.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.utils._pytree import tree_leaves

WARMUP_CALLS = 3  # calls per graph before capture: lazy cuBLAS/allocator set-up, compilation

Replay = Callable[[], Any]  # runs the captured work once; returns the (static) outputs


class GraphStrategy(Protocol):
    def warm_up(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` for real, as capture needs it run before (for CUDA: on a side stream)."""

    def capture(self, fn: Callable[[], Any]) -> Replay:
        """Record `fn` (without running it) and return its replay."""


def check_graph_outputs(outputs: Any) -> None:
    """A graph can only overwrite tensors: any other output would keep its capture-time value."""
    others = [type(leaf).__name__ for leaf in tree_leaves(outputs) if not isinstance(leaf, torch.Tensor)]
    if others:
        raise TypeError(f"GraphedUpdate: the update returned {', '.join(others)} beside its tensors; a CUDA graph "
                        f"replays tensors only (return device tensors)")


class CudaGraphs:
    """The real mechanism: warm-up and capture on one side stream (capture cannot run on the
    default stream), replay on the caller's stream."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def warm_up(self, fn: Callable[[], Any]) -> Any:
        main = torch.cuda.current_stream(self.device)
        # The side stream waits for the copies into the static inputs (and for every earlier use
        # of tensors it may reuse); the caller's stream waits for the update.
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            out = fn()
        main.wait_stream(self.stream)
        return out

    def capture(self, fn: Callable[[], Any]) -> Replay:
        graph = torch.cuda.CUDAGraph()
        # torch.cuda.graph synchronizes the device first. Each graph gets its own memory pool: a
        # shared pool is only safe when graphs replay in the order they were captured, and TD3's
        # two interleave as the policy delay says.
        with torch.cuda.graph(graph, stream=self.stream):
            outputs = fn()
        check_graph_outputs(outputs)

        def replay() -> Any:
            graph.replay()
            return outputs

        return replay


@dataclass
class _Graph:
    """One key's static inputs and state: warm-up calls so far, then its replay."""
    args: tuple  # the update's arguments, tensors replaced by the static inputs
    statics: list[torch.Tensor]
    warmups: int = 0
    replay: Replay | None = None


def graph_key(args: tuple) -> tuple[Hashable, ...]:
    """What a graph bakes in: each tensor's shape, dtype and device; each other value (with its type,
    so that True and 1 differ)."""
    return tuple(("tensor", a.shape, a.dtype, a.device) if isinstance(a, torch.Tensor) else ("value", type(a), a)
                 for a in args)


def _new_graph(args: tuple) -> _Graph:
    statics = [torch.empty_like(a, memory_format=torch.contiguous_format) for a in args if isinstance(a, torch.Tensor)]
    it = iter(statics)
    return _Graph(tuple(next(it) if isinstance(a, torch.Tensor) else a for a in args), statics)


class GraphedUpdate:
    """`update_fn(*args)` with positional arguments: tensors, and hashable values that select a
    graph. Returns what `update_fn` returns; when graphed, tensors that the next call of the same
    graph overwrites."""

    def __init__(self, update_fn: Callable[..., Any], device: torch.device, warmup_calls: int = WARMUP_CALLS,
                 graphs: GraphStrategy | None = None):
        self.update_fn = update_fn
        self.device = device
        self.graphs = graphs if graphs is not None else CudaGraphs(device) if device.type == "cuda" else None
        self.warmup_calls = warmup_calls
        self._by_key: dict[tuple, _Graph] = {}

    @property
    def enabled(self) -> bool:
        return self.graphs is not None

    def __call__(self, *args: Any) -> Any:
        if self.graphs is None:
            return self.update_fn(*args)
        key = graph_key(args)
        graph = self._by_key.get(key)
        if graph is None:
            graph = self._by_key[key] = _new_graph(args)
        if graph.statics:
            torch._foreach_copy_(graph.statics, [a for a in args if isinstance(a, torch.Tensor)])
        if graph.replay is not None:
            return graph.replay()
        update = functools.partial(self.update_fn, *graph.args)  # always on the static inputs
        if graph.warmups < self.warmup_calls:
            graph.warmups += 1  # a real update
            return self.graphs.warm_up(update)
        graph.replay = self.graphs.capture(update)
        return graph.replay()  # capture records, it does not run: the replay does this update

    @property
    def graphs_captured(self) -> int:
        return sum(g.replay is not None for g in self._by_key.values())
