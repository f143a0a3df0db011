"""Stacked SAC members (`--algo sac --num-seeds`, `--sweep`): each member of the stacked computation
learns exactly as its own single SAC agent would (weights, Adam state, log α, metrics), draws its
noise from its own generator, and a NaN in one member reaches no other."""

import dataclasses
import json

import pytest
import torch

import fastrl.train as train_mod
from fastrl.buffer import Batch
from fastrl.checkpoint import load_checkpoint
from fastrl.config import resolve
from fastrl.envs import lookup_spec
from fastrl.evaluate import main as evaluate_main
from fastrl.members import member_configs, plan_members
from fastrl.policy import load_policy
from fastrl.runlog import read_metrics
from fastrl.sac import build_sac
from fastrl.sac_members import build_sac_members
from tests.test_members import interrupted_and_resumed
from tests.test_resume import read_rows, tensors

SPEC = lookup_spec("Pendulum-v1")
CPU = torch.device("cpu")
SMALL = {"algo": "sac", "env": "Pendulum-v1", "hidden_sizes": (32, 32), "total_steps": 4000, "batch_size": 16,
         "lr_schedule": "linear"}


def members_of(sweeps=(), seeds=2, **settings):
    cfg = resolve({**SMALL, "num_seeds": seeds, "sweep": tuple(sweeps), **settings})
    return cfg, member_configs(cfg, plan_members(cfg))


def singles(configs):
    """Each member's own single agent, built as a run of its seed builds it (the same hand-written update)."""
    agents = []
    for c in configs:
        torch.manual_seed(c.seed)
        agents.append(build_sac(SPEC, dataclasses.replace(c, gradients="manual"), CPU, False))
    return agents


def random_batch(members, size, seed, replay_extras=False):
    """A batch [M, B, ...]; with `replay_extras`, n-step discounts and importance weights too."""
    g = torch.Generator().manual_seed(seed)
    shape = (members, size)
    extras = (0.9 ** torch.randint(1, 4, shape, generator=g).float(), torch.rand(*shape, generator=g) + 0.5) \
        if replay_extras else ()
    return Batch(torch.randn(*shape, 3, generator=g), 4 * torch.rand(*shape, 1, generator=g) - 2,
                 torch.randn(*shape, generator=g), torch.randn(*shape, 3, generator=g),
                 (torch.rand(*shape, generator=g) < 0.1).float(), *extras)


def views(moment, net):
    """A flat Adam moment cut as `net`'s parameters view their flat parameter (which starts its storage)."""
    return [moment[p.storage_offset():p.storage_offset() + p.numel()].view(p.shape) for p in net.parameters()]


def member_state(stacked, e):
    """Member e's weights and optimizer state, in the single agent's order."""
    a, c = slice(e, e + 1), slice(2 * e, 2 * e + 2)
    out = [p.detach()[a] for p in stacked.actor.parameters()]
    out += [p.detach()[c] for net in (stacked.critic, stacked.critic_target) for p in net.parameters()]
    for opt, net, rows in ((stacked.critic_opt, stacked.critic, c), (stacked.actor_opt, stacked.actor, a)):
        out += [v[rows] for moment in (opt.exp_avg[0], opt.exp_avg_sq[0]) for v in views(moment, net)]
    t = stacked.temperature
    if t.log_alpha is not None:
        out += [t.log_alpha[e:e + 1], t.opt.exp_avg[0][e:e + 1], t.opt.exp_avg_sq[0][e:e + 1]]
    return out


def single_state(agent):
    out = [p.detach() for p in agent.actor.net.parameters()]
    out += [p.detach() for net in (agent.critic, agent.critic_target) for p in net.parameters()]
    for opt, net in ((agent.critic_opt, agent.critic), (agent.actor_opt, agent.actor.net)):
        out += [v for moment in (opt.exp_avg[0], opt.exp_avg_sq[0]) for v in views(moment, net)]
    t = agent.temperature
    if t.log_alpha is not None:
        out += [t.log_alpha.detach(), t.opt.exp_avg[0], t.opt.exp_avg_sq[0]]
    return out


def own_settings(cfg, *members):
    """Member configs with their own settings each (what a grid of sweeps gives, without the grid)."""
    return [dataclasses.replace(cfg, seed=cfg.seed + e, **m) for e, m in enumerate(members)]


# Every member differs from the others in every per-member setting at once; the clip is tight
# enough to bind where it is on, and off (0) for one member.
FIXED = ({"alpha": 0.05, "tau": 0.01, "lr": 1e-3, "gamma": 0.9, "max_grad_norm": 0.5},
         {"alpha": 0.3, "tau": 0.2, "lr": 3e-3, "gamma": 0.99, "max_grad_norm": 0.0},
         {"alpha": 0.1, "target_update": "hard", "target_period": 2, "lr": 1e-3, "gamma": 0.95, "max_grad_norm": 1.0})
TUNED = ({"target_update": "hard", "target_period": 2, "lr": 1e-3, "gamma": 0.9, "max_grad_norm": 0.5},
         {"tau": 0.2, "lr": 3e-3, "gamma": 0.99, "max_grad_norm": 0.0},
         {"target_update": "hard", "target_period": 3, "lr": 2e-3, "gamma": 0.95, "max_grad_norm": 1.0})


@pytest.mark.parametrize("members,extra,replay_extras", [
    (({}, {}, {}), {"max_grad_norm": 0.5}, False),
    (FIXED, {}, False),
    (TUNED, {"policy_delay": 2}, False),
    (({"lr": 1e-3}, {"lr": 3e-3}), {"max_grad_norm": 0.5}, True),
], ids=["seeds", "fixed-alpha", "tuned-alpha", "weighted-n-step"])
def test_stacked_updates_equal_each_members_own_single_agent_updates(members, extra, replay_extras):
    cfg = resolve({**SMALL, "num_seeds": len(members), **extra})
    configs = own_settings(cfg, *members)
    stacked, alone = build_sac_members(SPEC, cfg, configs, CPU), singles(configs)
    assert (stacked.temperature.log_alpha is None) == (members is FIXED)
    for e, agent in enumerate(alone):  # same start: member e's weights are its seed's
        assert all(torch.equal(a, b) for a, b in zip(member_state(stacked, e), single_state(agent), strict=True))
    clipped = set()
    for k in range(5):  # past two hard-update periods, actor updates and critic-only ones
        batch = random_batch(len(configs), 16, seed=k, replay_extras=replay_extras)
        metrics = stacked.update(batch)
        for e, agent in enumerate(alone):
            own = agent.update(batch[e])
            assert set(own) == set(metrics) and ("td_abs" in own) == replay_extras
            for name, value in own.items():
                assert torch.allclose(metrics[name][e], value, rtol=1e-4, atol=1e-5), (name, e, k)
            if configs[e].max_grad_norm and own["grad_norm"] > configs[e].max_grad_norm:
                clipped.add(e)
    assert clipped  # the clip binds for some member
    for e, agent in enumerate(alone):
        for mine, its in zip(member_state(stacked, e), single_state(agent), strict=True):
            assert torch.allclose(mine, its, rtol=1e-4, atol=1e-6), e
        assert stacked.current_lr()[e] == pytest.approx(agent.current_lr())


def test_a_swept_alpha_fixes_each_members_own_alpha():
    cfg, configs = members_of(("alpha=0.1,0.2",), 2)
    stacked = build_sac_members(SPEC, cfg, configs, CPU)
    assert stacked.temperature.log_alpha is None
    assert stacked.temperature.value().tolist() == pytest.approx([0.1, 0.1, 0.2, 0.2])
    assert stacked.update(random_batch(4, 16, seed=0))["alpha"].tolist() == pytest.approx([0.1, 0.1, 0.2, 0.2])


def test_noise_comes_from_each_members_own_generator():
    cfg, configs = members_of((), 3)
    stacked, alone = build_sac_members(SPEC, cfg, configs, CPU), singles(configs)
    n = 4  # envs per member
    obs = torch.randn(3 * n, 3)
    assert torch.equal(stacked.random_actions(3 * n), torch.cat([a.random_actions(n) for a in alone]))
    for _ in range(2):
        acted = stacked.act(obs, 5000)
        for e, agent in enumerate(alone):
            assert torch.allclose(acted[e * n:(e + 1) * n], agent.act(obs[e * n:(e + 1) * n], 5000), atol=1e-6)
    greedy = stacked.greedy(obs)
    assert torch.allclose(greedy, torch.cat([a.greedy(obs[e * n:(e + 1) * n]) for e, a in enumerate(alone)]),
                          atol=1e-6)
    assert torch.equal(stacked.greedy(obs), greedy)  # the deterministic action draws nothing
    # Member 1's stream does not depend on member 0's: re-seeding member 0 leaves member 1 alone.
    stacked.generators[0].manual_seed(12345)
    acted = stacked.act(obs, 5000)
    assert torch.allclose(acted[n:2 * n], alone[1].act(obs[n:2 * n], 5000), atol=1e-6)
    assert not torch.allclose(acted[:n], alone[0].act(obs[:n], 5000))


def test_nan_in_one_members_batch_leaves_the_others_untouched():
    cfg, configs = members_of((), 3, max_grad_norm=1.0)
    clean, poisoned = (build_sac_members(SPEC, cfg, configs, CPU) for _ in range(2))
    for k in range(4):
        batch, bad = random_batch(3, 16, seed=k), random_batch(3, 16, seed=k)
        if k == 1:
            bad.rewards[1, 3] = float("nan")
        m_clean, m_bad = clean.update(batch), poisoned.update(bad)
    assert not torch.isfinite(m_bad["loss"][1]) and torch.isfinite(m_bad["loss"][[0, 2]]).all()
    for e in (0, 2):
        assert all(torch.equal(a, b) for a, b in zip(member_state(clean, e), member_state(poisoned, e)))
        for name, value in m_clean.items():
            assert torch.equal(value[e], m_bad[name][e]), name
    assert not all(torch.isfinite(w).all() for w in member_state(poisoned, 1))
    assert poisoned.weights_of([0, 2]).keys() == {"actor", "critic", "critic_target", "log_alpha"}
    assert all(torch.isfinite(t).all() for ts in poisoned.weights_of([0, 2]).values() for t in ts)


def small_run(run_dir, *extra):
    """The brief's CLI run, with small nets and batches so that it is quick."""
    return ["--algo", "sac", "--env", "Pendulum-v1", "--total-steps", "1500", "--learning-starts", "500",
            "--batch-size", "16", "--hidden-sizes", "16", "--eval-episodes", "2", "--log-every", "500",
            "--device", "cpu", "--no-progress", "--threads", "1", "--run-dir", str(run_dir), *extra]


def test_a_num_seeds_run_writes_every_member(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_mod.main(small_run(run, "--num-seeds", "2")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert [m["seed"] for m in summary["members"]] == [1, 2] and summary["env_steps"] == 1500
    assert all(len(m["final_eval_returns"]) == 2 for m in summary["members"])
    rows = read_metrics(run)
    assert sorted({r["member"] for r in rows}) == ["0", "1"]
    last = {r["member"]: r for r in rows}
    assert all(float(last[m]["alpha"]) < 1.0 and float(last[m]["action_entropy"]) > 0 for m in ("0", "1"))
    assert last["0"]["alpha"] != last["1"]["alpha"]

    # Each member is its own policy: member 1's actor is its slice of the stacked one.
    policy = load_policy(run, member=1)
    stacked = load_checkpoint(run / "checkpoint.pt")["agent"]
    assert policy.config.seed == 2 and torch.equal(policy.agent.actor.net.weights[0][0],
                                                   stacked["actor"]["net.weights.0"][1])
    assert torch.equal(policy.agent.critic.weights[1], stacked["critic"]["weights.1"][2:4])
    assert policy.act([1.0, 0.0, 0.0]).shape == (1,)
    assert evaluate_main([str(run), "--member", "1", "--episodes", "2", "--no-video"]) == 0
    assert "member 1 (seed 2)" in capsys.readouterr().out


def test_a_stacked_sac_run_resumes_exactly(tmp_path, monkeypatch):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = ("--num-seeds", "2", "--sweep", "lr=1e-3,3e-3", "--checkpoint-every", "1000", "--checkpoint-buffer")
    a, _ = interrupted_and_resumed(monkeypatch, straight, resumed, lambda run: small_run(run, *args), 1000)
    assert any("log_alpha" in k for k in tensors({"agent": a["agent"]}))
    rows_a, rows_b = read_metrics(straight), read_rows(resumed)
    assert [(r["member"], r["loss"], r["alpha"]) for r in rows_a] == [(r["member"], r["loss"], r["alpha"])
                                                                       for r in rows_b]


@pytest.mark.parametrize("extra,hint", [
    (("--sweep", "eps_start=0.5,1"), "--sweep: eps_start is not a setting of --algo sac"),
    (("--sweep", "alpha=0.1,0.2", "--alpha-lr", "1e-3"), "--alpha-lr: only used when α is tuned"),
    (("--sweep", "alpha=0,0.2"), "--sweep: alpha=0.0: must be"),
    (("--sweep", "alpha=0.1,0.2", "--algo", "dqn", "--env", "CartPole-v1"),
     "--sweep: alpha is not a setting of --algo dqn"),
])
def test_bad_sac_member_settings_are_one_line_errors(extra, hint, tmp_path, capsys):
    assert train_mod.main(small_run(tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert hint in err and len(err.splitlines()) == 1, err
