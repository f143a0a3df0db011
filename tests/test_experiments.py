"""The hard-vs-soft × batch-size experiment: grid parsing, report and plots from results, and a
tiny real run end to end (resumed on a second call)."""

from __future__ import annotations

import json

import pytest
import torch

from fastrl.experiments import updates
from fastrl.experiments.aggregate import summarize
from fastrl.experiments.grid import QUICK, Grid, RunSpec, Task, TargetSetting
from fastrl.experiments.report import RunContext
from fastrl.experiments.runner import RunResult, steps_to_threshold


def test_target_setting_parse_and_overrides():
    assert TargetSetting.parse("hard:500").overrides() == {"target_update": "hard", "target_period": 500}
    assert TargetSetting.parse("soft:0.005").overrides() == {"target_update": "soft", "tau": 0.005}
    for bad in ("hard", "soft:0", "soft:2", "lerp:0.1", "hard:0"):
        with pytest.raises(ValueError):
            TargetSetting.parse(bad)


def test_quick_grid_holds_env_steps_and_updates_per_transition_fixed():
    for task in QUICK.tasks:
        cfgs = [spec.config("runs") for spec in QUICK.runs() if spec.task == task]
        assert {c.total_steps for c in cfgs} == {task.total_steps}
        assert len({c.updates_per_transition for c in cfgs}) == 1
        assert {c.batch_size for c in cfgs} == set(QUICK.batch_sizes)


def test_steps_to_threshold_needs_two_consecutive_evals():
    curve = [(1000, 500.0), (2000, 20.0), (3000, 480.0), (4000, 500.0), (5000, 100.0)]
    assert steps_to_threshold(curve, 475.0) == 3000
    assert steps_to_threshold(curve[:4], 490.0) is None
    assert steps_to_threshold([(1000, 500.0)], 475.0) is None


def fake_result(task: Task, target: TargetSetting, batch: int, seed: int) -> RunResult:
    final = 100.0 * seed + batch / 10
    curve = [(1000, final / 2), (2000, final)]
    return RunResult(
        name=RunSpec(task, target, batch, seed).name, task=task.name, algo=task.algo, env=task.env,
        target=target.label, target_kind=target.kind, target_value=target.value, batch_size=batch, seed=seed,
        final_return_mean=final, final_return_std=1.0, steps_to_threshold=2000 if final >= task.threshold else None,
        wall_s=10.0, sps=200.0, env_steps=2000, updates=500, updates_per_s=50.0 - batch / 100,
        updates_per_transition=0.25, replay_ratio=0.25 * batch, curve=curve,
    )


def test_report_and_plots_from_results(tmp_path):
    task = Task("dqn", "CartPole-v1", 2000, 150.0, 1000)
    targets = (TargetSetting("hard", 100), TargetSetting("soft", 0.01))
    grid = Grid((task,), targets, (32, 128), (1, 2))
    results = [fake_result(task, t, b, s) for t in targets for b in grid.batch_sizes for s in grid.seeds]
    summaries = summarize(results)
    assert len(summaries) == 4
    first = next(s for s in summaries if s.target == "hard C=100" and s.batch_size == 32)
    assert first.return_mean == pytest.approx((103.2 + 203.2) / 2)
    assert first.reached == 1 and first.steps_to_threshold == 2000
    assert first.curve_steps == [1000, 2000]

    ctx = RunContext(command="test", date="today", jobs=1, threads=1, wall_s=1.0, skipped=[], reused_runs=0)
    report = updates.write_outputs(tmp_path, grid, results, ctx).read_text()
    assert "| hard C=100 | 32 | 8 | 153.2 ± 50.0 | 1/2 | 2,000 |" in report
    assert "replay ratio" in report and "updates per transition" in report.lower()
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["curves_dqn-CartPole-v1.png", "return_vs_batch.png", "throughput_vs_batch.png"]
    assert all(f"]({name})" in report for name in pngs)


def test_tiny_experiment_end_to_end_and_resume(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--algos", "dqn", "--total-steps", "400", "--batch-sizes", "16", "32",
            "--targets", "hard:20", "soft:0.05", "--seeds", "1", "--threads", str(torch.get_num_threads()),
            "--set", "learning_starts=200", "eval_episodes=2", "hidden_sizes=[16]", "num_envs=4",
            "device=cpu"]  # on a GPU machine --device auto would compile every run afresh
    assert updates.main(argv) == 0
    err = capsys.readouterr().err
    assert "= 4 runs" in err and "replay ratio" in err
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == 4 and all(r["updates"] > 0 and r["env_steps"] == 400 for r in results)
    assert len({r["replay_ratio"] for r in results}) == 2  # grows with the batch; updates fixed
    assert len(list((tmp_path / "runs").iterdir())) == 4
    assert (tmp_path / "report.md").is_file() and len(list(tmp_path.glob("*.png"))) >= 2

    assert updates.main(argv) == 0  # every run is read back, none retrained
    assert "4 of 4 runs read back" in (tmp_path / "report.md").read_text()
