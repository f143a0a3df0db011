"""fastrl as a library: `make_config` resolves as the CLI does, `train` checks before any work,
its callback sees every log window and can stop the run (which `resume` continues exactly), NaN
raises `TrainingError`, and `load_policy` acts as the run's own evaluation did."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastrl
import fastrl.train as train_mod
from fastrl.checkpoint import load_checkpoint
from fastrl.config import resolve
from fastrl.envs import TorchVecEnv, lookup_spec
from fastrl.evaluate import evaluate_policy
from tests.counter_env import ENV_ID as COUNTER_ENV
from tests.test_resume import one_thread, poison, tensors  # noqa: F401 (one_thread is a fixture)

pytestmark = pytest.mark.filterwarnings("ignore:.*not within the observation space")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(total_steps=800, num_envs=4, learning_starts=100, batch_size=16, buffer_size=1000, hidden_sizes=[16],
            eval_episodes=2, log_every=200, device="cpu", progress=False)


def read_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# --- the package and make_config ---

def test_import_is_cheap_and_names_resolve():
    code = ("import sys, fastrl; assert 'torch' not in sys.modules, 'torch imported'; "
            "import fastrl.config, fastrl.settings, fastrl.api, fastrl.policy; "
            "assert fastrl.TrainConfig is fastrl.config.TrainConfig; "
            "assert fastrl.ConfigError is fastrl.settings.ConfigError and issubclass(fastrl.ConfigError, ValueError); "
            "assert fastrl.load_policy is fastrl.policy.load_policy and callable(fastrl.train); "
            "import fastrl.train as m; assert m.main and fastrl.train is m")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_make_config_resolves_exactly_as_the_cli():
    flags = ["--algo", "td3", "--env", "Pendulum-v1", "--total-steps", "20000", "--hidden-sizes", "64", "64"]
    cli = train_mod.config_from_namespace(train_mod.build_parser().parse_args(flags))
    api = fastrl.make_config(algo="td3", env="Pendulum-v1", total_steps=20_000, hidden_sizes=(64, 64))
    assert api == cli
    assert api.learning_starts == 1_000  # fitted to the run's length, as the CLI fits it


@pytest.mark.parametrize("settings,hint", [
    (dict(warp=1), "unknown setting(s) warp"),
    (dict(lr=-1.0), "--lr: must be a positive number"),
    (dict(total_steps=2.5), "--total-steps: must be an integer"),
    (dict(hidden_sizes=64), "--hidden-sizes: must be a list of integers"),
    (dict(algo="ppo"), "--algo: unknown algorithm 'ppo'"),
    (dict(algo="dqn", policy_delay=2), "--policy-delay: a ddpg/td3 setting"),
    (dict(batch_size=256, buffer_size=100), "--batch-size: 256 is larger than --buffer-size 100"),
])
def test_make_config_rejects_bad_settings_in_one_line(settings, hint):
    with pytest.raises(fastrl.ConfigError) as caught:
        fastrl.make_config(**settings)
    assert hint in str(caught.value) and "\n" not in str(caught.value)


def test_train_checks_everything_before_any_work(tmp_path):
    run = tmp_path / "run"
    config = fastrl.make_config(env="Pendulum-v1", run_dir=str(run), **TINY)  # DQN on continuous actions
    with pytest.raises(fastrl.ConfigError, match="--algo: dqn needs a discrete action space"):
        fastrl.train(config)
    unchecked = fastrl.TrainConfig(tau=2.0, run_dir=str(run))  # the plain dataclass: nothing checked yet
    with pytest.raises(fastrl.ConfigError, match=r"--tau: must be in \(0, 1\]"):
        fastrl.train(unchecked)
    with pytest.raises(TypeError, match="fastrl.TrainConfig"):
        fastrl.train({"env": "CartPole-v1"})
    assert not run.exists()


# --- callback, stop, resume ---

def test_callback_sees_every_window_and_its_stop_resumes_to_the_exact_run(tmp_path, one_thread):
    settings = dict(TINY, env=COUNTER_ENV, total_steps=1600, checkpoint_every=400, checkpoint_buffer=True,
                    learning_starts=200)
    straight = fastrl.train(fastrl.make_config(**settings, run_dir=str(tmp_path / "straight")))

    rows = []

    def stop_at_800(row):
        rows.append(row)
        return row["env_step"] < 800

    run = tmp_path / "stopped"
    stopped = fastrl.train(fastrl.make_config(**settings, run_dir=str(run)), callback=stop_at_800)
    assert stopped["interrupted"] is True and stopped["stop_signal"] is None and stopped["exit_code"] == 0
    assert stopped["env_steps"] == stopped["checkpoint_env_step"] == 800
    assert [r["env_step"] for r in rows] == [200, 400, 600, 800]
    assert [int(r["env_step"]) for r in read_rows(run)] == [r["env_step"] for r in rows]
    assert {"loss", "mean_q", "epsilon", "episodic_return"} <= rows[-1].keys()

    resumed = fastrl.resume(run, callback=rows.append)
    assert resumed["env_steps"] == 1600 and resumed["resumed_from_env_step"] == 800
    assert len(rows) == len(read_rows(run)) == 8  # every window of both sessions, once
    assert resumed["final_eval_returns"] == straight["final_eval_returns"]
    a, b = load_checkpoint(tmp_path / "straight" / "checkpoint.pt"), load_checkpoint(run / "checkpoint.pt")
    ta, tb = tensors({k: a[k] for k in ("agent", "buffer")}), tensors({k: b[k] for k in ("agent", "buffer")})
    assert ta.keys() == tb.keys() and not [k for k in ta if not torch.equal(ta[k], tb[k])]

    assert fastrl.resume(run)["env_steps"] == 1600  # at its end: left alone, its summary returned
    extended = fastrl.resume(run, total_steps=2000)
    assert extended["env_steps"] == 2000


def test_resume_refuses_settings_that_would_change_the_run(tmp_path):
    run = tmp_path / "run"
    fastrl.train(fastrl.make_config(env=COUNTER_ENV, run_dir=str(run), **TINY))
    with pytest.raises(fastrl.ConfigError, match="--total-steps: the run is already at env step 800"):
        fastrl.resume(run, total_steps=400)
    with pytest.raises(fastrl.ConfigError, match="--run-dir: .* already holds a run"):
        fastrl.train(fastrl.make_config(env=COUNTER_ENV, run_dir=str(run), **TINY))
    with pytest.raises(fastrl.ConfigError, match="--resume: no such run folder"):
        fastrl.resume(tmp_path / "nothing")


def test_nan_raises_training_error_after_writing_the_summary(tmp_path, monkeypatch):
    run = tmp_path / "run"
    # One update per vector step from env step 100: update 150 is at env step 700, found at 800.
    monkeypatch.setattr(train_mod, "build_agent", poison(150, "reward"))
    config = fastrl.make_config(env=COUNTER_ENV, run_dir=str(run), **dict(TINY, checkpoint_every=400))
    with pytest.raises(fastrl.TrainingError, match="non-finite loss") as caught:
        fastrl.train(config)
    assert "last good checkpoint (env step 400) is kept" in str(caught.value)
    summary = caught.value.summary
    assert summary["exit_code"] == 3 and summary == json.loads((run / "summary.json").read_text())


# --- trained policies ---

@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """A DQN (CartPole) and a TD3 (Pendulum) run, on envpool's envs."""
    root = tmp_path_factory.mktemp("policies")
    runs = {}
    for algo, env in (("dqn", "CartPole-v1"), ("td3", "Pendulum-v1")):
        config = fastrl.make_config(algo=algo, env=env, run_dir=str(root / algo),
                                    **dict(TINY, total_steps=1200, eval_episodes=3))
        runs[algo] = fastrl.train(config)
    return runs


@pytest.mark.parametrize("algo", ["dqn", "td3"])
def test_a_loaded_policy_reproduces_the_runs_evaluation(trained_runs, algo):
    summary = trained_runs[algo]
    policy = fastrl.load_policy(summary["run_dir"])
    config = policy.config
    # The eval envs of the run: same spec, count and seed (fastrl.train.train builds them so).
    envs = TorchVecEnv(lookup_spec(config.env), min(config.eval_episodes, 16), config.seed + 100_003,
                       torch.device("cpu"))
    try:
        returns = evaluate_policy(policy.act, envs, config.eval_episodes)
    finally:
        envs.close()
    assert returns == summary["final_eval_returns"]


def test_the_checkpoint_holds_the_env_spec(trained_runs):
    state = load_checkpoint(f"{trained_runs['td3']['run_dir']}/checkpoint.pt")
    assert fastrl.load_policy(trained_runs["td3"]["run_dir"]).spec == lookup_spec("Pendulum-v1")
    assert state["env_spec"]["action_low"] == (-2.0,) and state["env_spec"]["obs_dtype"] == "float32"


def test_act_takes_single_observations_and_batches_numpy_or_torch(trained_runs):
    dqn = fastrl.load_policy(trained_runs["dqn"]["run_dir"])
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    batch = dqn.act(obs)
    assert isinstance(batch, np.ndarray) and batch.shape == (5,) and batch.dtype == np.int64
    single = dqn.act(obs[2])
    assert isinstance(single, np.integer) and single == batch[2]
    as_torch = dqn.act(torch.from_numpy(obs))
    assert isinstance(as_torch, torch.Tensor) and as_torch.dtype == torch.int64
    assert as_torch.tolist() == batch.tolist()
    assert dqn.act(obs[2].tolist()) == single  # anything np.asarray takes
    with pytest.raises(ValueError, match=r"one of shape \(4,\) or a batch of shape \(N, 4\)"):
        dqn.act(np.zeros((2, 3)))
    explored = dqn.act(np.repeat(obs[:1], 400, axis=0), deterministic=False)
    eps_end = dqn.config.eps_end  # DQN explores with its final epsilon: 0.05 random, half of them changes
    assert 0 < np.mean(explored != single) < 4 * eps_end

    td3 = fastrl.load_policy(trained_runs["td3"]["run_dir"])
    action = td3.act(obs[0, :3])
    assert action.shape == (1,) and action.dtype == np.float32 and -2.0 <= action[0] <= 2.0
    noisy = td3.act(np.repeat(obs[:1, :3], 200, axis=0), deterministic=False)
    assert noisy.shape == (200, 1) and noisy.min() >= -2.0 and noisy.max() <= 2.0 and noisy.std() > 0
    td3.agent.greedy = lambda x: torch.full((x.shape[0], 1), 7.0)  # an actor beyond its box
    assert td3.act(obs[0, :3]).tolist() == [2.0]


def test_load_policy_errors_name_the_run_folder(tmp_path):
    with pytest.raises(fastrl.ConfigError, match="run_dir: no such run folder"):
        fastrl.load_policy(tmp_path / "nothing")
    with pytest.raises(fastrl.ConfigError, match="run_dir: .* holds no checkpoint.pt"):
        fastrl.load_policy(tmp_path)


def test_an_old_checkpoint_without_a_spec_loads_with_a_note():
    with pytest.warns(UserWarning, match="predates saved env specs"):
        policy = fastrl.load_policy("tests/data/legacy-26d69cf/td3")
    assert policy.spec == lookup_spec("Pendulum-v1")
    assert policy.act(np.zeros(3, np.float32)).shape == (1,)


# --- the README's examples, run as they are ---

def run_example(name, cwd):
    out = subprocess.run([sys.executable, f"{REPO}/examples/{name}"], capture_output=True, text=True, timeout=300,
                         cwd=cwd, env={**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    return out.stdout.splitlines()


def test_example_stop_early(tmp_path):
    lines = run_example("stop_early.py", tmp_path)
    (run,) = (tmp_path / "runs").iterdir()
    windows = [line for line in lines if line.startswith("env step ")]
    assert len(windows) == len(read_rows(run)) >= 1  # one line per log window
    summary = json.loads((run / "summary.json").read_text())
    if summary["interrupted"]:  # stopped by the callback: the last window's evaluation reached 150
        assert float(windows[-1].rsplit(" ", 1)[1]) >= 150 and summary["env_steps"] < 20_000
        assert lines[-1].startswith(f"stopped at env step {summary['env_steps']}; continue with fastrl.resume(")
        assert (run / "checkpoint.pt").exists()


def test_example_load_and_act(tmp_path):
    lines = run_example("load_and_act.py", tmp_path)
    assert lines[0].startswith("greedy episode return: ") and float(lines[0].split(": ")[1]) >= 1
    assert lines[1].startswith("a batch of observations gives a batch of actions: [")
