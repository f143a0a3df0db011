"""Users' own environments: `--env module.path:EnvId-v0`, a callable making one gymnasium env, a
ready gymnasium vector env; spaces fastrl cannot learn from refused up front; gymnasium's env
checker run once on a user env, its findings as warnings."""

import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import fastrl.train as train_mod
from fastrl.config import ConfigError
from fastrl.envs import SUPPORTED_SPACES, TorchVecEnv, lookup_spec, spec_from_env_fn, spec_from_vector_env
from tests.counter_env import CounterEnv
from tests.pattern_env import PatternEnv

CPU = torch.device("cpu")
USER_MODULE = "tests.user_env_module"
USER_ID = "FastrlUserModule-v0"


def _checker_warnings(caught):
    return [str(w.message) for w in caught if "gymnasium's env checker" in str(w.message)]


# --- module.path:EnvId-v0 ---

def test_module_colon_id_imports_the_module_then_makes_the_env_through_gymnasium():
    gym.registry.pop(USER_ID, None)
    sys.modules.pop(USER_MODULE, None)
    spec = lookup_spec(f"{USER_MODULE}:{USER_ID}")
    assert USER_MODULE in sys.modules and USER_ID in gym.registry
    assert (spec.backend, spec.obs_shape, spec.num_actions, spec.max_episode_steps) == ("gymnasium", (5,), 3, 9)
    envs = TorchVecEnv(spec, 2, seed=0, device=CPU)
    assert envs.reset().shape == (2, 5)
    steps = [envs.step(torch.ones(2, dtype=torch.int64)) for _ in range(10)]
    assert steps[8].truncated.all() and steps[9].is_reset_step.all()  # its TimeLimit, then the auto-reset
    envs.close()


@pytest.mark.filterwarnings("ignore:.*gymnasium's env checker")
def test_module_colon_id_is_never_sent_to_envpool():
    assert lookup_spec(f"{USER_MODULE}:CartPole-v1").backend == "gymnasium"


@pytest.mark.parametrize("env_id,says", [
    ("tests.no_such_module:Env-v0", "--env: cannot import module 'tests.no_such_module'"),
    (f"{USER_MODULE}:FastrlUserModul-v0", f"--env: importing '{USER_MODULE}' registered no gymnasium environment"),
])
def test_module_colon_id_errors_are_one_line_naming_env(env_id, says, tmp_path, capsys):
    with pytest.raises(ConfigError, match=says):
        lookup_spec(env_id)
    assert train_mod.main(["--env", env_id, "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m fastrl.train: error: --env:"), err


def test_module_colon_id_trains(tmp_path):
    args = ["--algo", "dqn", "--env", f"{USER_MODULE}:{USER_ID}", "--total-steps", "120", "--num-envs", "2",
            "--learning-starts", "20", "--batch-size", "8", "--buffer-size", "100", "--hidden-sizes", "8",
            "--eval-episodes", "1", "--device", "cpu", "--no-progress", "--run-dir", str(tmp_path / "run")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train_mod.main(args) == 0


# --- a callable making one env ---

def _pattern_env():
    return gym.wrappers.TimeLimit(PatternEnv((6,), np.float32), max_episode_steps=4)


def test_an_env_function_is_vectorized_with_next_step_autoreset_and_truncation():
    spec = spec_from_env_fn(_pattern_env, "pattern")
    assert (spec.env_id, spec.backend, spec.obs_shape, spec.discrete, spec.num_actions) == (
        "pattern", "callable", (6,), True, 3)
    envs = TorchVecEnv(spec, 3, seed=1, device=CPU)
    assert envs._envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    obs = envs.reset()
    assert obs.shape == (3, 6) and torch.equal(obs[0], torch.arange(6.0))
    steps = [envs.step(torch.full((3,), 2)) for _ in range(5)]
    assert [s.truncated.all() for s in steps] == [False, False, False, True, False]
    assert steps[4].is_reset_step.all() and torch.equal(steps[4].next_obs[0], torch.arange(6.0))
    assert not steps[3].terminated.any()  # a time limit is no termination: the learner bootstraps
    assert envs.pop_finished_episodes() == [(i, 8.0, 4) for i in range(3)]
    envs.close()


def test_spec_equality_ignores_the_env_function():
    a, b = spec_from_env_fn(_pattern_env, "pattern"), spec_from_env_fn(lambda: _pattern_env(), "pattern")
    assert a == b and hash(a) == hash(b) and a.env_fn is not b.env_fn


def test_an_env_function_must_make_a_gymnasium_env():
    class NotAnEnv:
        def close(self):
            pass

    with pytest.raises(ConfigError, match="--env: the env function of mine returned a NotAnEnv"):
        spec_from_env_fn(NotAnEnv, "mine")


# --- a ready vector env ---

def _vector(mode="NextStep", n=2):
    return gym.vector.SyncVectorEnv([_pattern_env] * n, autoreset_mode=mode)


def test_a_ready_vector_env_is_stepped_at_its_size_and_left_open():
    ready = _vector()
    spec = spec_from_vector_env(ready, "ready")
    assert (spec.backend, spec.obs_shape, spec.num_actions) == ("vector", (6,), 3)
    envs = TorchVecEnv(spec, 2, seed=0, device=CPU)
    assert envs._envs is ready
    envs.reset()
    steps = [envs.step(torch.zeros(2, dtype=torch.int64)) for _ in range(5)]
    assert steps[3].truncated.all() and steps[4].is_reset_step.all()
    envs.close()
    assert not ready.closed  # the user's: fastrl does not close it
    with pytest.raises(ConfigError, match="--num-envs: the vector env passed in holds 2 envs; got 3"):
        TorchVecEnv(spec, 3, seed=0, device=CPU)
    ready.close()


def test_a_vector_env_function_is_called_per_wrapper():
    made = []

    def make(n):
        made.append(_vector(n=n))
        return made[-1]

    spec = spec_from_vector_env(make, "factory")
    envs = TorchVecEnv(spec, 3, seed=0, device=CPU)
    assert envs.reset().shape == (3, 6)
    envs.close()
    assert [m.num_envs for m in made] == [1, 3] and all(m.closed for m in made)


@pytest.mark.parametrize("mode,says", [("SameStep", "auto-resets in mode AutoresetMode.SAME_STEP"),
                                       ("Disabled", "auto-resets in mode AutoresetMode.DISABLED"),
                                       (None, "declares no autoreset mode")])
def test_vector_envs_in_other_autoreset_modes_are_refused(mode, says):
    envs = _vector("NextStep" if mode is None else mode)
    if mode is None:
        envs.metadata = {k: v for k, v in envs.metadata.items() if k != "autoreset_mode"}
    with pytest.raises(ConfigError, match=f"--env: the vector env of v {says}; fastrl needs .*NEXT_STEP"):
        spec_from_vector_env(envs, "v")
    envs.close()


# --- spaces fastrl cannot learn from ---

BOX = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)


@pytest.mark.parametrize("obs_space,act_space", [
    (gym.spaces.Dict({"a": BOX}), gym.spaces.Discrete(2)),
    (gym.spaces.Tuple((BOX, BOX)), gym.spaces.Discrete(2)),
    (gym.spaces.Discrete(5), gym.spaces.Discrete(2)),
    (BOX, gym.spaces.Dict({"a": BOX})),
    (BOX, gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Discrete(2)))),
    (BOX, gym.spaces.MultiDiscrete([2, 3])),
    (BOX, gym.spaces.MultiBinary(4)),
    (BOX, gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)),
    (BOX, gym.spaces.Box(np.array([-1.0, 0.0]), np.array([1.0, np.inf]), dtype=np.float32)),
    (BOX, gym.spaces.Discrete(3, start=1)),
], ids=["dict-obs", "tuple-obs", "discrete-obs", "dict-act", "tuple-act", "multidiscrete", "multibinary",
        "unbounded-box", "half-unbounded-box", "discrete-from-1"])
def test_unsupported_spaces_are_refused_before_any_work(obs_space, act_space):
    made = []

    def make():
        env = CounterEnv()
        env.observation_space, env.action_space = obs_space, act_space
        made.append(env)
        return env

    with pytest.raises(ConfigError) as info:
        spec_from_env_fn(make, "odd")
    message = str(info.value)
    space = obs_space if not isinstance(obs_space, gym.spaces.Box) else act_space
    assert "\n" not in message and message.startswith("--env: odd has ")
    assert str(space) in message and message.endswith(SUPPORTED_SPACES), message
    assert len(made) == 1 and made[0].episode == -1  # never reset, let alone stepped


class _OddCounter(CounterEnv):
    def __init__(self, obs_space=None, act_space=None):
        super().__init__()
        self.observation_space = obs_space or self.observation_space
        self.action_space = act_space or self.action_space


@pytest.mark.parametrize("obs_space,act_space,space", [
    (None, gym.spaces.MultiDiscrete([2, 2]), "MultiDiscrete([2 2])"),
    (None, gym.spaces.Box(-np.inf, np.inf, (2,), np.float32), "Box(-inf, inf, (2,), float32)"),
    (gym.spaces.Dict({"a": BOX}), None, "Dict('a': Box(-1.0, 1.0, (3,), float32))"),
], ids=["multidiscrete", "unbounded-box", "dict-obs"])
def test_unsupported_spaces_of_a_registered_env_stop_the_cli_in_one_line(obs_space, act_space, space, tmp_path,
                                                                          capsys, monkeypatch):
    monkeypatch.setitem(gym.registry, "FastrlOdd-v0", gym.envs.registration.EnvSpec(
        "FastrlOdd-v0", entry_point=_OddCounter, kwargs={"obs_space": obs_space, "act_space": act_space}))
    assert train_mod.main(["--env", "FastrlOdd-v0", "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m fastrl.train: error: --env: FastrlOdd-v0 has "), err
    assert space in err[0] and err[0].endswith(SUPPORTED_SPACES), err
    assert not (tmp_path / "r").exists()


# --- gymnasium's env checker, as warnings ---

def test_the_env_checker_reports_findings_as_warnings_and_goes_on():
    """The counter env's observation counts episodes, so the same seed and actions give other
    observations: the checker's assertion becomes a warning and the spec is still made."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = spec_from_env_fn(CounterEnv, "counter")
    findings = _checker_warnings(caught)
    assert spec.backend == "callable" and findings
    assert all(f.startswith("--env counter: gymnasium's env checker: ") and "\x1b[" not in f for f in findings)
    assert any("not equivalent" in f for f in findings), findings


def test_a_clean_env_gives_no_checker_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec_from_env_fn(lambda: PatternEnv((4,), np.float32), "clean")
        lookup_spec(f"{USER_MODULE}:{USER_ID}")
    assert _checker_warnings(caught) == []


def test_the_env_checker_runs_on_module_ids_but_not_on_registered_ids(monkeypatch):
    calls = []
    monkeypatch.setattr("fastrl.envs.check_user_env", lambda env, name: calls.append(name))
    lookup_spec(f"{USER_MODULE}:{USER_ID}")
    lookup_spec("FastrlCounter-v0")
    assert calls == [f"{USER_MODULE}:{USER_ID}"]
