"""fastrl as a library: `make_config` resolves as the CLI does, `train` checks before any work,
its callback sees every log window and can stop the run (which `resume` continues exactly), NaN
raises `TrainingError`, and `load_policy` acts as the run's own evaluation did."""

import csv
import json
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

import fastrl
import fastrl.evaluate as evaluate_mod
import fastrl.train as train_mod
from fastrl.checkpoint import load_checkpoint
from fastrl.envs import SUPPORTED_SPACES, TorchVecEnv, lookup_spec, spec_from_env_fn
from fastrl.evaluate import evaluate_policy
from tests.api_envs import UNSUPPORTED, UNSUPPORTED_ENVS, BanditEnv, ContinuousBanditEnv
from tests.counter_env import ENV_ID as COUNTER_ENV
from tests.pattern_env import PatternEnv, pattern
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
    (dict(algo="dqn", policy_delay=2), "--policy-delay: a ddpg/td3/sac setting"),
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


# --- users' envs: env_fn ---

BANDIT = dict(TINY, total_steps=1500, learning_starts=200, batch_size=32, hidden_sizes=[32], eval_episodes=20,
              log_every=500)


@pytest.mark.parametrize("algo,env_fn,total", [("dqn", BanditEnv, 1500), ("td3", ContinuousBanditEnv, 3000)],
                         ids=["discrete", "continuous"])
def test_learns_a_bandit_of_its_own_through_env_fn(algo, env_fn, total, tmp_path):
    """Optimal return 1 (a random policy: 1/2 discrete, 1/3 continuous); within 5% after a short run."""
    config = fastrl.make_config(algo=algo, env=env_fn.__name__, run_dir=str(tmp_path / "run"),
                                **dict(BANDIT, total_steps=total, hidden_sizes=[64, 64] if algo == "td3" else [32]))
    summary = fastrl.train(config, env_fn=env_fn)
    assert summary["final_eval_return_mean"] >= 0.95, summary["final_eval_returns"]

    # Its policy, loaded without the env, plays the run's final evaluation again, exactly.
    policy = fastrl.load_policy(tmp_path / "run")
    assert policy.spec == spec_from_env_fn(env_fn, env_fn.__name__)
    envs = TorchVecEnv(spec_from_env_fn(env_fn, env_fn.__name__), min(config.eval_episodes, 16),
                       config.seed + 100_003, torch.device("cpu"))
    try:
        assert evaluate_policy(policy.act, envs, config.eval_episodes) == summary["final_eval_returns"]
    finally:
        envs.close()


def test_a_ready_vector_env_trains_and_its_limits_are_checked_first(tmp_path):
    def ready(n=4):
        return gym.vector.SyncVectorEnv([BanditEnv] * n, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)

    settings = dict(BANDIT, env="Bandit", eval_episodes=4)
    summary = fastrl.train(fastrl.make_config(**settings, run_dir=str(tmp_path / "run")), env_fn=ready())
    assert summary["final_eval_return_mean"] >= 0.95 and len(summary["final_eval_returns"]) == 4
    for change, says in [(dict(num_envs=2), "--num-envs: the vector env passed as env_fn holds 4 envs; got 2"),
                         (dict(eval_every=500), "--eval-every: a ready vector env cannot be evaluated during"),
                         (dict(eval_episodes=10), "--eval-episodes: .* use eval_episodes=4")]:
        config = fastrl.make_config(**{**settings, **change}, run_dir=str(tmp_path / "bad"))
        with pytest.raises(fastrl.ConfigError, match=says):
            fastrl.train(config, env_fn=ready())
    same_step = gym.vector.SyncVectorEnv([BanditEnv] * 4, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    with pytest.raises(fastrl.ConfigError, match="NEXT_STEP"):
        fastrl.train(fastrl.make_config(**settings, run_dir=str(tmp_path / "bad")), env_fn=same_step)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("env,env_fn,says", [
    ("CartPole-v1", BanditEnv, "--env: 'CartPole-v1' is the default env's id; with env_fn, env names your env"),
    ("Breakout-v5", BanditEnv, "--env: 'Breakout-v5' has dqn presets, which make_config applied to your env_fn's"),
    ("Bandit", 42, "env_fn: must be a function making one gymnasium env, or a gymnasium vector env; got int"),
], ids=["default-name", "preset-name", "not-callable"])
def test_env_fn_refusals(env, env_fn, says, tmp_path):
    config = fastrl.make_config(**dict(BANDIT, env=env), run_dir=str(tmp_path / "run"))
    with pytest.raises(fastrl.ConfigError, match=says):
        fastrl.train(config, env_fn=env_fn)
    assert not (tmp_path / "run").exists()


def test_a_run_on_env_fn_resumes_only_with_its_env(tmp_path, capsys):
    run = tmp_path / "run"
    config = fastrl.make_config(**dict(BANDIT, env="Bandit"), run_dir=str(run))
    assert fastrl.train(config, env_fn=BanditEnv, callback=lambda row: row["env_step"] < 500)["interrupted"]
    with pytest.raises(fastrl.ConfigError, match=r"env_fn: the run in .* trained on an env made by env_fn"):
        fastrl.resume(run)
    with pytest.raises(fastrl.ConfigError, match="env_fn: its env is not the one the run .* trained on"):
        fastrl.resume(run, env_fn=ContinuousBanditEnv)
    capsys.readouterr()
    assert train_mod.main(["--resume", str(run)]) == 2
    assert "--resume: this run trained on an env made in Python (env_fn=Bandit)" in capsys.readouterr().err
    assert evaluate_mod.main([str(run)]) == 2
    assert "RUN_DIR: this run trained on an env made in Python" in capsys.readouterr().err
    assert fastrl.resume(run, env_fn=BanditEnv)["env_steps"] == 1500


@pytest.mark.parametrize("shape", [(40, 48, 3), (40, 48)], ids=["channel-last", "no-channel"])
def test_act_takes_images_as_the_env_gives_them(shape, tmp_path):
    """The learner sees [C, H, W]; act takes the env's own layout and arranges it as fastrl.envs does."""
    def make():
        return gym.wrappers.TimeLimit(PatternEnv(shape, np.uint8), max_episode_steps=7)

    config = fastrl.make_config(env="Pattern", total_steps=64, num_envs=2, learning_starts=32, batch_size=8,
                                buffer_size=128, hidden_sizes=[16], eval_episodes=1, device="cpu", progress=False,
                                run_dir=str(tmp_path / "run"))
    fastrl.train(config, env_fn=make)
    policy = fastrl.load_policy(tmp_path / "run")
    assert policy.obs_shape == shape and policy.spec.obs_shape == (shape[2] if len(shape) == 3 else 1, 40, 48)
    envs = TorchVecEnv(spec_from_env_fn(make, "Pattern"), 3, seed=0, device=torch.device("cpu"))
    learner_obs = envs.reset()
    for _ in range(2):
        learner_obs = envs.step(torch.zeros(3, dtype=torch.int64)).next_obs
    envs.close()
    raw = np.stack([pattern(shape, t) for t in (2, 2, 2)]).astype(np.uint8)
    assert policy.act(raw).tolist() == policy.greedy(learner_obs).tolist()
    assert policy.act(raw[0]) == policy.greedy(learner_obs)[0].item()

# --- spaces fastrl cannot learn from: refused in one line, through the CLI and the API ---

@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_unsupported_spaces_are_refused_by_the_cli_and_the_api(name, tmp_path, capsys):
    obs_space, act_space, algo = UNSUPPORTED[name]
    space = act_space if isinstance(obs_space, gym.spaces.Box) else obs_space
    run = tmp_path / "run"
    assert train_mod.main(["--algo", algo, "--env", f"tests.api_envs:{name}-v0", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"python -m fastrl.train: error: --env: tests.api_envs:{name}-v0 "
                                               f"has "), err
    assert str(space) in err[0] and err[0].endswith(SUPPORTED_SPACES), err
    with pytest.raises(fastrl.ConfigError) as by_fn:
        fastrl.train(fastrl.make_config(algo=algo, env=name, run_dir=str(run)), env_fn=UNSUPPORTED_ENVS[name])
    with pytest.raises(fastrl.ConfigError) as by_id:
        fastrl.train(fastrl.make_config(algo=algo, env=f"tests.api_envs:{name}-v0", run_dir=str(run)))
    for caught in (by_fn, by_id):
        message = str(caught.value)
        assert "\n" not in message and str(space) in message and message.endswith(SUPPORTED_SPACES), message
    assert not run.exists()


def test_an_unsupported_space_exits_2_from_a_real_process(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fastrl.train", "--env", "tests.api_envs:DictObs-v0", "--run-dir",
                          str(tmp_path / "run")], capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "observation space Dict" in out.stderr and not (tmp_path / "run").exists()

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


def test_example_own_env(tmp_path):
    lines = run_example("own_env.py", tmp_path)
    assert lines[0] == "greedy return 1.00 (best possible: 1.00)", lines
    assert lines[1] == "greedy action in each cell but the last (1 = right): [1 1 1 1 1 1 1]", lines
