"""Metrics are named: whatever an update returns is summed by name on the device and reaches
metrics.csv, TensorBoard and the progress line; new names add columns, none is dropped."""

import csv
import math
import sys
import types

import pytest
import torch

import fastrl.train as train_mod
from fastrl.metrics import MetricWindow
from fastrl.progress import Progress
from fastrl.runlog import RunLog, read_metrics


def test_window_means_each_name_over_the_updates_that_returned_it():
    window = MetricWindow()
    for i in range(4):
        metrics = {"loss": torch.tensor(float(i)), "grad_norm": torch.tensor(1.0)}
        if i % 2:  # e.g. TD3's actor metrics, on actor updates only
            metrics["actor_loss"] = torch.tensor(10.0 * i)
        window.add(metrics)
    means = window.means()
    assert means == {"loss": 1.5, "grad_norm": 1.0, "actor_loss": 20.0}
    assert window.updates == 4
    window.add({"loss": torch.tensor(math.nan)})
    assert math.isnan(window.means()["loss"])  # one NaN poisons the window: the guard sees it
    window.reset()
    assert window.means() == {} and window.updates == 0


def test_a_new_column_is_added_and_earlier_rows_keep_theirs(tmp_path):
    log = RunLog(tmp_path, {"x": 1})
    log.write({"env_step": 1, "loss": 0.5})
    log.write({"env_step": 2, "loss": 0.25, "alpha": 0.1})
    log.close()
    rows = read_metrics(tmp_path)
    assert [r["env_step"] for r in rows] == ["1", "2"]
    assert rows[0]["alpha"] == "" and rows[1]["alpha"] == "0.1" and rows[0]["loss"] == "0.5"
    # A resumed run appends under the same header, and can widen it again.
    log = RunLog(tmp_path, {"x": 1}, append=True)
    log.write({"env_step": 3, "loss": 0.1, "alpha": 0.2, "entropy": -1.0})
    log.close()
    with open(tmp_path / "metrics.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header.count("alpha") == 1 and "entropy" in header
    assert [r["entropy"] for r in read_metrics(tmp_path)] == ["", "", "-1"]


class _FakeWriter:
    scalars: list = []

    def __init__(self, log_dir):
        pass

    def add_scalar(self, tag, value, step):
        _FakeWriter.scalars.append((tag, value, step))

    def close(self):
        pass


def test_a_metric_an_update_returns_reaches_the_csv_tensorboard_and_progress(tmp_path, monkeypatch, capsys):
    # TensorBoard is optional and not installed here: stand in for its writer to see what reaches it.
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = _FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    _FakeWriter.scalars = []
    real_build = train_mod.build_agent

    def build(spec, cfg, device, use_compile):
        agent = real_build(spec, cfg, device, use_compile)
        update = agent.update

        def update_with_a_new_metric(batch):
            return {**update(batch), "brand_new": torch.tensor(7.0)}

        agent.update = update_with_a_new_metric
        return agent

    monkeypatch.setattr(train_mod, "build_agent", build)
    monkeypatch.setattr(Progress, "__init__", _progress_every_call(Progress.__init__))
    run = tmp_path / "run"
    assert train_mod.main(["--total-steps", "1200", "--learning-starts", "200", "--num-envs", "4",
                           "--hidden-sizes", "16", "--batch-size", "16", "--eval-episodes", "1", "--log-every", "400",
                           "--device", "cpu", "--run-dir", str(run)]) == 0
    rows = read_metrics(run)
    assert [float(r["brand_new"]) for r in rows if r["brand_new"]] == [7.0] * sum(1 for r in rows if r["loss"])
    assert any(tag == "brand_new" and value == 7.0 for tag, value, _ in _FakeWriter.scalars)
    assert "brand_new 7" in capsys.readouterr().err


def _progress_every_call(init):
    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.min_interval_s = 0.0  # print on every update, so the test sees the metric's line

    return patched


@pytest.mark.parametrize("algo,env,names", [
    ("dqn", "CartPole-v1", {"loss", "mean_q", "grad_norm"}),
    ("td3", "Pendulum-v1", {"loss", "mean_q", "grad_norm", "actor_loss"}),
    ("sac", "Pendulum-v1", {"loss", "mean_q", "grad_norm", "actor_loss", "alpha", "entropy", "alpha_loss"}),
])
def test_each_algorithm_logs_its_metrics(algo, env, names, tmp_path):
    run = tmp_path / "run"
    assert train_mod.main(["--algo", algo, "--env", env, "--total-steps", "600", "--learning-starts", "200",
                           "--hidden-sizes", "16", "--batch-size", "16", "--eval-episodes", "1",
                           "--device", "cpu", "--no-progress", "--run-dir", str(run)]) == 0
    last = read_metrics(run)[-1]
    assert all(last[name] != "" and math.isfinite(float(last[name])) for name in names), last
