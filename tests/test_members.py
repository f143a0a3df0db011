"""Stacked members (`--num-seeds`, `--sweep`): each member of one stacked computation learns exactly
as its own single agent would, draws from its own generators, and nothing of one member (a NaN, a
huge gradient) reaches another."""

import dataclasses
import json

import numpy as np
import pytest
import torch

import fastrl.train as train_mod
from fastrl.buffer import Batch, ReplayBuffer
from fastrl.checkpoint import load_checkpoint
from fastrl.config import ConfigError, resolve
from fastrl.evaluate import main as evaluate_main
from fastrl.policy import load_policy
from fastrl.dqn import build_dqn
from fastrl.dqn_members import build_dqn_members
from fastrl.envs import lookup_spec
from fastrl.fused_adam import clip_grad_norm_members_
from fastrl.member_replay import MemberReplay
from fastrl.members import check_members, iqm, member_configs, plan_members
from fastrl.runlog import read_metrics
from tests.test_resume import read_rows, sigint_after_first_checkpoint, tensors

SPEC = lookup_spec("CartPole-v1")
CPU = torch.device("cpu")
SMALL = {"hidden_sizes": (32, 32), "total_steps": 4000, "batch_size": 16, "lr_schedule": "linear"}


def members_of(sweeps=(), seeds=2, **settings):
    cfg = resolve({**SMALL, "num_seeds": seeds, "sweep": tuple(sweeps), **settings})
    members = plan_members(cfg)
    return cfg, member_configs(cfg, members)


def singles(configs):
    """Each member's own single agent, built as a run of its seed builds it."""
    agents = []
    for c in configs:
        torch.manual_seed(c.seed)
        agents.append(build_dqn(SPEC, dataclasses.replace(c, gradients="manual"), CPU, False))
    return agents


def random_batch(members, size, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (members, size)
    return Batch(torch.randn(*shape, 4, generator=g), torch.randint(0, 2, shape, generator=g).float(),
                 torch.rand(*shape, generator=g), torch.randn(*shape, 4, generator=g),
                 (torch.rand(*shape, generator=g) < 0.1).float())


def member_weights(agent, e):
    return [p.detach()[e] for p in agent.q.parameters()] + [p.detach()[e] for p in agent.q_target.parameters()]


def single_weights(agent):
    return [p.detach()[0] for p in agent.q.parameters()] + [p.detach()[0] for p in agent.q_target.parameters()]


# Soft and hard members side by side, their own periods, τs, lrs, discounts and clip norms.
SWEEPS = ("target_update=soft,hard", "lr=1e-3,3e-3", "gamma=0.9,0.99", "max_grad_norm=0,0.5")


@pytest.mark.parametrize("sweeps,seeds,extra", [
    ((), 3, {}),
    (SWEEPS, 1, {"target_period": 3, "tau": 0.2}),
    (("target_period=2,3",), 2, {"target_update": "hard"}),
], ids=["seeds", "grid", "periods"])
def test_stacked_updates_equal_each_members_own_single_agent_updates(sweeps, seeds, extra):
    cfg, configs = members_of(sweeps, seeds, **extra)
    stacked = build_dqn_members(SPEC, cfg, configs, CPU)
    alone = singles(configs)
    for e, agent in enumerate(alone):  # same start: member e's weights are its seed's
        assert all(torch.equal(a, b) for a, b in zip(member_weights(stacked, e), single_weights(agent)))
    for k in range(7):  # past several hard-update periods
        batch = random_batch(len(configs), 16, seed=k)
        metrics = stacked.update(batch)
        for e, agent in enumerate(alone):
            own = agent.update(batch[e])
            for name in ("loss", "mean_q", "grad_norm"):
                assert torch.allclose(metrics[name][e], own[name], rtol=1e-5, atol=1e-6), (name, e, k)
    for e, agent in enumerate(alone):
        for mine, its in zip(member_weights(stacked, e), single_weights(agent)):
            assert torch.allclose(mine, its, rtol=1e-5, atol=1e-6), e
        assert stacked.current_lr()[e] == pytest.approx(agent.current_lr())


def test_exploration_comes_from_each_members_own_generator():
    cfg, configs = members_of((), 3)
    stacked, alone = build_dqn_members(SPEC, cfg, configs, CPU), singles(configs)
    n = 5  # envs per member
    obs = torch.randn(3 * n, 4)
    assert torch.equal(stacked.random_actions(3 * n),
                       torch.cat([a.random_actions(n) for a in alone]))
    for env_step in (0, 300, 4000):  # ε from 1 down to its end
        acted = stacked.act(obs, env_step)
        for e, agent in enumerate(alone):
            assert torch.equal(acted[e * n:(e + 1) * n], agent.act(obs[e * n:(e + 1) * n], env_step))
    # Member 1's stream does not depend on member 0's: re-seeding member 0 leaves member 1 alone.
    stacked.generators[0].manual_seed(12345)
    acted = stacked.act(obs, 0)
    assert torch.equal(acted[n:2 * n], alone[1].act(obs[n:2 * n], 0))


@pytest.mark.parametrize("options,beta", [({}, None), ({"n_step": 3}, None), ({"prioritized": True}, 0.5)],
                         ids=["uniform", "n-step", "prioritized"])
def test_replay_draws_come_from_each_members_own_buffer_and_generator(options, beta):
    members, n = 3, 2

    def buffers():  # each member its own discount too (n-step returns are made at sample time)
        return [ReplayBuffer(200, n, (4,), torch.float32, (), torch.int64, seed=seed, gamma=gamma, **options)
                for seed, gamma in ((1, 0.9), (2, 0.95), (3, 0.99))]
    stacked, alone = MemberReplay(buffers()), buffers()
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        obs, actions = torch.randn(members * n, 4, generator=g), torch.randint(0, 2, (members * n,), generator=g)
        rewards, terminated = torch.rand(members * n, generator=g), torch.zeros(members * n)
        valid = np.ones(members * n, dtype=bool)
        stacked.add(obs, actions, rewards, terminated, valid)
        for e, b in enumerate(alone):
            rows = slice(e * n, (e + 1) * n)
            b.add(obs[rows], actions[rows], rewards[rows], terminated[rows], valid[rows])
    drawn = stacked.sample_batches(4, 8, beta)
    own = [b.sample_batches(4, 8, beta) for b in alone]
    for k, batch in enumerate(drawn):
        assert batch.obs.shape == (members, 8, 4)
        for e in range(members):
            mine, its = batch[e], own[e][k]
            for a, b in zip(mine._fields(), its._fields()):
                assert (a is None and b is None) or torch.equal(a, b)
    if beta is not None:  # priorities go back to each member's own tree
        stacked.update_priorities(drawn[0].indices, torch.full((members, 8), 5.0))
        assert all((b.priorities(drawn[0].indices[e]) > 1).all() for e, b in enumerate(stacked.buffers))


def test_nan_in_one_members_loss_leaves_the_others_untouched():
    cfg, configs = members_of((), 3)
    clean, poisoned = (build_dqn_members(SPEC, cfg, configs, CPU) for _ in range(2))
    for k in range(4):
        batch = random_batch(3, 16, seed=k)
        bad = random_batch(3, 16, seed=k)
        if k == 1:
            bad.rewards[1, 3] = float("nan")
        m_clean, m_bad = clean.update(batch), poisoned.update(bad)
    assert not torch.isfinite(m_bad["loss"][1]) and torch.isfinite(m_bad["loss"][[0, 2]]).all()
    for e in (0, 2):
        assert all(torch.equal(a, b) for a, b in zip(member_weights(clean, e), member_weights(poisoned, e)))
    assert not all(torch.isfinite(w).all() for w in member_weights(poisoned, 1))


def test_a_member_with_huge_gradients_does_not_change_anothers_step():
    cfg, configs = members_of(("max_grad_norm=0.5",), 2, loss="mse")  # Huber's slope is bounded
    calm, wild = (build_dqn_members(SPEC, cfg, configs, CPU) for _ in range(2))
    batch = random_batch(2, 16, seed=0)
    huge = random_batch(2, 16, seed=0)
    huge.rewards[0] *= 1e6  # member 0's gradient is clipped hard; member 1's must be as without it
    m_calm, m_wild = calm.update(batch), wild.update(huge)
    assert m_wild["grad_norm"][0] > 1e3 * m_calm["grad_norm"][0]
    assert torch.equal(m_wild["grad_norm"][1], m_calm["grad_norm"][1])
    assert all(torch.equal(a, b) for a, b in zip(member_weights(calm, 1), member_weights(wild, 1)))


def test_per_member_clip_scales_each_member_by_its_own_norm():
    grads = [torch.tensor([[3.0, 4.0], [0.3, 0.4], [30.0, 40.0]]), torch.zeros(3, 1)]
    norms = clip_grad_norm_members_(grads, torch.tensor([1.0, 1.0, 0.0]))
    assert torch.allclose(norms, torch.tensor([5.0, 0.5, 50.0]))
    assert torch.allclose(grads[0], torch.tensor([[0.6, 0.8], [0.3, 0.4], [30.0, 40.0]]), atol=1e-6)


def test_iqm_trims_a_quarter_from_each_end():
    assert iqm([1, 2, 3, 100]) == pytest.approx(2.5)
    assert iqm([1.0, 2.0]) == pytest.approx(1.5)


def tiny_run(run_dir, *extra):
    return ["--total-steps", "1200", "--num-envs", "2", "--learning-starts", "200", "--train-every", "4",
            "--updates-per-train", "2", "--batch-size", "16", "--hidden-sizes", "16", "--eval-episodes", "2",
            "--log-every", "600", "--device", "cpu", "--no-progress", "--threads", "1", "--run-dir", str(run_dir),
            *extra]


def test_a_num_seeds_run_writes_every_member(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_mod.main(tiny_run(run, "--num-seeds", "3")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert [m["seed"] for m in summary["members"]] == [1, 2, 3]
    assert all(len(m["final_eval_returns"]) == 2 for m in summary["members"])
    finals = [m["final_eval_return_mean"] for m in summary["members"]]
    assert summary["final_eval_return_mean"] == pytest.approx(np.mean(finals))
    assert summary["env_steps"] == 1200 and summary["sps_all_members"] == pytest.approx(3 * summary["sps"])
    assert summary["grid"][0]["seeds"] == [1, 2, 3] and summary["grid"][0]["final_eval_return_mean"]["n"] == 3
    rows = read_metrics(run)
    assert sorted({r["member"] for r in rows}) == ["0", "1", "2"] and len(rows) == 2 * 3
    assert (run / "learning_curve.png").exists()

    # Each member is its own policy: member 1 acts as its own single agent, and evaluates alone.
    with pytest.raises(ConfigError, match="this run trained 3 members"):
        load_policy(run)
    policy = load_policy(run, member=1)
    stacked = load_checkpoint(run / "checkpoint.pt")["agent"]["q"]["weights.0"]
    assert policy.config.seed == 2 and torch.equal(next(policy.agent.q.parameters())[0], stacked[1])
    assert evaluate_main([str(run), "--member", "1", "--episodes", "2", "--no-video"]) == 0
    assert "member 1 (seed 2)" in capsys.readouterr().out
    assert evaluate_main([str(run), "--episodes", "2", "--no-video"]) == 0
    assert capsys.readouterr().out.count("member ") == 3


def test_automatic_threads_count_the_stacked_members(tmp_path, monkeypatch):
    asked = []

    def fake_auto_threads(batch_size, hidden_sizes, cores, members=1):
        asked.append((batch_size, members))
        return 1

    monkeypatch.setattr(train_mod, "auto_threads", fake_auto_threads)
    run = tmp_path / "run"
    assert train_mod.main(tiny_run(run, "--num-seeds", "3", "--threads", "0")) == 0
    assert asked == [(16, 3)]
    assert json.loads((run / "config.json").read_text())["threads_resolved"] == 1


def test_a_sweep_forms_a_grid_of_settings_times_seeds(tmp_path):
    run = tmp_path / "run"
    assert train_mod.main(tiny_run(run, "--num-seeds", "2", "--sweep", "target_update=soft,hard",
                                   "--sweep", "lr=1e-3,2e-3")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["members"]) == 8 and len(summary["grid"]) == 4
    assert summary["grid"][1]["settings"] == {"target_update": "soft", "lr": 2e-3}
    rows = read_metrics(run)
    last = {r["member"]: r for r in rows}
    assert last["2"]["sweep_lr"] == "0.002" and float(last["2"]["lr"]) < 0.002  # the preset's linear schedule
    assert last["4"]["sweep_target_update"] == "hard"


def test_a_target_sweep_puts_each_rule_beside_the_others_with_its_own_parameter(tmp_path):
    run = tmp_path / "run"
    assert train_mod.main(tiny_run(run, "--sweep", "target=hard:50,soft:0.02,hard:7")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert [g["settings"] for g in summary["grid"]] == [
        {"target_update": "hard", "target_period": 50}, {"target_update": "soft", "tau": 0.02},
        {"target_update": "hard", "target_period": 7}]
    cfg = resolve({**SMALL, "sweep": ("target=hard:50,soft:0.02", "lr=1e-3,2e-3")})
    configs = member_configs(cfg, plan_members(cfg))
    assert [(c.target_update, c.target_period if c.target_update == "hard" else c.tau, c.lr) for c in configs] == [
        ("hard", 50, 1e-3), ("hard", 50, 2e-3), ("soft", 0.02, 1e-3), ("soft", 0.02, 2e-3)]
    last = {r["member"]: r for r in read_metrics(run)}
    assert last["0"]["sweep_target_period"] == "50" and last["1"]["sweep_tau"] == "0.02"


def interrupted_and_resumed(monkeypatch, straight, resumed, argv, first_save):
    """Train `argv(straight)` straight through, and `argv(resumed)` stopped by SIGINT after its
    first checkpoint (at env step `first_save`) and resumed; assert their final agents and
    buffers are bit-equal, and return both checkpoints."""
    assert train_mod.main(argv(straight)) == 0
    with monkeypatch.context() as patch:
        saves = sigint_after_first_checkpoint(patch)
        assert train_mod.main(argv(resumed)) == 130
    assert saves == [first_save]
    assert train_mod.main(["--resume", str(resumed)]) == 0
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(resumed / "checkpoint.pt")
    ta, tb = tensors({k: a[k] for k in ("agent", "buffer")}), tensors({k: b[k] for k in ("agent", "buffer")})
    assert ta.keys() == tb.keys() and len(ta) > 20
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, different
    return a, b


def nan_rewards_from_update(monkeypatch, member, after=50):
    """Patch the trainer's learner so that `member`'s rewards turn NaN from update `after` on (it
    then acts on NaN weights in its own envs)."""
    real = train_mod.build_learner

    def poisoned(*args, **kwargs):
        agent, buffer = real(*args, **kwargs)
        update, calls = agent.update_fn, []

        def update_fn(obs, actions, rewards, *rest):
            calls.append(1)
            if len(calls) >= after:
                rewards = rewards.clone()
                rewards[member] = float("nan")
            return update(obs, actions, rewards, *rest)

        agent.update_fn = update_fn
        return agent, buffer

    monkeypatch.setattr(train_mod, "build_learner", poisoned)


def test_a_stacked_run_resumes_exactly(tmp_path, monkeypatch):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = ("--num-seeds", "2", "--sweep", "gamma=0.9,0.99", "--checkpoint-every", "600", "--checkpoint-buffer")
    a, b = interrupted_and_resumed(monkeypatch, straight, resumed, lambda run: tiny_run(run, *args), 600)
    assert a["members"] == b["members"]
    rows_a, rows_b = read_metrics(straight), read_rows(resumed)
    assert [(r["member"], r["loss"]) for r in rows_a] == [(r["member"], r["loss"]) for r in rows_b]


def test_a_nan_in_one_member_stops_that_member_and_the_others_train_on(tmp_path, monkeypatch, capsys):
    nan_rewards_from_update(monkeypatch, member=1)
    run = tmp_path / "run"
    assert train_mod.main(tiny_run(run, "--num-seeds", "3", "--checkpoint-every", "600")) == 0
    err = capsys.readouterr().err
    assert "member 1 (seed 2): non-finite loss" in err and "the other members continue" in err, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_members"] == [1] and summary["members"][1]["stopped"]
    assert summary["grid"][0]["seeds"] == [1, 3]
    state = load_checkpoint(run / "checkpoint.pt")  # written at the end: the live members are finite
    assert state["counters"]["env_step"] == 1200
    weights = state["agent"]["q"]["weights.0"]
    assert torch.isfinite(weights[[0, 2]]).all() and not torch.isfinite(weights[1]).all()


@pytest.mark.parametrize("extra,hint", [
    (("--sweep", "batch_size=64,128"), "--sweep: batch_size cannot differ between the members of one process"),
    (("--sweep", "hidden_sizes=64"), "run one process per hidden_sizes value"),
    (("--sweep", "lr"), "--sweep: expected NAME=V1,V2,..."),
    (("--sweep", "lr=0.1,x"), "--sweep: lr values must each be a number"),
    (("--sweep", "tau=0,0.5"), "--sweep: tau=0.0: must be in (0, 1]"),
    (("--sweep", "bogus=1,2"), "'bogus' cannot be swept"),
    (("--sweep", "lr=1e-3", "--sweep", "lr=2e-3"), "lr is swept twice"),
    (("--sweep", "target=hard:10,soft:0.1", "--sweep", "tau=0.1,0.2"), "tau is set by both --sweep target and"),
    (("--sweep", "target=hard:10,medium:3"), "target values must each be hard:PERIOD or soft:TAU, got 'medium:3'"),
    (("--sweep", "target=hard:0"), "--sweep: target_period=0"),
    (("--num-seeds", "0"), "--num-seeds: must be a positive integer"),
])
def test_bad_member_settings_are_one_line_errors(extra, hint, tmp_path, capsys):
    assert train_mod.main(tiny_run(tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert hint in err and len(err.splitlines()) == 1, err


def test_an_algorithm_without_stacked_members_is_refused_by_name():
    cfg = resolve({**SMALL, "num_seeds": 2})
    with pytest.raises(ConfigError, match=r"--num-seeds: stacked members are available for ddpg, dqn, sac, td3 so "
                                          r"far, not --algo dqn; run its seeds and settings as separate processes"):
        check_members(cfg, lookup_spec("CartPole-v1"), False, None)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-kernel", "public-fallback"])
def test_lr_groups_step_each_range_with_its_own_lr(fused, monkeypatch):
    import fastrl.fused_adam as fa

    monkeypatch.setattr(fa, "HAS_FUSED_ADAM", fused and fa.HAS_FUSED_ADAM)
    g = torch.Generator().manual_seed(0)
    start, grads = torch.randn(10, generator=g), [torch.randn(10, generator=g) for _ in range(3)]
    p, grad = start.clone(), torch.zeros(10)
    grouped = fa.FusedAdam([p], lr=1e-2, grads=[grad], lr_groups=[(1.0, [(0, 3), (6, 10)]), (3.0, [(3, 6)])])
    ref = start.clone().requires_grad_(True)
    adam = torch.optim.Adam([ref], lr=1e-2)
    for step_grad in grads:
        grad.copy_(step_grad)
        grouped.step()
        ref.grad = step_grad.clone()
        adam.step()
    moved, expected = p - start, (ref.detach() - start)
    assert torch.allclose(moved[[0, 1, 2, 6, 7, 8, 9]], expected[[0, 1, 2, 6, 7, 8, 9]], rtol=1e-5, atol=1e-7)
    assert torch.allclose(moved[3:6], 3.0 * expected[3:6], rtol=1e-4, atol=1e-7)
