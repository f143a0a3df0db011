"""Same workload through fastrl and its peers, Stable-Baselines3 (PyTorch) and SBX (SB3 in JAX), in
one run, on this machine; prints each peer's speed ratio to fastrl.

    pip install -e '.[peers,sbx]'
    python scripts/compare_peers.py dqn            # DQN CartPole-v1, CleanRL's settings (MSE), 100k steps
    python scripts/compare_peers.py dqn --dqn-loss huber   # the same with SB3's Huber loss clipped at 10
    python scripts/compare_peers.py td3            # TD3 Pendulum-v1, batch 256, 256-256, UTD 1
    python scripts/compare_peers.py ddpg --threads 2   # DDPG, same settings; all sides on 2 threads
    python scripts/compare_peers.py sac            # SAC Pendulum-v1, the same settings, auto entropy
    python scripts/compare_peers.py sac --threads 1 --cores 1   # every side held to one core (SBX too)
    python scripts/compare_peers.py dqn --peers sb3 --sb3-envs 1 8 --out cmp.json
    python scripts/compare_peers.py mountaincar --peers sb3 --seeds 1 2   # DQN, the RL Zoo's tuned settings, 120k

Wall time covers env creation, model creation and training on every side (JAX's and torch.compile's
compilation included); imports are excluded. The update-to-data ratio (gradient updates per env
transition) and the batch size are equal on all sides and printed, so the speed ratio compares
equal work; final greedy returns are printed beside it, so it compares equal learning too.

Where SBX cannot be set like the others, the printout says so: its DQN has no gradient clipping
(--dqn-loss huber clips on the other sides) and its Q-net is n×n (n the first of net_arch: CleanRL's
120-84 runs as 120-120). SB3 runs on the CPU (--peers-device), and so does SBX (JAX_PLATFORMS).

--threads N sets torch's threads on both torch sides. XLA's CPU client ignores its thread flags
(`--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1` still ran a 1024² matmul on
both cores here, 3.5 CPU-s per 1.8 wall-s), so SBX always uses every core the process may use;
--cores N pins the whole process to N CPUs (sched_setaffinity), which holds every side to N cores.
Each side's CPU seconds are printed beside its wall time (CPU s / wall s is the number of cores it
kept busy), so an unequal share of the machine shows.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import math
import os
import sys
import time
import types
import unittest.mock
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastrl.config import ConfigError, resolve
from fastrl.learner import PRECISIONS
from fastrl.train import check_setup, train

PEER_MODULES = {"sb3": "stable_baselines3", "sbx": "sbx"}
PEERS = tuple(PEER_MODULES)


@dataclass
class Workload:
    env_id: str
    total_steps: int
    fastrl: dict  # fastrl settings
    sb3_algo: str
    sb3_kwargs: dict
    sb3_mse_loss: bool = False  # SB3's and SBX's DQN hard-code the Huber loss: swap in MSE for their runs
    sb3_schedule: tuple[int, int] | None = None  # DQN (train_freq, gradient_steps) of one env, if not CleanRL's


def dqn_workload(steps: int, num_envs: int, loss: str = "mse") -> Workload:
    # CleanRL dqn.py: batch 128, 120-84, lr 2.5e-4, buffer 10k, 10k learning starts, one update per
    # 10 transitions, target copied every 500 transitions (= 50 updates), eps 1 -> 0.05 over half,
    # MSE loss, no gradient clipping, no Double DQN. SB3's DQN defaults to a Huber loss clipped at
    # norm 10; `loss="huber"` sets both sides that way. (At these settings the Huber runs diverge
    # on both sides: their Q values grow without bound and neither learns; see BENCHMARKS.md.)
    # fastrl steps `num_envs` envs at once and trains every 5 vector steps, num_envs / 2 updates:
    # the same 0.1 updates per transition.
    if num_envs % 2:
        raise SystemExit("compare_peers: --fastrl-envs must be even for DQN (num_envs / 2 updates every 5 steps)")
    clip = 10.0 if loss == "huber" else 0.0
    fastrl = dict(algo="dqn", env="CartPole-v1", total_steps=steps, num_envs=num_envs, buffer_size=10_000,
                  batch_size=128, learning_starts=10_000, train_every=5, updates_per_train=num_envs // 2, lr=2.5e-4,
                  lr_schedule="constant", gamma=0.99, target_update="hard", target_period=50,
                  hidden_sizes=(120, 84), loss=loss, double_dqn=False, max_grad_norm=clip, n_step=1,
                  eps_start=1.0, eps_end=0.05, eps_fraction=0.5, eval_episodes=10, eval_every=0, log_every=20_000)
    sb3 = dict(learning_rate=2.5e-4, buffer_size=10_000, learning_starts=10_000, batch_size=128, tau=1.0,
               gamma=0.99, target_update_interval=500, exploration_fraction=0.5, exploration_initial_eps=1.0,
               exploration_final_eps=0.05, max_grad_norm=clip or math.inf, policy_kwargs=dict(net_arch=[120, 84]))
    return Workload("CartPole-v1", steps, fastrl, "DQN", sb3, sb3_mse_loss=loss == "mse")


def mountaincar_workload(steps: int, num_envs: int) -> Workload:
    # The RL Baselines3 Zoo's tuned DQN for MountainCar-v0 (its hyperparams/dqn.yml: 120k steps),
    # on one env (--fastrl-envs and --sb3-envs are not used): 8 updates every 16 steps, batch 128,
    # 256-256, lr 4e-3, buffer 10k, gamma 0.98, eps 1 -> 0.07 over a fifth, and SB3's own defaults
    # for the rest: Huber loss, clipping at norm 10, no Double DQN, 1-step targets. SB3 counts its
    # target period of 600 in env steps, which is 300 gradient updates: fastrl counts updates.
    # A sparse-reward env whose defaults learn nothing (BENCHMARKS.md): a check of equal learning.
    fastrl = dict(algo="dqn", env="MountainCar-v0", total_steps=steps, num_envs=1, buffer_size=10_000,
                  batch_size=128, learning_starts=1_000, train_every=16, updates_per_train=8, lr=4e-3,
                  lr_schedule="constant", gamma=0.98, target_update="hard", target_period=300,
                  hidden_sizes=(256, 256), loss="huber", double_dqn=False, max_grad_norm=10.0, n_step=1,
                  eps_start=1.0, eps_end=0.07, eps_fraction=0.2, eval_episodes=10, eval_every=0, log_every=20_000)
    sb3 = dict(learning_rate=4e-3, buffer_size=10_000, learning_starts=1_000, batch_size=128, tau=1.0,
               gamma=0.98, target_update_interval=600, exploration_fraction=0.2, exploration_initial_eps=1.0,
               exploration_final_eps=0.07, max_grad_norm=10.0, policy_kwargs=dict(net_arch=[256, 256]))
    return Workload("MountainCar-v0", steps, fastrl, "DQN", sb3, sb3_schedule=(16, 8))


def td3_workload(steps: int, num_envs: int) -> Workload:
    # One env and one update per step, as the peers run it (--fastrl-envs is ignored here).
    fastrl = dict(algo="td3", env="Pendulum-v1", total_steps=steps, num_envs=1, buffer_size=steps,
                  batch_size=256, learning_starts=min(5_000, steps // 2), train_every=1, updates_per_train=1,
                  lr=3e-4, gamma=0.99, tau=0.005, target_update="soft", policy_delay=2, hidden_sizes=(256, 256),
                  exploration_noise=0.1, eval_episodes=10, eval_every=0, log_every=5_000)
    sb3 = dict(learning_rate=3e-4, buffer_size=steps, learning_starts=min(5_000, steps // 2), batch_size=256,
               tau=0.005, gamma=0.99, policy_delay=2, policy_kwargs=dict(net_arch=[256, 256]))
    return Workload("Pendulum-v1", steps, fastrl, "TD3", sb3)


def ddpg_workload(steps: int, num_envs: int) -> Workload:
    # As td3_workload, with one critic, no target smoothing and an actor step after every critic step.
    work = td3_workload(steps, num_envs)
    fastrl = {**work.fastrl, "algo": "ddpg", "policy_delay": 1}
    sb3 = {k: v for k, v in work.sb3_kwargs.items() if k != "policy_delay"}
    return Workload(work.env_id, steps, fastrl, "DDPG", sb3)


def sac_workload(steps: int, num_envs: int) -> Workload:
    # As td3_workload: one env, batch 256, 256-256, one update per env step, the same random start;
    # the entropy coefficient tuned automatically towards -dim(A) (the peers' default), a critic
    # and actor update every step (fastrl: --policy-delay 1), soft targets every update.
    work = td3_workload(steps, num_envs)
    fastrl = {k: v for k, v in work.fastrl.items() if k != "exploration_noise"}
    fastrl.update(algo="sac", policy_delay=1)
    sb3 = {k: v for k, v in work.sb3_kwargs.items() if k != "policy_delay"}
    return Workload(work.env_id, steps, fastrl, "SAC", sb3)


WORKLOADS = {"dqn": dqn_workload, "mountaincar": mountaincar_workload, "td3": td3_workload, "ddpg": ddpg_workload,
             "sac": sac_workload}
DEFAULT_STEPS = {"dqn": 100_000, "mountaincar": 120_000}  # the others: 15k


def run_fastrl(work: Workload, seed: int, run_dir: Path, threads: int) -> dict:
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        cfg = resolve({**work.fastrl, "seed": seed, "run_dir": str(run_dir / f"fastrl-{seed}"), "progress": False,
                       "threads": threads})
        spec, device = check_setup(cfg)
    except ConfigError as exc:  # e.g. an algorithm this fastrl does not have yet: the peers still run
        print(f"compare_peers: fastrl cannot run this workload: {exc}", file=sys.stderr)
        return {"wall_s": math.nan, "error": str(exc)}
    summary = train(cfg, spec, device, t0)
    # The final greedy evaluation is timed apart and left out, as it is on the SB3 side.
    # CPU seconds include the final evaluation's (a single-env greedy rollout, one core at most).
    return {"wall_s": time.perf_counter() - t0 - summary["eval_s"], "eval_s": summary["eval_s"],
            "cpu_s": time.process_time() - cpu0,
            "final_eval_return_mean": summary["final_eval_return_mean"],
            "updates": summary["updates"], "env_steps": summary["env_steps"], "num_envs": cfg.num_envs,
            "updates_per_transition": summary["updates_per_transition"], "batch_size": cfg.batch_size}


def peer_module(peer: str, device: str) -> types.ModuleType:
    """`stable_baselines3` or `sbx`; SBX's JAX is pointed at `device` before its first import."""
    if peer == "sbx":
        os.environ.setdefault("JAX_PLATFORMS", "cpu" if device == "cpu" else "cuda")
    return importlib.import_module(PEER_MODULES[peer])


def unsupported_peer_envs(work: Workload, n_envs: list[int]) -> str | None:
    """Why the peers cannot run `work` on these vector sizes (a tuned one-env schedule), or None."""
    if work.sb3_schedule is not None and list(n_envs) != [1]:
        return f"--sb3-envs: {work.env_id}'s DQN schedule is for one env; drop --sb3-envs"
    return None


def peer_kwargs(peer: str, work: Workload, n_envs: int) -> tuple[dict, float]:
    """The peer's constructor settings for `work` with `n_envs` envs, and its updates per transition."""
    kwargs = dict(work.sb3_kwargs)
    if work.sb3_algo == "DQN":
        if (why := unsupported_peer_envs(work, [n_envs])) is not None:
            raise SystemExit(f"compare_peers: {why}")
        if work.sb3_schedule is not None:  # a fixed one-env schedule
            train_freq, gradient_steps = work.sb3_schedule
        else:  # one update per 10 transitions with n_envs envs: every 10 vector steps, n_envs updates
            train_freq, gradient_steps = 10, n_envs
        kwargs.update(train_freq=train_freq, gradient_steps=gradient_steps)
        if peer == "sbx":
            kwargs.pop("max_grad_norm")  # SBX's DQN does not clip
            # SB3 counts its target period in transitions (vector steps x n_envs), SBX in vector steps
            kwargs["target_update_interval"] = max(kwargs["target_update_interval"] // n_envs, 1)
        return kwargs, gradient_steps / (train_freq * n_envs)
    kwargs.update(train_freq=1, gradient_steps=n_envs)
    if peer == "sbx":
        kwargs["qf_learning_rate"] = kwargs["learning_rate"]  # SBX's DDPG defaults its critic to 1e-3
    if work.sb3_algo in ("TD3", "DDPG") and kwargs.get("action_noise") is None:  # SAC explores by its entropy
        from stable_baselines3.common.noise import NormalActionNoise

        kwargs["action_noise"] = NormalActionNoise(np.zeros(1), 0.1 * 2.0 * np.ones(1))
    return kwargs, n_envs / n_envs


def mse_instead_of_huber(peer: str) -> contextlib.AbstractContextManager:
    """SB3's and SBX's DQN compute a Huber loss; only their DQN module sees the squared error instead."""
    if peer == "sb3":  # torch: SB3's DQN module calls F.smooth_l1_loss
        import stable_baselines3.dqn.dqn as sb3_dqn

        functional = types.SimpleNamespace(**{**vars(torch.nn.functional), "smooth_l1_loss": torch.nn.functional.mse_loss})
        return unittest.mock.patch.object(sb3_dqn, "F", functional)
    import optax
    import sbx.dqn.dqn as sbx_dqn  # JAX: optax.huber_loss, looked up when its update is first traced

    squared = types.SimpleNamespace(**{**vars(optax), "huber_loss": optax.squared_error})
    return unittest.mock.patch.object(sbx_dqn, "optax", squared)


def run_peer(peer: str, work: Workload, seed: int, n_envs: int, device: str) -> dict:
    lib = peer_module(peer, device)
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    kwargs, upt = peer_kwargs(peer, work, n_envs)
    loss_swap = mse_instead_of_huber(peer) if work.sb3_mse_loss else contextlib.nullcontext()
    device_kwarg = {"device": device} if peer == "sb3" else {}
    t0, cpu0 = time.perf_counter(), time.process_time()
    with loss_swap:
        env = make_vec_env(work.env_id, n_envs=n_envs, seed=seed)
        model = getattr(lib, work.sb3_algo)("MlpPolicy", env, seed=seed, verbose=0, **device_kwarg, **kwargs)
        model.learn(total_timesteps=work.total_steps)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    eval_env = make_vec_env(work.env_id, n_envs=1, seed=seed + 100_003)
    mean, _std = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
    return {"wall_s": wall, "cpu_s": cpu, "final_eval_return_mean": float(mean),
            "updates": int(model._n_updates),
            "env_steps": int(model.num_timesteps), "updates_per_transition": upt,
            "batch_size": kwargs["batch_size"], "num_envs": n_envs}


def peer_notes(peers: list[str], work: Workload) -> list[str]:
    """What a peer runs differently from the others on this workload."""
    notes = []
    if "sbx" in peers and work.sb3_algo == "DQN":
        arch = work.sb3_kwargs["policy_kwargs"]["net_arch"]
        notes.append(f"sbx: DQN Q-net {arch[0]}-{arch[0]} (SBX's DQN takes only the first of net_arch {arch})")
        if math.isfinite(work.sb3_kwargs["max_grad_norm"]):
            notes.append(f"sbx: no gradient clipping (the others clip at {work.sb3_kwargs['max_grad_norm']:g})")
    return notes


def pin_to_cores(cores: int) -> str:
    """Pin this process (every thread it starts later, XLA's pool included) to `cores` CPUs."""
    allowed = sorted(os.sched_getaffinity(0))
    if cores >= len(allowed):
        return f"all {len(allowed)} cores"
    os.sched_setaffinity(0, allowed[:cores])
    return f"pinned to CPU {','.join(map(str, allowed[:cores]))}"


def installed(peer: str) -> bool:
    return importlib.util.find_spec(PEER_MODULES[peer]) is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=tuple(WORKLOADS))
    parser.add_argument("--steps", type=int, default=None,
                        help="env steps (default: dqn 100k, mountaincar 120k, the others 15k)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=None,
                        help="peers to run (default: those installed of sb3, sbx)")
    parser.add_argument("--sb3-envs", type=int, nargs="+", default=[1], help="the peers' vector sizes to run")
    parser.add_argument("--fastrl-envs", type=int, default=64, help="fastrl's vector size for dqn (default 64)")
    parser.add_argument("--dqn-loss", choices=("mse", "huber"), default="mse",
                        help="dqn: CleanRL's MSE without clipping (default), or SB3's Huber clipped at 10")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, the same for both sides (default 1, fastrl's CPU default)")
    parser.add_argument("--cores", type=int, default=None,
                        help="pin the process to this many CPUs (default: not pinned); the only way to hold "
                             "SBX's XLA to fewer cores than the machine has")
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                        help="fastrl's --precision (SB3 and SBX train in fp32 either way)")
    parser.add_argument("--peers-device", choices=("cpu", "cuda"), default="cpu",
                        help="where SB3 trains (its device) and SBX's JAX runs (JAX_PLATFORMS); default cpu")
    parser.add_argument("--run-dir", default="runs/compare", help="fastrl run folders go here")
    parser.add_argument("--out", default=None, help="write all results as JSON here")
    args = parser.parse_args(argv)
    cpus = len(os.sched_getaffinity(0))
    if args.cores is not None and not 1 <= args.cores <= cpus:
        parser.error(f"--cores {args.cores}: this process may use 1 to {cpus} CPUs")
    steps = args.steps or DEFAULT_STEPS.get(args.workload, 15_000)
    work = (dqn_workload(steps, args.fastrl_envs, args.dqn_loss) if args.workload == "dqn"
            else WORKLOADS[args.workload](steps, args.fastrl_envs))
    if (why := unsupported_peer_envs(work, args.sb3_envs)) is not None:  # before any run
        parser.error(why)
    peers = args.peers or [p for p in PEERS if installed(p)]
    missing = [p for p in peers if not installed(p)]
    if missing or not peers:
        extra = {"sb3": "peers", "sbx": "sbx"}
        print(f"compare_peers: --peers: {', '.join(missing) or 'none'} not installed; pip install -e "
              f"'.[{','.join(extra[p] for p in (missing or PEERS))}]'", file=sys.stderr)
        return 2
    pinned = pin_to_cores(args.cores or cpus)
    work.fastrl["precision"] = args.precision
    # Imports stay out of the timing on both sides: fastrl plots its learning curve with matplotlib
    # and builds envpool envs (whose import registers every env id).
    import envpool  # noqa: F401
    import matplotlib.pyplot  # noqa: F401

    results: dict[str, list[dict]] = {"fastrl": []}
    for seed in args.seeds:
        results["fastrl"].append(run_fastrl(work, seed, Path(args.run_dir), args.threads))
        torch.set_num_threads(args.threads)
        for peer in peers:
            for n_envs in args.sb3_envs:
                results.setdefault(f"{peer}_{n_envs}env", []).append(
                    run_peer(peer, work, seed, n_envs, args.peers_device))
    versions = ", ".join(f"{p} {importlib.import_module(PEER_MODULES[p]).__version__}" for p in peers)
    print(f"\n{args.workload} {work.env_id}, {work.total_steps} env steps, torch {torch.__version__}, {versions}, "
          f"{torch.get_num_threads()} threads, {pinned}; wall s = env and model creation + training (no eval)")
    for note in peer_notes(peers, work):
        print(f"note: {note}")
    print(f"{'run':<10} {'seed':>4} {'envs':>4} {'wall s':>8} {'cpu s':>8} {'SPS':>8} {'updates':>8} "
          f"{'upd/trans':>9} {'batch':>6} {'eval return':>11}")
    for name, rows in results.items():
        for seed, r in zip(args.seeds, rows):
            if "error" in r:
                print(f"{name:<10} {seed:>4} did not run: {r['error']}")
                continue
            print(f"{name:<10} {seed:>4} {r['num_envs']:>4} {r['wall_s']:>8.2f} {r['cpu_s']:>8.1f} "
                  f"{r['env_steps'] / r['wall_s']:>8.0f} "
                  f"{r['updates']:>8} {r['updates_per_transition']:>9.3g} {r['batch_size']:>6} "
                  f"{r['final_eval_return_mean']:>11.1f}")
    ours = float(np.mean([r["wall_s"] for r in results["fastrl"]]))
    print(f"{'peer':<10} {'mean wall s':>11} {'peer / fastrl wall time':>24}")
    for name, rows in results.items():
        if name != "fastrl":
            theirs = float(np.mean([r["wall_s"] for r in rows]))
            ratio = f"{theirs / ours:.2f}x" if math.isfinite(ours) else "(no fastrl run)"
            print(f"{name:<10} {theirs:>11.2f} {ratio:>24}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(math.isfinite(r["wall_s"]) for rows in results.values() for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
