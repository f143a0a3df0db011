"""The Atari protocol (Nature DQN / CleanRL): training envs end the learner's episode at a lost
life (terminated) and clip rewards to their sign, while the logged episodes are whole games and
their unclipped score; evaluation envs play whole games with unclipped rewards, DQN at
ε = --eval-epsilon; every other env is made as before."""

import numpy as np
import pytest
import torch

import fastrl.evaluate as evaluate_mod
import fastrl.train as train_mod
from fastrl.config import resolve
from fastrl.dqn import DQN, build_dqn
from fastrl.envs import ATARI_PROTOCOL, EnvSpec, TorchVecEnv, envpool_options, lookup_spec
from tests.test_evaluate import tiny_run
from tests.test_exploration import assert_epsilon_greedy, one_state

envpool = pytest.importorskip("envpool")
CPU = torch.device("cpu")
# Rewards of 5 to 200 points (clipping shows), 3 lives, and random play ends games in ~600 steps.
SCORED_GAME = "SpaceInvaders-v5"


def _random_actions(spec: EnvSpec, steps: int, num_envs: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, spec.num_actions, (steps, num_envs))


def _games(rewards: np.ndarray, ended: np.ndarray, game_ends: np.ndarray) -> list[tuple[int, float, int]]:
    """(env, score, length) of each game, from per-step rewards [T, N], the learner's episode ends
    (the step after one is the auto-reset step, which is no part of a game) and the game ends; in
    the order `TorchVecEnv.pop_finished_episodes` lists them."""
    score, length, games = np.zeros(rewards.shape[1]), np.zeros(rewards.shape[1], dtype=int), []
    reset_step = np.zeros(rewards.shape[1], dtype=bool)
    for t in range(len(rewards)):
        real = ~reset_step
        score[real] += rewards[t, real]
        length[real] += 1
        for e in np.flatnonzero(game_ends[t] & real):
            games.append((int(e), float(score[e]), int(length[e])))
            score[e], length[e] = 0.0, 0
        reset_step = ended[t] & real
    return games


def test_the_protocol_is_envpools_defaults_but_for_life_loss_ends_and_clipping():
    """What the README says about how the preset differs from envpool's defaults."""
    spec = lookup_spec("Breakout-v5")
    defaults = envpool.make_spec("Breakout-v5").config
    train, evaluation = envpool_options(spec, "train"), envpool_options(spec, "eval")
    assert all(getattr(defaults, k) == v for k, v in ATARI_PROTOCOL.items())
    assert (defaults.episodic_life, defaults.reward_clip) == (False, False)
    assert train == {**ATARI_PROTOCOL, "episodic_life": True, "reward_clip": True}
    assert evaluation == {**ATARI_PROTOCOL, "episodic_life": False, "reward_clip": False}
    with pytest.raises(ValueError, match="role"):
        envpool_options(spec, "test")


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1", "MountainCarContinuous-v0"])
def test_non_atari_envs_are_made_as_before(env_id):
    spec = lookup_spec(env_id)
    assert envpool_options(spec, "train") == envpool_options(spec, "eval") == {}
    envs = TorchVecEnv(spec, 2, seed=0, device=CPU, role="eval")
    try:
        assert envs.options == {} and not envs._game_info
        assert envs._direct is None or envs._direct._game is None  # no game info read per step
    finally:
        envs.close()


def test_training_envs_end_episodes_at_lost_lives_with_clipped_rewards_and_log_unclipped_game_scores():
    """Against envpool with the same seed and actions, without clipping: the same frames; rewards
    the sign of its rewards; terminated at every lost life, the game going on; and the logged
    episodes are its games, their scores summed over all lives here from its raw rewards (a game
    ends when no life is left, or at the time limit). The reference keeps life-loss ends: the
    reset after a lost life plays envpool's no-ops and FIRE, so an env without them plays a
    different game from the first lost life on; up to it, it plays the same (checked too)."""
    spec, num_envs, steps, seed = lookup_spec(SCORED_GAME), 2, 1_100, 11
    envs = TorchVecEnv(spec, num_envs, seed=seed, device=CPU, role="train")
    reference = envpool.make_gymnasium(SCORED_GAME, num_envs=num_envs, seed=seed, **ATARI_PROTOCOL,
                                       episodic_life=True, reward_clip=False)
    plain = envpool.make_gymnasium(SCORED_GAME, num_envs=num_envs, seed=seed)
    assert envs._direct is not None and envs._envs.config["stack_num"] == spec.frame_stack == 4
    obs, (ref_obs, _), (plain_obs, _) = envs.reset(), reference.reset(), plain.reset()
    assert np.array_equal(obs.numpy(), ref_obs) and np.array_equal(ref_obs, plain_obs)
    rewards, ended, game_ends = [], [], []
    lives_lost_in_game, first_life = 0, np.ones(num_envs, dtype=bool)
    for actions in _random_actions(spec, steps, num_envs):
        step = envs.step(torch.from_numpy(actions))
        ref_obs, ref_reward, ref_terminated, ref_truncated, info = reference.step(actions)
        plain_obs, plain_reward, *_, plain_info = plain.step(actions)
        assert np.array_equal(step.next_obs.numpy(), ref_obs)
        assert np.array_equal(step.reward.numpy(), np.sign(ref_reward))
        assert np.array_equal(step.terminated.numpy(), ref_terminated.astype(np.float32))
        assert np.array_equal(step.truncated, ref_truncated)
        for e in np.flatnonzero(first_life):  # no lost life yet: the plain env plays the same game
            assert np.array_equal(plain_obs[e], ref_obs[e]) and plain_reward[e] == ref_reward[e]
        first_life &= ~ref_terminated
        lives_lost_in_game += int((ref_terminated & (info["lives"] > 0)).sum())
        rewards.append(ref_reward)
        ended.append(ref_terminated | ref_truncated)
        game_ends.append((ref_terminated & (info["lives"] == 0)) | ref_truncated)
    rewards, ended, game_ends = np.stack(rewards), np.stack(ended), np.stack(game_ends)
    games = envs.pop_finished_episodes()
    envs.close()
    assert lives_lost_in_game >= 4 and len(games) >= 2 and rewards.max() > 1, (lives_lost_in_game, games)
    assert games == _games(rewards, ended, game_ends)
    # Not the learner's clipped per-life episodes: those are shorter and score less.
    assert len(_games(np.sign(rewards), ended, ended)) > len(games)


def test_direct_and_public_envpool_paths_give_the_same_games():
    spec, steps = lookup_spec(SCORED_GAME), 800
    results = []
    for direct in (True, False):
        envs = TorchVecEnv(spec, 2, seed=4, device=CPU, role="train")
        if not direct:
            envs._direct = None
        envs.reset()
        rewards = [envs.step(torch.from_numpy(a)).reward.clone() for a in _random_actions(spec, steps, 2)]
        results.append((torch.stack(rewards), envs.pop_finished_episodes()))
        envs.close()
    assert torch.equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1] and len(results[0][1]) > 0


def test_evaluation_envs_play_whole_games_with_unclipped_rewards():
    """The eval env is envpool's plain env (same seed and actions: the same steps), and its
    episodes end only when the game is over."""
    spec, num_envs, steps, seed = lookup_spec(SCORED_GAME), 2, 1_500, 7
    envs = TorchVecEnv(spec, num_envs, seed=seed, device=CPU, role="eval")
    plain = envpool.make_gymnasium(SCORED_GAME, num_envs=num_envs, seed=seed)
    envs.reset(), plain.reset()
    rewards, ended = [], []
    for actions in _random_actions(spec, steps, num_envs):
        step = envs.step(torch.from_numpy(actions))
        obs, reward, terminated, truncated, info = plain.step(actions)
        assert np.array_equal(step.next_obs.numpy(), obs) and np.array_equal(step.reward.numpy(), reward)
        assert np.array_equal(step.terminated.numpy(), terminated.astype(np.float32))
        assert np.all(info["lives"][terminated] == 0)  # no episode ends with a life left
        rewards.append(reward)
        ended.append(terminated | truncated)
    games = envs.pop_finished_episodes()
    envs.close()
    rewards, ended = np.stack(rewards), np.stack(ended)
    assert len(games) >= 2 and rewards.max() > 1
    assert games == _games(rewards, ended, ended)


def test_fire_is_pressed_after_each_lost_life_in_training_envs_only():
    """Breakout needs FIRE to launch the ball. A policy that never presses it: the training env
    presses it on each reset after a lost life, so the game ends (5 lives lost); the eval env
    presses it only when a game starts, and the game stalls after the first lost life (why DQN
    evaluates at ε = 0.05)."""
    spec, steps = lookup_spec("Breakout-v5"), 600
    games = {}
    for role in ("train", "eval"):
        envs = TorchVecEnv(spec, 1, seed=5, device=CPU, role=role)
        envs.reset()
        for _ in range(steps):
            envs.step(torch.zeros(1, dtype=torch.int64))  # NOOP
        games[role] = len(envs.pop_finished_episodes())
        envs.close()
    assert games["train"] >= 1 and games["eval"] == 0, games


# --- DQN's evaluation policy ---

NUM_ACTIONS = 6
SPEC = EnvSpec("Test-v0", "gymnasium", (4,), torch.float32, True, NUM_ACTIONS, (), (), (), None)


def _agent(eval_epsilon: float, seed: int = 3) -> DQN:
    torch.manual_seed(0)
    cfg = resolve(dict(algo="dqn", env="Test-v0", total_steps=10_000, hidden_sizes=(8,), seed=seed,
                       eval_epsilon=eval_epsilon))
    return build_dqn(SPEC, cfg, CPU, False)


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_eval_epsilon_plays_random_actions_at_its_rate_from_its_own_generator(eps):
    agent = _agent(eps)
    obs = one_state()
    exploration_state = agent.generator.get_state()
    greedy = int(agent.greedy(obs[:1])[0])
    actions = agent.evaluation_actions(obs)
    assert_epsilon_greedy(actions, greedy, eps, NUM_ACTIONS)
    # Evaluation does not move the exploration stream (a resumed run trains exactly as before).
    assert torch.equal(agent.generator.get_state(), exploration_state)
    assert torch.equal(_agent(eps).evaluation_actions(obs), actions)  # seeded
    assert not torch.equal(_agent(eps, seed=4).evaluation_actions(obs), actions)


def test_eval_epsilon_0_is_greedy_and_draws_nothing():
    agent = _agent(0.0)
    obs = torch.randn(512, 4, generator=torch.Generator().manual_seed(1))
    states = agent.generator.get_state(), agent.eval_generator.get_state()
    assert torch.equal(agent.evaluation_actions(obs), agent.greedy(obs))
    assert torch.equal(agent.evaluation_actions(obs), agent.evaluation_actions(obs))
    assert torch.equal(agent.generator.get_state(), states[0])
    assert torch.equal(agent.eval_generator.get_state(), states[1])


def test_eval_epsilon_is_checked():
    from fastrl.settings import ConfigError
    from fastrl.config import validate

    with pytest.raises(ConfigError, match=r"^--eval-epsilon: must be in \[0, 1\]"):
        validate(resolve({"eval_epsilon": 1.5}))
    with pytest.raises(ConfigError, match="--eval-epsilon: a dqn setting"):
        resolve({"algo": "td3", "env": "Pendulum-v1", "eval_epsilon": 0.05})


def test_trainer_and_evaluate_play_the_evaluation_policy_on_eval_envs(tmp_path, monkeypatch, capsys):
    seen = []

    def recording(policy, envs, episodes):
        seen.append((policy, envs.role))
        return real(policy, envs, episodes)

    real = evaluate_mod.evaluate_policy
    monkeypatch.setattr(train_mod, "evaluate_policy", recording)
    monkeypatch.setattr(evaluate_mod, "evaluate_policy", recording)
    run = tiny_run(tmp_path / "run", "CartPole-v1", "--eval-epsilon", "0.25")
    assert evaluate_mod.main([str(run), "--episodes", "2", "--no-video"]) == 0
    assert "ε-greedy (ε = 0.25) return" in capsys.readouterr().out
    assert len(seen) == 2
    for policy, role in seen:
        assert role == "eval" and policy.__func__ is DQN.evaluation_actions


def test_the_breakout_preset_follows_cleanrl():
    cfg = resolve({"env": "Breakout-v5"})
    assert (cfg.buffer_size, cfg.batch_size, cfg.lr, cfg.gamma, cfg.learning_starts) == (1_000_000, 32, 1e-4, 0.99, 80_000)
    assert cfg.updates_per_transition == 0.25  # CleanRL: one update every 4 env steps
    # CleanRL copies the target every 1000 env steps: 250 updates.
    assert (cfg.target_update, cfg.target_period * 4) == ("hard", 1_000)
    assert (cfg.eps_start, cfg.eps_end, cfg.eps_fraction, cfg.total_steps) == (1.0, 0.01, 0.1, 10_000_000)
    assert (cfg.loss, cfg.double_dqn, cfg.max_grad_norm) == ("mse", False, 0.0)
    assert (cfg.eval_epsilon, cfg.eval_episodes) == (0.05, 10)


def test_agents_without_an_evaluation_policy_evaluate_greedily():
    from fastrl.td3 import build_td3

    cfg = resolve({"algo": "td3", "env": "Pendulum-v1", "hidden_sizes": (8,), "total_steps": 1_000})
    agent = build_td3(lookup_spec("Pendulum-v1"), cfg, CPU, False)
    assert evaluate_mod.evaluation_policy(agent) == agent.greedy
