"""Bad input through the real CLI: exit 2, one line naming the flag, no traceback, no work done."""

import subprocess
import sys

import pytest


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fastrl.train", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


CASES = [
    (["--env", "CartPol-v1"], "--env", "CartPole-v1"),  # suggests close names
    (["--env", "Pendulum-v1"], "--algo", "ddpg"),  # DQN on a continuous space: says which algo fits
    (["--num-envs", "0"], "--num-envs", "positive"),
    (["--batch-size", "-3"], "--batch-size", "positive"),
    (["--buffer-size", "1000", "--batch-size", "2000"], "--batch-size", "larger than --buffer-size"),
    (["--tau", "0"], "--tau", "(0, 1]"),
    (["--tau", "1.5"], "--tau", "(0, 1]"),
    (["--target-period", "0"], "--target-period", "positive"),
    (["--gamma", "1.2"], "--gamma", "[0, 1]"),
    (["--device", "cuda"], "--device", "CUDA"),
    (["--device", "cpu", "--cuda-graph"], "--cuda-graph", "needs a CUDA device"),
    (["--buffer-size", "100000000000000"], "--buffer-size", "bytes"),
    (["--lr-schedule", "robbins-monro", "--lr-power", "0.4"], "--lr-power", "0.5 < p <= 1"),
    (["--hidden-sizes", "64", "0"], "--hidden-sizes", "positive"),
    (["--total-steps", "ten"], "--total-steps", "invalid int value"),
    (["--algo", "ppo"], "--algo", "choose from"),
    (["--target-update", "sometimes"], "--target-update", "choose from"),
    (["--resume", "no/such/run"], "--resume", "no such run folder"),
    (["--resume", "."], "--resume", "holds no checkpoint.pt"),
    (["--config", "missing.toml"], "--config", "no such file"),
    (["--max-grad-norm", "nan"], "--max-grad-norm", "finite"),
    (["--lr", "1e-3x"], "--lr", "invalid float value"),
    (["--checkpoint-every", "-5"], "--checkpoint-every", ">= 0"),
    (["--num-envs", "8", "--checkpoint-every", "4"], "--checkpoint-every", "at least --num-envs 8"),
]


@pytest.mark.parametrize("args,flag,hint", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_line_exit_2(args, flag, hint, tmp_path):
    if args == ["--device", "cuda"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here, so --device cuda is valid")
    out = run_cli(*args, "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert flag in lines[0] and hint in lines[0], lines[0]
    assert not (tmp_path / "run").exists()  # rejected before any work started
