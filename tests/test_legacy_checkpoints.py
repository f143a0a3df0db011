"""Run folders written by fastrl before the learner-core refactor (commit 26d69cf, fixtures in
tests/data) still resume and evaluate."""

import json
import shutil

import pytest

import fastrl.evaluate as evaluate_mod
import fastrl.train as train_mod
from fastrl.checkpoint import load_checkpoint

LEGACY = "tests/data/legacy-26d69cf"


@pytest.mark.parametrize("algo,total", [("dqn", 1000), ("td3", 600)])
def test_a_checkpoint_of_the_old_layout_resumes_to_the_end(algo, total, tmp_path):
    run = tmp_path / algo
    shutil.copytree(f"{LEGACY}/{algo}", run)
    before = load_checkpoint(run / "checkpoint.pt")
    assert "gradients" not in before["config"]  # a setting added since: its default reproduces the old run
    assert train_mod.main(["--resume", str(run), "--total-steps", str(total), "--no-progress"]) == 0
    after = load_checkpoint(run / "checkpoint.pt")
    assert after["counters"]["env_step"] == total
    assert after["agent"]["updates_done"] > before["agent"]["updates_done"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from_env_step"] == before["counters"]["env_step"]


@pytest.mark.parametrize("algo", ["dqn", "td3"])
def test_an_old_run_evaluates(algo, tmp_path, capsys):
    run = tmp_path / algo
    shutil.copytree(f"{LEGACY}/{algo}", run)
    assert evaluate_mod.main([str(run), "--episodes", "1", "--no-video"]) == 0
    assert "greedy return" in capsys.readouterr().out


def test_a_checkpoint_with_an_unknown_setting_is_refused_in_one_line(tmp_path, capsys):
    import torch

    run = tmp_path / "dqn"
    shutil.copytree(f"{LEGACY}/dqn", run)
    state = load_checkpoint(run / "checkpoint.pt")
    state["config"]["warp_drive"] = True
    torch.save(state, run / "checkpoint.pt")
    assert train_mod.main(["--resume", str(run), "--total-steps", "1000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume: the checkpoint's settings do not fit" in err[0] and "warp_drive" in err[0]
