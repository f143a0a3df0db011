"""One rank of the update-equivalence check in tests/test_distributed.py:
`python -m tests.distributed_worker OUT_DIR`, started once per rank with torchrun's env vars.

Each rank builds every case's agent from a seed of its own (the start-up broadcast must make the
weights equal), takes one update on its own mini-batch (`batch_for(case, rank)`), and saves its
weights. Then rank 1 nudges one weight and both ranks pool a log window, which must refuse the
mismatch on both.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from benchmarks.common import random_batch
from fastrl import distributed
from fastrl.config import resolve
from fastrl.envs import lookup_spec
from fastrl.registry import build_agent

BATCH = 16
# (algo, env, gradients, extra settings); clipping bites (max_grad_norm small), so the all_reduce
# must come before the clip for the ranks to match the update on the union of their batches.
CASES = {
    "dqn-manual": ("dqn", "CartPole-v1", "manual", {}),
    "dqn-autograd": ("dqn", "CartPole-v1", "autograd", {}),
    "ddpg-manual": ("ddpg", "Pendulum-v1", "manual", {}),  # an actor step on every update
    "ddpg-autograd": ("ddpg", "Pendulum-v1", "autograd", {}),
    # twin critics; no smoothing noise, which each rank would draw from its own generator
    "td3-manual": ("td3", "Pendulum-v1", "manual", {"policy_delay": 1, "policy_noise": 0.0}),
    # actor and tuned-α steps on every update; without a clip too, so no step can skip the all_reduce
    "sac-manual": ("sac", "Pendulum-v1", "manual", {}),
    "sac-autograd-unclipped": ("sac", "Pendulum-v1", "autograd", {"max_grad_norm": 0.0}),
}
# SAC's actor noise comes from the agent's generator, drawn per update for that rank's rows: the
# ranks must match each other, but not the update on the union (which draws other noise).
OWN_NOISE = {"sac-manual", "sac-autograd-unclipped"}


def build(case: str):
    algo, env, gradients, extra = CASES[case]
    cfg = resolve({"algo": algo, "env": env, "batch_size": BATCH, "hidden_sizes": (16, 16), "gradients": gradients,
                   "max_grad_norm": 0.05, **extra})
    spec = lookup_spec(env)
    return spec, build_agent(spec, cfg, torch.device("cpu"), False)


def batch_for(spec, rank: int):
    return random_batch(spec, BATCH, torch.device("cpu"), seed=rank)


def weights(agent) -> list[torch.Tensor]:
    return [t.clone() for t in distributed.replicated_tensors(agent.state_dict())]


def main(out_dir: str) -> int:
    torch.set_num_threads(1)
    world = distributed.world_from_env()
    distributed.start(world, torch.device("cpu"), timeout_s=30)
    results = {}
    for case in CASES:
        torch.manual_seed(1000 + world.rank)  # different weights on each rank until the broadcast
        spec, agent = build(case)
        distributed.broadcast_agent_(world, agent)
        start = weights(agent)
        agent.update(batch_for(spec, world.rank))
        results[case] = {"start": start, "after": weights(agent)}

    if world.rank == 1:
        next(iter(agent.actor.parameters())).data.view(-1)[0] += 1e-6
    try:
        distributed.pool_window(world, {"loss": 1.0}, [], [torch.zeros(2)], agent)
        results["mismatch"] = None
    except distributed.ReplicaMismatchError as exc:
        results["mismatch"] = str(exc)
    torch.save(results, Path(out_dir) / f"rank{world.rank}.pt")
    distributed.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
