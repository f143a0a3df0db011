"""`python -m fastrl.evaluate RUN_DIR`: greedy episodes from the checkpoint, mean ± std, a GIF
where the env can render, and one-line errors otherwise."""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

import fastrl.evaluate as evaluate_mod
import fastrl.train as train_mod
from tests.counter_env import ENV_ID as COUNTER_ENV, CounterEnv

PAINT_ENV = "FastrlPaintCounter-v0"


class PaintCounterEnv(CounterEnv):
    """The counter env, renderable: each frame is a flat colour that changes with t."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode=None):
        super().__init__()
        self.render_mode = render_mode

    def render(self):
        return np.full((16, 24, 3), (10 * self.t) % 256, dtype=np.uint8)


if PAINT_ENV not in gym.registry:
    gym.register(PAINT_ENV, entry_point=PaintCounterEnv, max_episode_steps=30)

pytestmark = pytest.mark.filterwarnings("ignore:.*not within the observation space")


def tiny_run(run_dir, env, *flags):
    args = ["--env", env, "--total-steps", "400", "--learning-starts", "100", "--batch-size", "16",
            "--buffer-size", "1000", "--hidden-sizes", "16", "--eval-episodes", "2", "--device", "cpu",
            "--no-progress", "--run-dir", str(run_dir), *flags]
    assert train_mod.main(args) == 0
    return run_dir


def test_evaluate_prints_mean_and_std_and_writes_a_gif(tmp_path, capsys):
    run = tiny_run(tmp_path / "run", PAINT_ENV)
    assert evaluate_mod.main([str(run), "--episodes", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"dqn on {PAINT_ENV}, checkpoint at env step 400: greedy return ") and " ± " in out[0]
    assert out[0].endswith("over 3 episodes")
    assert out[1] == f"video: {run / 'eval.gif'}"
    with Image.open(run / "eval.gif") as gif:
        assert gif.n_frames > 1


@pytest.mark.filterwarnings("ignore:.*render_mode='rgb_array' that is not in the possible render_modes")
def test_evaluate_skips_the_video_where_the_env_cannot_render(tmp_path, capsys):
    run = tiny_run(tmp_path / "run", COUNTER_ENV)  # CounterEnv has no render mode
    assert evaluate_mod.main([str(run), "--episodes", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert " ± " in out[0] and out[1].startswith("no video: ")
    assert not (run / "eval.gif").exists()


def test_evaluate_rejects_bad_episodes(tmp_path, capsys):
    run = tiny_run(tmp_path / "run", COUNTER_ENV)
    capsys.readouterr()
    assert evaluate_mod.main([str(run), "--episodes", "0"]) == 2
    assert capsys.readouterr().err.strip() == \
        "python -m fastrl.evaluate: error: --episodes: must be a positive integer, got 0"


@pytest.mark.parametrize("args,hint", [
    (["no/such/run"], "RUN_DIR: no such run folder"),
    ([".", "--episodes", "many"], "--episodes: invalid int value"),
    ([".",], "holds no checkpoint.pt"),
])
def test_evaluate_cli_errors_are_one_line(args, hint, tmp_path):
    out = subprocess.run([sys.executable, "-m", "fastrl.evaluate", *args], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and hint in lines[0] and "Traceback" not in out.stderr, out.stderr
