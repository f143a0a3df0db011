"""End-to-end env steps per second: a short `fastrl.train.train` run (collect, store, update,
log, final evaluation) with each task's preset, measured once. Eager on every device: compile
time would dominate a run this short (test_learner.py measures the compiled update).

The benchmark time is the whole call, env construction and the final evaluation included;
`extra_info.sps` is the trainer's own figure (env steps / loop time).
"""

from __future__ import annotations

import time

import pytest

from benchmarks.common import needs_algo
from fastrl.config import resolve

TASKS = {"dqn": "CartPole-v1", "td3": "Pendulum-v1"}
TOTAL_STEPS = 5_000


@pytest.mark.parametrize("algo", list(TASKS))
def test_train_sps(benchmark, device, algo, tmp_path):
    needs_algo(algo)
    from fastrl.train import check_setup, train

    benchmark.group = f"end-to-end-{device.type}"
    cfg = resolve({"algo": algo, "env": TASKS[algo], "total_steps": TOTAL_STEPS, "device": device.type,
                   "compile": False, "progress": False, "run_dir": str(tmp_path / "run")})
    spec, dev = check_setup(cfg)
    summaries = []

    def run():
        summaries.append(train(cfg, spec, dev, time.perf_counter()))

    benchmark.pedantic(run, rounds=1, iterations=1)
    summary = summaries[-1]
    benchmark.extra_info.update({
        "env": cfg.env, "env_steps": summary["env_steps"], "sps": round(summary["sps"], 1),
        "updates": summary["updates"], "batch_size": cfg.batch_size,
        "updates_per_s": round(summary["updates"] / summary["wall_s"], 1),
    })
