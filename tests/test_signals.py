"""Ctrl-C and SIGTERM on a real training process: it finishes the phase, writes a checkpoint and
summary, says how to resume, exits 130 / 143; `--resume` then takes it to its --total-steps."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fastrl.checkpoint import load_checkpoint

TOTAL = 3000


def start_run(run_dir):
    # One env and an update per step: slow enough (several seconds) to be interrupted mid-run.
    args = ["--env", "CartPole-v1", "--total-steps", str(TOTAL), "--num-envs", "1", "--checkpoint-every", "500",
            "--checkpoint-buffer", "--learning-starts", "200", "--train-every", "1", "--updates-per-train", "1",
            "--batch-size", "32", "--hidden-sizes", "32", "--buffer-size", "10000", "--eval-episodes", "2",
            "--log-every", "500", "--device", "cpu", "--no-progress", "--run-dir", str(run_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "fastrl.train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_for(path, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_writes_checkpoint_and_resume_finishes_the_run(sig, code, tmp_path):
    run = tmp_path / "run"
    proc = start_run(run)
    wait_for(run / "checkpoint.pt", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    last = err.strip().splitlines()[-1]
    assert last == (f"interrupted by {signal.Signals(sig).name} at env step "
                    f"{json.loads((run / 'summary.json').read_text())['env_steps']}; checkpoint and summary "
                    f"written; resume with: python -m fastrl.train --resume {run}"), last
    assert "Traceback" not in err
    stopped_at = load_checkpoint(run / "checkpoint.pt")["counters"]["env_step"]
    assert 500 <= stopped_at < TOTAL  # stopped mid-run, at the step it reported
    assert json.loads((run / "summary.json").read_text())["interrupted"] is True
    if sig == signal.SIGTERM:
        return  # resume is the same path; once is enough

    out = subprocess.run([sys.executable, "-m", "fastrl.train", "--resume", str(run)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert load_checkpoint(run / "checkpoint.pt")["counters"]["env_step"] == TOTAL
    summary = json.loads((run / "summary.json").read_text())
    assert summary["env_steps"] == TOTAL and summary["resumed_from_env_step"] == stopped_at
    with open(run / "metrics.csv", newline="") as f:
        steps = [int(row["env_step"]) for row in csv.DictReader(f)]  # one header: appended, not rewritten
    assert steps == sorted(set(steps)) and stopped_at in steps and steps[-1] == TOTAL
