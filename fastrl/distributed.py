"""Data-parallel training over torch.distributed: `torchrun --nproc-per-node N -m fastrl.train`.

Every rank steps its own envs (seeded by rank), fills its own replay shard and samples its own
mini-batches. Before each clip + Adam step (`fastrl.learner.clip_and_step`, the one place every
update path goes through) each net's flat gradient is averaged over the ranks with one
all_reduce, so every rank takes the same step; rank 0's weights are broadcast once at the start,
so the ranks hold the same weights throughout (checked by a checksum every log window).

Every setting means what it means in a plain run: N ranks run the same training, split N ways.
--num-envs, --batch-size and --buffer-size are the run's; each rank steps 1/N of the envs,
samples 1/N of every mini-batch (from its own shard) and holds 1/N of the replay capacity
(`rank_share`; envs and batch must split evenly). --total-steps, --learning-starts, the log,
eval and checkpoint periods and the schedules count the run's env steps, as always. So the
update count, the global batch, updates per transition and the replay ratio are those of the
same command without torchrun: results compare with plain runs, and the averaged gradient of N
slices of B/N rows is the gradient of one mini-batch of B rows (each slice drawn from one
rank's shard: stratified by rank, the same distribution). To train a bigger batch or more envs
on more ranks, raise --batch-size / --num-envs as you would in one process.

Besides the gradients, the collectives are few and small: one all_reduce of a stop flag every
STOP_CHECK_EVERY vector steps (so every rank stops at the same update), one all_gather per log
window (metrics, episodes, played actions, weight checksum), one per evaluation (its returns), a
broadcast at the start. Each waits at most --collective-timeout seconds: a rank that crashed,
hangs or lost its network makes the others stop with `PeerLostError` instead of waiting forever.

A plain run (no WORLD_SIZE, or WORLD_SIZE=1) reads the environment and nothing else: no process
group is made, and `average_gradients_` is a Python no-op that torch.compile traces away.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import os
import re
import shlex
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from fastrl.checkpoint import CHECKPOINT_NAME, load_run_checkpoint
from fastrl.interrupts import StopRequest
from fastrl.settings import ConfigError, flag

if TYPE_CHECKING:
    from fastrl.config import TrainConfig

STOP_CHECK_EVERY = 32  # vector steps between stop agreements: a tiny all_reduce, never per step


class PeerLostError(RuntimeError):
    """A collective failed or timed out: another rank crashed, hangs, or the network broke."""


class ReplicaMismatchError(RuntimeError):
    """The ranks' weights no longer agree bit for bit."""


@dataclass(frozen=True)
class World:
    """This process's place among the ranks. The default, one rank, is a plain run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # this rank's index on its machine (its GPU)

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = World()


@dataclass(frozen=True)
class _Group:
    world: World
    device: torch.device  # where small collectives run: the CPU for gloo, the rank's GPU for NCCL
    timeout_s: float


_group: _Group | None = None  # set by `start`; None in a plain run


# --- setting up and tearing down ---

def world_from_env(environ: Mapping[str, str] = os.environ) -> World:
    """The world torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR/PORT); a
    plain run (no WORLD_SIZE) or a single process is `SINGLE`."""
    if "WORLD_SIZE" not in environ:
        return SINGLE
    values = {}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        raw = environ.get(name, "0")
        try:
            values[name] = int(raw)
        except ValueError:
            raise ConfigError(f"{name}: must be an integer (torchrun sets it), got {raw!r}") from None
    size, rank, local_rank = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise ConfigError(f"WORLD_SIZE / RANK: need 0 <= RANK < WORLD_SIZE, got RANK={rank}, WORLD_SIZE={size}")
    if size == 1:
        return SINGLE
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in environ]
    if missing:
        raise ConfigError(f"{missing[0]}: WORLD_SIZE={size} is set but {' and '.join(missing)} not; launch with "
                          f"torchrun --nproc-per-node N -m fastrl.train")
    return World(rank, size, local_rank)


def rank_device(world: World, device: torch.device) -> torch.device:
    """On CUDA, each rank of a machine takes its own GPU (cuda:LOCAL_RANK)."""
    if not world.active or device.type != "cuda":
        return device
    if world.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"--device: rank {world.rank} is local rank {world.local_rank} on its machine, which has "
                          f"{torch.cuda.device_count()} GPU(s); start at most that many processes per machine "
                          f"(torchrun --nproc-per-node)")
    return torch.device("cuda", world.local_rank)


def check_settings(world: World, cfg: TrainConfig) -> None:
    """What a data-parallel run needs, and cannot do (yet). Raises ConfigError."""
    if not world.active:
        return
    for name, what in (("num_envs", "envs"), ("batch_size", "mini-batch rows")):
        value = getattr(cfg, name)
        if value % world.size:
            raise ConfigError(f"{flag(name)}: {value} {what} do not split evenly over {world.size} ranks (each takes "
                              f"1/{world.size}); use a multiple of {world.size}")
    if cfg.cuda_graph:
        raise ConfigError(f"--cuda-graph: not available with {world.size} ranks yet (the gradient all_reduce would "
                          f"be captured into the graph, which has not been tried on a GPU); drop --cuda-graph")


def start(world: World, device: torch.device, timeout_s: float) -> None:
    """Join the process group (gloo on CPU, NCCL on CUDA); collectives time out after `timeout_s`."""
    global _group
    if not world.active:
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    comm_device = device if device.type == "cuda" else torch.device("cpu")
    _group = _Group(world, comm_device, timeout_s)
    with collective("joining the process group"):
        dist.init_process_group(backend, rank=world.rank, world_size=world.size,
                                timeout=datetime.timedelta(seconds=timeout_s))


def finish() -> None:
    """Leave the process group (if this process joined one)."""
    global _group
    if dist.is_initialized():
        dist.destroy_process_group()
    _group = None


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn a failed collective (a peer's socket closed, a timeout) into a one-line PeerLostError."""
    try:
        yield
    except RuntimeError as exc:  # torch.distributed.DistError and gloo's errors are RuntimeErrors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = re.sub(r"^\[[^\]]*\] ", "", reason)  # gloo's "[.../pair.cc:553] " source location
        rank, timeout_s = (_group.world.rank, _group.timeout_s) if _group is not None else ("?", math.nan)
        raise PeerLostError(f"rank {rank}: {what} failed ({reason[:160]}); another rank crashed, hung for more "
                            f"than --collective-timeout {timeout_s:g} s, or lost its connection") from None


# --- per-rank seeds and paths ---

def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s envs, buffer, exploration and global RNGs: the run's seed on rank 0
    (a plain run's streams), an independent stream for every other rank."""
    if rank == 0:
        return seed
    # < 2**30: envpool and gymnasium seed env i with seed + i, which must stay a 32-bit int
    return int(np.random.SeedSequence(seed, spawn_key=(rank,)).generate_state(1)[0] % 2**30)


def checkpoint_name(rank: int) -> str:
    """Rank 0 writes checkpoint.pt (what a plain run writes, and what `--resume` and
    `fastrl.evaluate` read first); rank r its replay shard and RNGs in checkpoint-rank{r}.pt."""
    return CHECKPOINT_NAME if rank == 0 else CHECKPOINT_NAME.replace(".pt", f"-rank{rank}.pt")


def rank_share(cfg: TrainConfig, world: World) -> TrainConfig:
    """What one rank holds of the run: 1/N of its envs, of each mini-batch and of the replay
    capacity (rounded up). Everything else, and every count of env steps, stays the run's."""
    if not world.active:
        return cfg
    return dataclasses.replace(cfg, num_envs=cfg.num_envs // world.size, batch_size=cfg.batch_size // world.size,
                               buffer_size=-(-cfg.buffer_size // world.size))


def episode_share(episodes: int, world: World) -> int:
    """This rank's part of `episodes` evaluation episodes (the parts add up to `episodes`)."""
    return episodes // world.size + (1 if world.rank < episodes % world.size else 0)


def rank_resume_state(world: World, run_dir: str | Path, main_state: dict[str, Any]) -> dict[str, Any]:
    """This rank's checkpoint of the run being resumed. `main_state` is rank 0's (checkpoint.pt, which
    holds the settings); the run must be resumed with the world size it was trained with."""
    saved = int(main_state.get("world_size", 1))
    if saved != world.size:
        command = f"-m fastrl.train --resume {shlex.quote(str(run_dir))}"
        launch = (f"torchrun with {saved} processes in all (e.g. torchrun --nproc-per-node {saved} {command})"
                  if saved > 1 else f"one process (python {command})")
        raise ConfigError(f"--resume: {str(run_dir)!r} was trained with {saved} rank(s) and this launch has "
                          f"{world.size}; resume it with {launch}")
    if world.is_main:
        return main_state
    state = load_run_checkpoint(run_dir, "--resume", checkpoint_name(world.rank))
    mine, main = state["counters"]["env_step"], main_state["counters"]["env_step"]
    if mine != main:
        raise ConfigError(f"--resume: {checkpoint_name(world.rank)} is at env step {mine} but "
                          f"{checkpoint_name(0)} at {main} (a rank stopped while the checkpoints were written); "
                          f"the run cannot continue exactly")
    return state


# --- the gradient all-reduce (the one collective of every update) ---

def average_gradients_(grads: list[torch.Tensor]) -> None:
    """Replace each gradient by its mean over the ranks: one all_reduce per (flat) gradient. In a
    plain run this returns at once, and torch.compile traces the check away (no graph break)."""
    if _group is None:
        return
    _all_reduce_mean_(grads, _group.world.size)


@torch.compiler.disable  # a collective: run eagerly, as the fused Adam step is
def _all_reduce_mean_(grads: list[torch.Tensor], size: int) -> None:
    with collective("the gradient all_reduce"):
        for g in grads:
            dist.all_reduce(g)  # SUM: gloo has no AVG
            g.mul_(1.0 / size)


# --- the agent's replicated state: broadcast and checksum ---

def replicated_tensors(state: Any) -> list[torch.Tensor]:
    """The floating-point tensors of a nested agent state dict: weights, targets, Adam moments. Every
    rank holds the same ones. (The exploration generator's state is a byte tensor, and per rank.)"""
    if isinstance(state, torch.Tensor):
        return [state] if state.is_floating_point() else []
    items = state.values() if isinstance(state, dict) else state if isinstance(state, (list, tuple)) else ()
    return [t for item in items for t in replicated_tensors(item)]


def broadcast_agent_(world: World, agent: Any) -> None:
    """Give every rank rank 0's weights, targets and optimizer state, in place."""
    if not world.active:
        return
    with collective("the start-up broadcast of rank 0's weights"):
        for t in replicated_tensors(agent.state_dict()):  # module state dicts share the parameters' storage
            if not t.is_contiguous():
                raise ValueError("broadcast_agent_: agent state tensors must be contiguous")
            dist.broadcast(t, src=0)


def checksum(tensors: list[torch.Tensor]) -> int:
    """An exact fingerprint of the tensors' bits: equal on two ranks iff (barring collisions) every
    bit is. Each element's bit pattern is weighted by its position, so swapped values show too."""
    bit_views = {2: torch.int16, 4: torch.int32, 8: torch.int64}
    total = 0
    for i, t in enumerate(tensors):
        bits = t.detach().reshape(-1).view(bit_views[t.element_size()]).to(torch.int64)
        weights = torch.arange(1, bits.numel() + 1, dtype=torch.int64, device=bits.device)
        total += (i + 1) * int((bits * weights).sum())
    return total % (2**61 - 1)


# --- agreement: stop, run folder, pooled metrics ---

def agree_stop(world: World, stop: StopRequest, vector_step: int) -> StopRequest:
    """The stop every rank acts on. A plain run: `stop` itself, every step. N ranks: every
    STOP_CHECK_EVERY vector steps, the highest signal number any rank has received and whether any
    rank's callback asked to stop (one all_reduce of two integers), so all ranks stop after the same
    update; in between, no stop."""
    if not world.active:
        return stop
    if vector_step % STOP_CHECK_EVERY:
        return StopRequest()
    flags = torch.tensor([stop.signum or 0, int(stop.by_caller)], dtype=torch.int64, device=_group.device)
    with collective("the stop agreement"):
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    agreed, by_caller = (int(v) for v in flags.tolist())
    return StopRequest(signal.Signals(agreed) if agreed else None, by_caller=bool(by_caller))


def from_main(world: World, value: Any) -> Any:
    """Rank 0's `value` (a picklable object), on every rank."""
    if not world.active:
        return value
    box = [value]
    with collective("the broadcast of the run settings"):
        dist.broadcast_object_list(box, src=0, device=_group.device)
    return box[0]


def gather(world: World, value: Any, what: str) -> list[Any]:
    """Every rank's `value` (picklable), in rank order, on every rank."""
    if not world.active:
        return [value]
    values: list[Any] = [None] * world.size
    with collective(what):
        dist.all_gather_object(values, value)
    return values


def barrier(world: World, what: str) -> None:
    if world.active:
        with collective(what):
            dist.barrier()


def pool_returns(world: World, returns: list[float]) -> list[float]:
    """Every rank's evaluation returns, rank 0's first."""
    return [r for part in gather(world, returns, "the gather of evaluation returns") for r in part]


Episode = tuple[int, float, int]  # (env, return, length)


def pool_window(world: World, means: dict[str, float], episodes: list[Episode], actions: list[torch.Tensor],
                agent: Any) -> tuple[dict[str, float], list[Episode], list[torch.Tensor]]:
    """One log window over all ranks, in one all_gather: each update metric's mean averaged over
    the ranks (each made the same updates), the finished episodes and the played actions (one
    tensor per vector step) pooled. The ranks' weight checksums travel with them and must agree:
    ReplicaMismatchError otherwise. A plain run gets its own window back."""
    if not world.active:
        return means, episodes, actions
    device = actions[0].device
    mine = (means, episodes, torch.stack(actions).cpu(), checksum(replicated_tensors(agent.state_dict())))
    parts = gather(world, mine, "the per-window gather of metrics")
    sums = [part[3] for part in parts]
    if len(set(sums)) > 1:
        raise ReplicaMismatchError(f"the ranks' weights differ (checksums {', '.join(f'{s:x}' for s in sums)} of "
                                   f"ranks 0..{world.size - 1}): their updates are no longer identical")
    pooled_means = {name: sum(part[0][name] for part in parts) / world.size for name in means}
    pooled_episodes = [episode for part in parts for episode in part[1]]
    pooled_actions = list(torch.cat([part[2] for part in parts], dim=1).to(device).unbind(0))
    return pooled_means, pooled_episodes, pooled_actions
