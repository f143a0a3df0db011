"""Stacked TD3 and DDPG members (`--num-seeds`, `--sweep`): each member of one stacked computation
learns exactly as its own single agent would, draws its noise from its own generator, and nothing
of one member (a NaN) reaches another."""

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
from fastrl.td3 import build_ddpg, build_td3
from fastrl.td3_members import build_td3_members
from tests.test_members import interrupted_and_resumed, nan_rewards_from_update
from tests.test_resume import one_thread, read_rows  # noqa: F401

SPEC = lookup_spec("Pendulum-v1")
CPU = torch.device("cpu")
SMALL = {"env": "Pendulum-v1", "hidden_sizes": (32, 32), "total_steps": 4000, "batch_size": 16,
         "lr_schedule": "linear"}
SINGLE = {"td3": build_td3, "ddpg": build_ddpg}
NETS = ("actor", "critic", "actor_target", "critic_target")


def members_of(algo, sweeps=(), seeds=2, **settings):
    cfg = resolve({**SMALL, "algo": algo, "num_seeds": seeds, "sweep": tuple(sweeps), **settings})
    return cfg, member_configs(cfg, plan_members(cfg))


def stacked_of(cfg, configs):
    return build_td3_members(SPEC, cfg, configs, CPU, twin=cfg.algo == "td3")


def singles(configs):
    """Each member's own single agent, built as a run of its seed builds it."""
    agents = []
    for c in configs:
        torch.manual_seed(c.seed)
        agents.append(SINGLE[c.algo](SPEC, dataclasses.replace(c, gradients="manual"), CPU, False))
    return agents


def random_batch(members, size, seed, weighted=False):
    """A batch [M, B, ...]; `weighted`: with n-step discounts and importance weights (prioritized)."""
    g = torch.Generator().manual_seed(seed)
    shape = (members, size)
    extra = (0.99 ** torch.randint(1, 4, shape, generator=g).float(), torch.rand(*shape, generator=g) + 0.5) \
        if weighted else ()
    return Batch(torch.randn(*shape, 3, generator=g), 4 * torch.rand(*shape, 1, generator=g) - 2,
                 torch.randn(*shape, generator=g), torch.randn(*shape, 3, generator=g),
                 (torch.rand(*shape, generator=g) < 0.1).float(), *extra)


def parts(net, flat=None):
    """The net's parameters, or its flat optimizer tensor `flat` cut into the parameters' shapes."""
    if flat is None:
        return [p.detach() for p in net.parameters()]
    out, offset = [], 0
    for p in net.parameters():
        out.append(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()
    return out


def member_state(stacked, e):
    """Member e's rows of every net and of both optimizers' moments."""
    c = stacked.critics
    rows = {"actor": slice(e, e + 1), "critic": slice(c * e, c * (e + 1))}
    out = [t[rows[name.removesuffix("_target")]] for name in NETS for t in parts(getattr(stacked, name))]
    for net, opt, r in ((stacked.critic, stacked.critic_opt, rows["critic"]), (stacked.actor, stacked.actor_opt,
                                                                                rows["actor"])):
        out += [t[r] for moments in (opt.exp_avg, opt.exp_avg_sq) for t in parts(net, moments[0])]
    return out


def single_state(agent):
    nets = {"actor": agent.actor.net, "critic": agent.critic, "actor_target": agent.actor_target.net,
            "critic_target": agent.critic_target}
    out = [t for name in NETS for t in parts(nets[name])]
    for net, opt in ((agent.critic, agent.critic_opt), (agent.actor.net, agent.actor_opt)):
        out += [t for moments in (opt.exp_avg, opt.exp_avg_sq) for t in parts(net, moments[0])]
    return out


def varied(algo, *members, **shared):
    """Members with their own settings each (a sweep's grid, without making all its corners)."""
    cfg = resolve({**SMALL, "algo": algo, "num_seeds": len(members), **shared})
    return cfg, [dataclasses.replace(cfg, num_seeds=1, seed=1 + e, **m) for e, m in enumerate(members)]


# Soft and hard members side by side, their own τs, periods, lrs (critic and actor), discounts, clip
# norms and noises.
CASES = {
    "td3-seeds": lambda: members_of("td3", (), 3),
    "td3-varied": lambda: varied(
        "td3", {"tau": 0.2, "lr": 1e-3, "gamma": 0.9, "max_grad_norm": 0.5, "policy_noise": 0.1},
        {"tau": 0.005, "lr": 3e-3, "gamma": 0.99, "max_grad_norm": 0.0, "policy_noise": 0.4, "noise_clip": 0.1},
        {"target_update": "hard", "target_period": 2, "actor_lr": 5e-3, "max_grad_norm": 1e-3, "policy_noise": 0.3},
        {"target_update": "hard", "target_period": 1, "lr": 2e-3, "gamma": 0.95}),
    "td3-sweep": lambda: members_of("td3", ("target=hard:2,soft:0.2", "max_grad_norm=0,0.5",
                                            "policy_noise=0.1,0.4"), 1),
    "ddpg-varied": lambda: varied(
        "ddpg", {"tau": 0.2, "lr": 1e-3, "gamma": 0.9, "max_grad_norm": 0.5},
        {"tau": 0.005, "lr": 3e-3, "gamma": 0.99, "max_grad_norm": 0.0, "actor_lr": 1e-3},
        {"target_update": "hard", "target_period": 2, "max_grad_norm": 1e-3}),
}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny nets: one thread (two OpenMP threads beside other processes stall each other)."""


@pytest.mark.parametrize("case", list(CASES))
def test_stacked_updates_equal_each_members_own_single_agent_updates(case):
    cfg, configs = CASES[case]()
    algo = cfg.algo
    stacked, alone = stacked_of(cfg, configs), singles(configs)
    for e, agent in enumerate(alone):  # same start: member e's weights are its seed's
        assert all(torch.equal(a, b) for a, b in zip(member_state(stacked, e), single_state(agent), strict=True))
    actor_updates = clipped = 0
    for k in range(6):  # td3: three actor updates (policy_delay 2); ddpg: six
        batch = random_batch(len(configs), 16, seed=k, weighted=case.endswith("varied"))
        metrics = stacked.update(batch)
        actor_updates += "actor_loss" in metrics
        clipped += sum(float(n) > c.max_grad_norm > 0 for n, c in zip(metrics["grad_norm"], configs))
        for e, agent in enumerate(alone):
            own = agent.update(batch[e])
            assert own.keys() == metrics.keys()
            for name in own:
                assert torch.allclose(metrics[name][e], own[name], rtol=1e-5, atol=1e-6), (name, e, k)
    assert actor_updates == (3 if algo == "td3" else 6)
    assert clipped or all(c.max_grad_norm == 0 for c in configs)  # the clips did bind
    for e, agent in enumerate(alone):
        for mine, its in zip(member_state(stacked, e), single_state(agent), strict=True):
            assert torch.allclose(mine, its, rtol=1e-5, atol=1e-6), e
        assert stacked.current_lr()[e] == pytest.approx(agent.current_lr())
        assert stacked.actor_opt.lr * stacked.actor_lrs[e] / stacked.actor_lrs[0] == pytest.approx(agent.actor_opt.lr)
        # The smoothing noise (td3) came from the member's own stream: it stands where the single agent's does.
        assert torch.equal(stacked.generators[e].get_state(), agent.generator.get_state())
    assert all(v.shape == (len(configs),) for k, v in metrics.items() if k != "td_abs")  # one value per member
    assert ("td_abs" in metrics) == case.endswith("varied")


@pytest.mark.parametrize("algo", ["td3", "ddpg"])
def test_exploration_comes_from_each_members_own_generator(algo):
    cfg, configs = members_of(algo, ("exploration_noise=0.1,0.5",), 2)
    stacked, alone = stacked_of(cfg, configs), singles(configs)
    m, n = len(configs), 3  # envs per member
    assert torch.equal(stacked.random_actions(m * n), torch.cat([a.random_actions(n) for a in alone]))
    obs = torch.randn(m * n, 3)
    for _ in range(3):
        acted, greedy = stacked.act(obs, 0), stacked.greedy(obs)
        for e, agent in enumerate(alone):
            rows = slice(e * n, (e + 1) * n)
            assert torch.allclose(acted[rows], agent.act(obs[rows], 0), atol=1e-6)
            assert torch.allclose(greedy[rows], agent.greedy(obs[rows]), atol=1e-6)
    assert stacked.exploration(0) == {"exploration_noise": [c.exploration_noise for c in configs]}
    # Member 1's stream does not depend on member 0's: re-seeding member 0 leaves member 1 alone.
    stacked.generators[0].manual_seed(12345)
    acted = stacked.act(obs, 0)
    assert torch.allclose(acted[n:2 * n], alone[1].act(obs[n:2 * n], 0), atol=1e-6)
    assert not torch.allclose(acted[:n], alone[0].act(obs[:n], 0), atol=1e-6)


@pytest.mark.parametrize("algo", ["td3", "ddpg"])
def test_nan_in_one_members_batch_leaves_the_others_untouched(algo):
    cfg, configs = members_of(algo, ("max_grad_norm=0,0.5",), 2)  # members 0, 1 unclipped; 2, 3 clipped
    clean, poisoned = stacked_of(cfg, configs), stacked_of(cfg, configs)
    for k in range(4):
        batch, bad = random_batch(4, 16, seed=k), random_batch(4, 16, seed=k)
        if k == 1:
            bad.rewards[1, 3] = float("nan")
            bad.next_obs[2, 5, 0] = float("nan")
        m_clean, m_bad = clean.update(batch), poisoned.update(bad)
    assert "actor_loss" in m_bad and not torch.isfinite(m_bad["loss"][[1, 2]]).any()
    assert torch.isfinite(m_bad["loss"][[0, 3]]).all()
    for e in (0, 3):
        assert all(torch.equal(a, b) for a, b in zip(member_state(clean, e), member_state(poisoned, e)))
    for e in (1, 2):
        assert not all(torch.isfinite(t).all() for t in member_state(poisoned, e))
    live = poisoned.weights_of([0, 3])  # what the checkpoint's NaN check looks at
    assert all(torch.isfinite(t).all() for ts in live.values() for t in ts)
    assert live["critic"][0].shape[0] == 2 * clean.critics


def tiny_run(run_dir, algo, *extra):
    return ["--algo", algo, "--env", "Pendulum-v1", "--total-steps", "1200", "--learning-starts", "300",
            "--batch-size", "16", "--hidden-sizes", "16", "16", "--eval-episodes", "2", "--log-every", "600",
            "--device", "cpu", "--no-progress", "--threads", "1", "--run-dir", str(run_dir), *extra]


def test_a_td3_num_seeds_run_writes_every_member(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_mod.main(tiny_run(run, "td3", "--num-seeds", "2", "--total-steps", "1500",
                                   "--learning-starts", "500")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert [m["seed"] for m in summary["members"]] == [1, 2]
    assert all(len(m["final_eval_returns"]) == 2 for m in summary["members"])
    rows = read_metrics(run)
    assert sorted({r["member"] for r in rows}) == ["0", "1"]
    assert all(float(r["actor_loss"]) < 1e9 and 0 < float(r["action_entropy"]) for r in rows)

    # Each member is its own policy: member 1 acts as its own single agent, and evaluates alone.
    policy = load_policy(run, member=1)
    state = load_checkpoint(run / "checkpoint.pt")["agent"]
    assert policy.config.seed == 2 and policy.config.algo == "td3"
    assert torch.equal(policy.agent.actor.net.weights[0][0], state["actor"]["weights.0"][1])
    assert torch.equal(policy.agent.critic.weights[0], state["critic"]["weights.0"][2:4])
    assert evaluate_main([str(run), "--member", "1", "--episodes", "1", "--no-video"]) == 0
    assert "member 1 (seed 2)" in capsys.readouterr().out


def test_a_ddpg_sweep_run_writes_every_member(tmp_path):
    run = tmp_path / "run"
    assert train_mod.main(tiny_run(run, "ddpg", "--sweep", "tau=0.005,0.02")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert [m["settings"] for m in summary["members"]] == [{"tau": 0.005}, {"tau": 0.02}]
    assert [g["settings"] for g in summary["grid"]] == [{"tau": 0.005}, {"tau": 0.02}]
    last = {r["member"]: r for r in read_metrics(run)}
    assert last["1"]["sweep_tau"] == "0.02" and last["0"]["exploration_noise"] == "0.1"
    critic = load_checkpoint(run / "checkpoint.pt")["agent"]["critic"]["weights.0"]
    assert critic.shape[0] == 2  # DDPG: one critic per member


def test_a_stacked_td3_run_resumes_exactly(tmp_path, monkeypatch):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = ("--num-seeds", "2", "--sweep", "gamma=0.9,0.99", "--checkpoint-every", "600", "--checkpoint-buffer")
    a, b = interrupted_and_resumed(monkeypatch, straight, resumed, lambda run: tiny_run(run, "td3", *args), 600)
    assert a["members"] == b["members"] and a["agent"]["actor_updates"] == b["agent"]["actor_updates"] > 0
    rows_a, rows_b = read_metrics(straight), read_rows(resumed)
    assert [(r["member"], r["loss"]) for r in rows_a] == [(r["member"], r["loss"]) for r in rows_b]


def test_a_nan_in_one_td3_member_stops_that_member_and_the_others_train_on(tmp_path, monkeypatch, capsys):
    nan_rewards_from_update(monkeypatch, member=1)  # member 1 acts on NaN weights from then on
    sent, real_init, real_send = [], train_mod.TorchVecEnv.__init__, train_mod.TorchVecEnv.send

    def init(self, *args, role="train", **kwargs):
        self.recorded = role == "train"  # the training envs, not the eval envs
        real_init(self, *args, role=role, **kwargs)

    def send(self, actions):
        if self.recorded:
            sent.append(actions.clone())
        return real_send(self, actions)

    monkeypatch.setattr(train_mod.TorchVecEnv, "__init__", init)
    monkeypatch.setattr(train_mod.TorchVecEnv, "send", send)
    run = tmp_path / "run"
    assert train_mod.main(tiny_run(run, "td3", "--num-seeds", "3", "--checkpoint-every", "600")) == 0
    assert "member 1 (seed 2): non-finite loss" in capsys.readouterr().err
    # Member 1's NaN actions reach no env: its envs get the box's middle (Pendulum's 0) instead.
    assert all(torch.isfinite(a).all() for a in sent)
    n = sent[-1].shape[0] // 3  # envs per member
    assert torch.equal(sent[-1][n:2 * n], torch.zeros_like(sent[-1][n:2 * n]))
    assert sent[-1][:n].abs().sum() > 0 and sent[-1][2 * n:].abs().sum() > 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_members"] == [1] and summary["grid"][0]["seeds"] == [1, 3]
    actor = load_checkpoint(run / "checkpoint.pt")["agent"]["actor"]["weights.0"]
    assert torch.isfinite(actor[[0, 2]]).all() and not torch.isfinite(actor[1]).all()


@pytest.mark.parametrize("algo,extra,hint", [
    ("td3", ("--sweep", "eps_end=0.1,0.2"), "--sweep: eps_end is not a setting of --algo td3"),
    ("ddpg", ("--sweep", "policy_noise=0.1,0.2"), "--sweep: policy_noise is not a setting of --algo ddpg"),
    ("td3", ("--sweep", "policy_delay=1,2"), "--sweep: policy_delay cannot differ between the members"),
    ("td3", ("--num-seeds", "2", "--gradients", "autograd"), "the stacked update is the hand-written one"),
])
def test_bad_td3_member_settings_are_one_line_errors(algo, extra, hint, tmp_path, capsys):
    assert train_mod.main(tiny_run(tmp_path / "run", algo, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert hint in err and len(err.splitlines()) == 1, err
