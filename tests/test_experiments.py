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


def tiny_experiment(out, *extra):
    return ["--out", str(out), "--algos", "dqn", "--total-steps", "400", "--batch-sizes", "16", "32",
            "--targets", "hard:20", "soft:0.05", "--seeds", "1", "--threads", str(torch.get_num_threads()),
            "--set", "learning_starts=200", "eval_episodes=2", "hidden_sizes=[16]", "num_envs=4",
            "device=cpu", *extra]  # on a GPU machine --device auto would compile every run afresh


def test_tiny_experiment_end_to_end_and_resume(tmp_path, capsys):
    argv = tiny_experiment(tmp_path)
    assert updates.main(argv) == 0
    err = capsys.readouterr().err
    assert "= 4 runs in 2 processes" in err and "replay ratio" in err
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == 4 and all(r["updates"] > 0 and r["env_steps"] == 400 for r in results)
    assert len({r["replay_ratio"] for r in results}) == 2  # grows with the batch; updates fixed
    assert all(r["members_in_process"] == 2 for r in results)
    # One stacked process per batch size, its members the two target settings.
    runs = sorted((tmp_path / "runs").iterdir())
    assert [r.name for r in runs] == ["dqn-CartPole-v1-b16-s1-hard20_soft0.05", "dqn-CartPole-v1-b32-s1-hard20_soft0.05"]
    assert json.loads((runs[0] / "config.json").read_text())["threads"] == torch.get_num_threads()  # --threads
    members = json.loads((runs[0] / "summary.json").read_text())["members"]
    assert [m["settings"] for m in members] == [{"target_update": "hard", "target_period": 20},
                                                {"target_update": "soft", "tau": 0.05}]
    by_name = {r["name"]: r for r in results}
    assert by_name["dqn-CartPole-v1-hard20-b16-s1"]["final_return_mean"] == members[0]["final_eval_return_mean"]
    assert by_name["dqn-CartPole-v1-soft0.05-b16-s1"]["final_return_mean"] == members[1]["final_eval_return_mean"]
    report = (tmp_path / "report.md").read_text()
    assert "stacked members of one process (2 members" in report and len(list(tmp_path.glob("*.png"))) >= 2

    assert updates.main(argv) == 0  # every run is read back, none retrained
    assert "4 of 4 runs read back" in (tmp_path / "report.md").read_text()


def test_separate_trains_every_run_as_its_own_process(tmp_path, capsys):
    assert updates.main(tiny_experiment(tmp_path, "--separate")) == 0
    assert "= 4 runs in 4 processes" in capsys.readouterr().err
    assert len(list((tmp_path / "runs").iterdir())) == 4
    results = json.loads((tmp_path / "results.json").read_text())
    assert all(r["members_in_process"] == 1 for r in results)
    assert "Every run trained as its own process" in (tmp_path / "report.md").read_text()


def test_stacked_processes_cover_every_run_once_in_blocks_of_consecutive_seeds():
    grid = Grid((Task("dqn", "CartPole-v1", 1000, 475.0, 500), Task("td3", "Pendulum-v1", 1000, -200.0, 500)),
                (TargetSetting("hard", 10), TargetSetting("soft", 0.01)), (32, 64), (1, 2, 5))
    processes = grid.processes({"dqn"})
    assert sorted(s.name for p in processes for s in p.specs) == sorted(s.name for s in grid.runs())
    dqn = [p for p in processes if p.task.algo == "dqn"]
    assert [(p.batch_size, p.seeds) for p in dqn] == [(32, (1, 2)), (32, (5,)), (64, (1, 2)), (64, (5,))]
    cfg = dqn[0].config("/tmp/runs")
    assert cfg.sweep == ("target=hard:10,soft:0.01",) and cfg.num_seeds == 2 and cfg.seed == 1
    assert len([p for p in processes if p.task.algo == "td3"]) == 2 * 2 * 3  # not stackable here: alone
