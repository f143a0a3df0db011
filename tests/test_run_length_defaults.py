"""Defaults made for 1M-step runs are fitted to short ones, and said so; presets and the user win."""

import pytest

import fastrl.train as train_mod
from fastrl.config import resolve


def test_td3_random_steps_are_a_fraction_of_a_short_run_without_preset():
    notes = []
    cfg = resolve({"algo": "td3", "env": "Hopper-v4", "total_steps": 30_000}, notes)
    assert cfg.learning_starts == 1_500  # not 25,000 of 30,000 steps at random
    assert cfg.buffer_size == 30_001  # not a 1M buffer that is never filled
    assert any("--learning-starts 25000 -> 1500" in n for n in notes)


def test_the_users_choice_and_a_presets_own_run_length_are_kept():
    assert resolve({"algo": "td3", "env": "Hopper-v4", "total_steps": 30_000,
                    "learning_starts": 25_000}).learning_starts == 25_000
    assert resolve({"algo": "td3", "env": "Hopper-v4"}).learning_starts == 25_000  # the preset's 1M steps
    assert resolve({"algo": "td3", "env": "Pendulum-v1"}).learning_starts == 1_000  # the preset's
    assert resolve({"buffer_size": 123_456, "total_steps": 1_000}).buffer_size == 123_456


def test_a_long_run_keeps_the_published_defaults():
    cfg = resolve({"algo": "td3", "env": "Hopper-v4", "total_steps": 2_000_000})
    assert cfg.learning_starts == 25_000 and cfg.buffer_size == 1_000_000


def test_the_fitted_defaults_are_printed_at_start(tmp_path, capsys):
    assert train_mod.main(["--algo", "td3", "--env", "Pendulum-v1", "--total-steps", "300", "--hidden-sizes", "8",
                           "--batch-size", "16", "--eval-episodes", "1", "--no-progress", "--device", "cpu",
                           "--run-dir", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "defaults fitted to this run's length" in err and "--buffer-size" in err


@pytest.mark.parametrize("algo", ["dqn", "ddpg", "td3"])
def test_every_algorithm_setting_belongs_to_a_registered_algorithm(algo):
    from fastrl.config import COMMON_NAMES, FIELD_NAMES, setting_users

    for name in FIELD_NAMES - COMMON_NAMES:
        assert setting_users(name), name  # a section field nobody reads would be a dead setting
