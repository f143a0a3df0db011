"""`--config FILE` (TOML or JSON): flags override it, unknown keys and wrong types are rejected
with one line naming the setting, and the resolved config is saved in the run folder."""

import json

import pytest

import fastrl.train as train_mod
from tests.counter_env import ENV_ID as COUNTER_ENV

pytestmark = pytest.mark.filterwarnings("ignore:.*not within the observation space")


def error_line(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("name,text", [
    ("c.toml", f'env = "{COUNTER_ENV}"\ntotal-steps = 300\nlearning_starts = 100\nlr = 0.005\n'
               'hidden_sizes = [16]\nbatch_size = 16\nbuffer_size = 1000\neval_episodes = 2\n'),
    ("c.json", json.dumps({"env": COUNTER_ENV, "total_steps": 300, "learning-starts": 100, "lr": 0.005,
                           "hidden_sizes": [16], "batch_size": 16, "buffer_size": 1000, "eval_episodes": 2})),
])
def test_flags_override_the_file_and_the_resolved_config_is_saved(name, text, tmp_path):
    (tmp_path / name).write_text(text)
    run = tmp_path / "run"
    args = ["--config", str(tmp_path / name), "--lr", "0.001", "--no-progress", "--device", "cpu",
            "--run-dir", str(run)]
    assert train_mod.main(args) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["lr"] == 0.001  # the flag wins
    assert saved["total_steps"] == 300 and saved["learning_starts"] == 100 and saved["hidden_sizes"] == [16]
    assert saved["gamma"] == 0.99  # a default, written out: the file is the whole resolved config
    assert saved["target_update"] == "hard"  # from the DQN algorithm defaults


@pytest.mark.parametrize("name,text,hint", [
    ("c.toml", "learning_rate = 0.1\n", "--config: unknown key(s) learning_rate"),
    ("c.toml", 'lr = "fast"\n', "--lr: must be a number, got 'fast'"),
    ("c.toml", "hidden_sizes = 64\n", "--hidden-sizes: must be a list of integers, got 64"),
    ("c.json", '{"total_steps": 1e5}', "--total-steps: must be an integer, got 100000.0"),
    ("c.json", '{"double_dqn": "yes"}', "--double-dqn: must be true or false"),
    ("c.toml", "lr = nan\n", "--lr: must be a positive number, got nan"),
    ("c.toml", "lr = = 1\n", "--config: cannot parse"),
    ("c.yaml", "lr: 1\n", "must end in .toml or .json"),
    ("c.json", "[1, 2]", "must hold a table/object of settings"),
])
def test_bad_config_files_are_one_line_errors(name, text, hint, tmp_path, capsys):
    (tmp_path / name).write_text(text)
    assert train_mod.main(["--config", str(tmp_path / name), "--run-dir", str(tmp_path / "run")]) == 2
    line = error_line(capsys)
    assert line.startswith("python -m fastrl.train: error: --") and hint in line, line
    assert not (tmp_path / "run").exists()


def test_auto_threads_uses_every_core_only_for_big_gemms():
    from fastrl.config import auto_threads

    assert auto_threads(256, (256, 256), cores=2) == 2  # TD3/DDPG peer settings: GEMM-bound
    assert auto_threads(128, (256, 256), cores=2) == 1  # the DQN CartPole preset: per-op bound
    assert auto_threads(128, (120, 84), cores=4) == 1
    assert auto_threads(1024, (512,), cores=4) == 4
    assert auto_threads(128, (256, 256), cores=2, members=16) == 2  # 16 stacked DQN members: one big GEMM
    assert auto_threads(128, (256, 256), cores=2, members=1) == 1
