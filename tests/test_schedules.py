import math
import subprocess
import sys

import pytest

from fastrl.config import ConfigError, resolve, validate
from fastrl.schedules import learning_rate, linear, robbins_monro


def test_linear_endpoints_and_clamping():
    assert linear(1.0, 0.1, 100, 0) == 1.0
    assert linear(1.0, 0.1, 100, 50) == pytest.approx(0.55)
    assert linear(1.0, 0.1, 100, 100) == pytest.approx(0.1)
    assert linear(1.0, 0.1, 100, 10_000) == pytest.approx(0.1)


@pytest.mark.parametrize("power", [0.51, 0.75, 1.0])
def test_robbins_monro_steps_sum_diverges_and_squares_converge(power):
    lr0, k0 = 0.1, 10.0
    # Σα²: bounded by α0² (1 + ∫_0^∞ (1 + k/k0)^(-2p) dk) = α0² (1 + k0 / (2p - 1)).
    bound = lr0**2 * (1 + k0 / (2 * power - 1))
    n = 1_000_000
    partial, partial_sq = 0.0, 0.0
    for k in range(n):
        a = robbins_monro(lr0, k0, power, k)
        partial += a
        partial_sq += a * a
    assert partial_sq < bound
    # Σα: α is decreasing, so the partial sum is at least the integral of α over [0, N], which
    # grows without bound in N (like log N at p = 1, like N^(1-p) below).
    if power == 1.0:
        integral = lr0 * k0 * math.log1p(n / k0)
    else:
        integral = lr0 * k0 * ((1 + n / k0) ** (1 - power) - 1) / (1 - power)
    assert partial >= integral
    assert integral > 100 * lr0 * k0 / 10  # far beyond any finite budget a fixed lr0 * steps would cap
    assert robbins_monro(lr0, k0, power, 0) == lr0
    assert all(robbins_monro(lr0, k0, power, k + 1) < robbins_monro(lr0, k0, power, k) for k in range(100))


@pytest.mark.parametrize("power", [0.5, 0.3, 1.2])
def test_robbins_monro_power_outside_bounds_is_rejected(power):
    cfg = resolve({"lr_schedule": "robbins-monro", "lr_power": power})
    with pytest.raises(ConfigError, match=r"--lr-power: Robbins–Monro needs 0.5 < p <= 1"):
        validate(cfg)


def test_learning_rate_dispatch():
    assert learning_rate("constant", 0.01, 500, 1000) == 0.01
    assert learning_rate("linear", 0.01, 500, 1000, end_fraction=0.0) == pytest.approx(0.005)
    assert learning_rate("robbins-monro", 0.01, 1000, 1000, k0=1000, power=1.0) == pytest.approx(0.005)


def test_help_explains_robbins_monro():
    out = subprocess.run([sys.executable, "-m", "fastrl.train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "sum of steps diverges" in text and "sum of their squares converges" in text
    assert "CartPole-v1" in text  # presets are shown


@pytest.mark.parametrize("settings", [
    {},  # the default CartPole preset's shape: 64 updates every 32 vector steps of 8 envs
    {"num_envs": 3, "train_every": 5, "updates_per_train": 2, "learning_starts": 7},
    {"num_envs": 1, "train_every": 1, "updates_per_train": 1, "learning_starts": 0, "n_step": 1},
    # n-step rows are sampleable n steps later: the first phase waits for them, in plan and loop alike
    {"num_envs": 1, "train_every": 1, "updates_per_train": 1, "learning_starts": 0, "n_step": 3},
    {"num_envs": 2, "train_every": 1, "updates_per_train": 2, "learning_starts": 0, "n_step": 5},
])
def test_the_lr_each_update_receives_follows_the_linear_schedule_to_its_end(settings, tmp_path, monkeypatch):
    """The loop and the schedule count updates with one predicate: the planned total is the number
    of updates made, and the last update runs at the schedule's last, non-zero step."""
    from fastrl.dqn import DQN
    from fastrl.schedules import planned_updates

    lrs = []
    real_update = DQN.update

    def recording_update(self, batch):
        out = real_update(self, batch)
        lrs.append(self.optimizer.lr)
        return out

    monkeypatch.setattr(DQN, "update", recording_update)
    cfg = resolve({"total_steps": 1500, "hidden_sizes": (8,), "batch_size": 8, "eval_episodes": 1,
                   "lr_schedule": "linear", "lr": 1e-3, "device": "cpu", "progress": False,
                   "run_dir": str(tmp_path / "run"), **settings})
    from fastrl.train import check_setup, train

    spec, device = check_setup(cfg)
    train(cfg, spec, device, 0.0)
    total = planned_updates(cfg)
    assert len(lrs) == total
    assert lrs == pytest.approx([1e-3 * (1 - k / total) for k in range(total)], rel=1e-9, abs=1e-15)
    assert lrs[-1] > 0
