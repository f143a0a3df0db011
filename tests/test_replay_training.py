"""n-step returns and prioritized replay through the trainer: the batch's discounts and weights
reach the losses, and every update's |TD errors| go back to the tree."""

import pytest

import fastrl.train as train_mod
from fastrl.buffer import ReplayBuffer
from fastrl.config import resolve
from fastrl.train import check_setup, train


def _tiny(tmp_path, **settings):
    return resolve({"total_steps": 1_200, "learning_starts": 200, "num_envs": 4, "hidden_sizes": (16,),
                    "batch_size": 16, "eval_episodes": 1, "device": "cpu", "progress": False,
                    "run_dir": str(tmp_path / "run"), **settings})


@pytest.mark.parametrize("algo,env", [("dqn", "CartPole-v1"), ("td3", "Pendulum-v1")])
def test_every_update_writes_its_priorities_back(algo, env, tmp_path, monkeypatch):
    calls = []
    real = ReplayBuffer.update_priorities

    def recording(self, indices, td):
        assert indices.shape == td.shape == (16,) and bool((td >= 0).all())
        calls.append(indices.clone())
        return real(self, indices, td)

    monkeypatch.setattr(ReplayBuffer, "update_priorities", recording)
    seen = []
    real_update = train_mod.build_agent

    def build(spec, cfg, device, use_compile):
        agent = real_update(spec, cfg, device, use_compile)
        update = agent.update

        def checking(batch):
            seen.append((batch.discount is not None, batch.weights is not None))
            return update(batch)

        agent.update = checking
        return agent

    monkeypatch.setattr(train_mod, "build_agent", build)
    cfg = _tiny(tmp_path, algo=algo, env=env, n_step=3, prioritized=True)
    summary = train(cfg, *check_setup(cfg), 0.0)
    assert summary["updates"] == len(calls) > 0
    assert set(seen) == {(True, True)}


def test_uniform_one_step_batches_carry_no_replay_extras(tmp_path, monkeypatch):
    seen = []
    real_update = train_mod.build_agent

    def build(spec, cfg, device, use_compile):
        agent = real_update(spec, cfg, device, use_compile)
        update = agent.update
        agent.update = lambda batch: seen.append((batch.discount, batch.weights, batch.indices)) or update(batch)
        return agent

    monkeypatch.setattr(train_mod, "build_agent", build)
    cfg = _tiny(tmp_path, n_step=1)  # the CartPole preset's own is 3
    train(cfg, *check_setup(cfg), 0.0)
    assert seen and all(extras == (None, None, None) for extras in seen)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cartpole_preset_still_solves_with_prioritized_replay(seed, tmp_path):
    """The preset (3-step returns since e08b159) with --prioritized; the preset alone is
    test_dqn.py's test_default_run_solves_cartpole."""
    cfg = resolve({"seed": seed, "device": "cpu", "progress": False, "run_dir": str(tmp_path / "run"),
                   "prioritized": True})
    summary = train(cfg, *check_setup(cfg), 0.0)
    assert summary["final_eval_return_mean"] >= 475, summary


def test_replay_settings_are_checked(capsys, tmp_path):
    for args, hint in ((["--n-step", "0"], "--n-step: must be a positive integer"),
                       (["--per-alpha", "1.5"], "--per-alpha: must be in [0, 1]"),
                       (["--per-eps", "0"], "--per-eps: must be a positive number")):
        assert train_mod.main([*args, "--run-dir", str(tmp_path / "run")]) == 2
        assert hint in capsys.readouterr().err
