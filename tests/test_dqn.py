import copy

import pytest
import torch

from benchmarks.common import random_batch
from fastrl.buffer import Batch
from fastrl.config import resolve
from fastrl.dqn import build_dqn, make_autograd_update, make_manual_update, q_loss, td_target
from fastrl.envs import lookup_spec
from fastrl.fused_adam import FusedAdam, flatten_parameters_
from fastrl.stacked_mlp import StackedMLP
from fastrl.train import check_setup, train


def test_truncation_bootstraps_and_termination_does_not():
    rewards = torch.tensor([1.0, 1.0])
    next_q = torch.tensor([[2.0, 5.0], [2.0, 5.0]])
    # Both transitions ended their episode; only the first was a true termination. The second was
    # a time-limit cut: its target must still bootstrap from the next state.
    terminated = torch.tensor([1.0, 0.0])
    target = td_target(rewards, terminated, next_q, None, gamma=0.9)
    assert torch.allclose(target, torch.tensor([1.0, 1.0 + 0.9 * 5.0]))


def test_double_dqn_evaluates_the_online_argmax_with_the_target_net():
    next_q_target = torch.tensor([[10.0, 1.0]])
    next_q_online = torch.tensor([[0.0, 3.0]])  # online prefers action 1
    target = td_target(torch.zeros(1), torch.zeros(1), next_q_target, next_q_online, gamma=1.0)
    assert target.item() == 1.0


def _batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, 4, generator=g), torch.randint(0, 2, (n,), generator=g),
                 torch.rand(n, generator=g), torch.randn(n, 4, generator=g),
                 (torch.rand(n, generator=g) < 0.1).float())


def _learner(seed=0):
    torch.manual_seed(seed)
    q = StackedMLP(1, 4, (32, 32), 2)
    q_target = copy.deepcopy(q).requires_grad_(False)
    flat, flat_grad = flatten_parameters_(q)  # as build_dqn lays it out
    return q, q_target, FusedAdam([flat], lr=1e-3, grads=[flat_grad])


def _member0(net):
    return lambda x: net(x.flatten(1))[0]


def _replay_extras(n, seed, weighted):
    """n-step discounts (γ^m, m in 1..3) and importance weights, as a prioritized n-step batch has."""
    if not weighted:
        return None, None
    g = torch.Generator().manual_seed(100 + seed)
    return 0.99 ** torch.randint(1, 4, (n,), generator=g).float(), torch.rand(n, generator=g) + 0.1


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("loss,double,clip", [("huber", True, 10.0), ("huber", False, 0.05), ("mse", False, 0.05),
                                              ("mse", True, 0.0)])
def test_manual_gradients_equal_autograd_of_the_same_loss(loss, double, clip, weighted):
    """The hand-written backward against autograd of `q_loss`, step by step from the same weights:
    the gradient itself (after clipping: with a binding clip its direction; its scale through the
    returned pre-clip norm), the norm, the loss, and the weights after each Adam step. Comparing
    weights alone would not do: Adam's first steps are about lr·sign(g), whatever g's scale."""
    q1, t1, o1 = _learner()
    q2, t2 = copy.deepcopy(q1), copy.deepcopy(t1)
    flat2, grad2 = flatten_parameters_(q2)
    o2 = FusedAdam([flat2], lr=1e-3, grads=[grad2])
    manual = make_manual_update(q1, t1, o1, 0.99, double, loss, clip)
    autograd = make_autograd_update(_member0(q2), _member0(t2), list(q2.parameters()), grad2, o2, 0.99, double, loss,
                                    clip)
    for step in range(5):
        b = _batch(seed=step)
        actions = b.actions.float()  # as the buffer delivers them
        discount, weights = _replay_extras(64, step, weighted)
        out_m = manual(b.obs, actions, b.rewards, b.next_obs, b.terminated, discount, weights)
        out_a = autograd(b.obs, actions, b.rewards, b.next_obs, b.terminated, discount, weights)
        assert out_m.keys() == out_a.keys() == {"loss", "mean_q", "grad_norm"} | ({"td_abs"} if weighted else set())
        for name in out_m:
            torch.testing.assert_close(out_m[name], out_a[name], rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(o1.grads[0], o2.grads[0], rtol=1e-5, atol=1e-7)
        if clip:
            assert out_m["grad_norm"] > clip or clip == 10.0  # the small clip binds: the test covers clipping
        for m, a in zip(q1.parameters(), q2.parameters()):
            torch.testing.assert_close(m, a, rtol=1e-5, atol=1e-6)
    assert not torch.equal(q1.weights[0], t1.weights[0])  # the steps did move the net


def test_autograd_path_gradient_is_the_loss_gradient():
    """`grads_into_` writes d q_loss / dθ in the flat layout: against a plain backward."""
    q, t, o = _learner()
    reference = copy.deepcopy(q)
    for p in reference.parameters():
        p.grad = None
    update = make_autograd_update(_member0(q), _member0(t), list(q.parameters()), o.grads[0], o, 0.99, True, "huber",
                                  0.0)
    b = _batch(seed=3)
    loss, _ = q_loss(_member0(reference), _member0(t), b.obs, b.actions.float(), b.rewards, b.next_obs, b.terminated,
                     0.99, True, "huber")
    loss.backward()
    expected = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])
    out = update(b.obs, b.actions.float(), b.rewards, b.next_obs, b.terminated)
    torch.testing.assert_close(o.grads[0], expected)
    torch.testing.assert_close(out["grad_norm"], expected.norm())


def test_flat_parameters_are_the_module_parameters():
    q = StackedMLP(1, 3, (5,), 2)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    flat, flat_grad = flatten_parameters_(q)
    assert flat.numel() == sum(p.numel() for p in q.parameters())
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]) and v.data_ptr() >= flat.data_ptr()
    flat.add_(1.0)  # a step on the flat tensor is a step on every parameter
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k] + 1.0)
    flat_grad.fill_(2.0)
    assert all(bool((p.grad == 2.0).all()) for p in q.parameters())
    q.load_state_dict(before)  # loading writes through the views
    assert torch.equal(flat[: q.weights[0].numel()], before["weights.0"].reshape(-1))


def test_built_agent_compiles_cold_and_matches_eager(cold_compile):
    """The trainer's DQN (flat parameters and gradients) under --compile, on a cold compile cache,
    acting policy included."""
    spec = lookup_spec("CartPole-v1")
    cfg = resolve(dict(algo="dqn", env="CartPole-v1", batch_size=32, hidden_sizes=(16, 16), lr_schedule="constant"))
    torch.manual_seed(0)
    eager = build_dqn(spec, cfg, torch.device("cpu"), False)
    torch.manual_seed(0)
    compiled = build_dqn(spec, cfg, torch.device("cpu"), True)
    for step in range(3):
        b = random_batch(spec, 32, torch.device("cpu"), step)
        for a, c in zip(eager.update(b).values(), compiled.update(b).values()):
            torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
    for a, c in zip(eager.q.parameters(), compiled.q.parameters()):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
    obs = torch.randn(64, 4)  # the compiled acting policy picks the same actions
    assert torch.equal(compiled.greedy(obs), eager.greedy(obs))


def test_compiled_update_equals_eager():
    q1, t1, o1 = _learner()
    q2, t2, o2 = _learner()
    eager = make_manual_update(q1, t1, o1, 0.99, True, "huber", 10.0)
    compiled = torch.compile(make_manual_update(q2, t2, o2, 0.99, True, "huber", 10.0))
    for step in range(3):
        b = _batch(seed=step)
        out_e = eager(b.obs, b.actions.float(), b.rewards, b.next_obs, b.terminated)
        out_c = compiled(b.obs, b.actions.float(), b.rewards, b.next_obs, b.terminated)
        for a, c in zip(out_e.values(), out_c.values()):
            torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
    for a, c in zip(q1.parameters(), q2.parameters()):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)


def test_update_moves_q_towards_the_target():
    q, t, o = _learner()
    update = make_manual_update(q, t, o, 0.0, False, "mse", 0.0)  # gamma 0: target = reward
    b = _batch(256)
    first = update(b.obs, b.actions.float(), b.rewards, b.next_obs, b.terminated)["loss"].item()
    for _ in range(200):
        last = update(b.obs, b.actions.float(), b.rewards, b.next_obs, b.terminated)["loss"].item()
    assert last < 0.2 * first


def test_dqn_learns_cartpole_seeded(tmp_path):
    """The default run, seed 1 (about 25 s on the 2-core CI machine): greedy CartPole returns end
    at >= 475 (a random policy gets ~22)."""
    cfg = resolve({"device": "cpu", "seed": 1, "run_dir": str(tmp_path / "run"), "progress": False})
    spec, device = check_setup(cfg)
    summary = train(cfg, spec, device, 0.0)
    assert summary["final_eval_return_mean"] >= 475, summary
    assert summary["updates"] > 0 and summary["env_steps"] == 60_000
    for name in ("config.json", "metrics.csv", "summary.json", "checkpoint.pt", "learning_curve.png"):
        assert (tmp_path / "run" / name).exists(), name
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert "agent" in state


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3])
def test_default_run_solves_cartpole(seed, tmp_path):
    """The README's promise: `python -m fastrl.train --seed S` ends at >= 475 in <= 60 s."""
    cfg = resolve({"device": "cpu", "seed": seed, "run_dir": str(tmp_path / "run"), "progress": False})
    spec, device = check_setup(cfg)
    summary = train(cfg, spec, device, 0.0)
    assert summary["final_eval_return_mean"] >= 475, summary


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_soft_and_hard_target_updates_both_learn(kind, tmp_path):
    cfg = resolve({"device": "cpu", "seed": 1, "target_update": kind, "run_dir": str(tmp_path / "run"), "progress": False})
    spec, device = check_setup(cfg)
    assert train(cfg, spec, device, 0.0)["final_eval_return_mean"] >= 475


def test_breakout_runs_end_to_end_with_one_observation_per_transition(tmp_path):
    spec = lookup_spec("Breakout-v5")
    assert spec.obs_shape == (4, 84, 84)
    cfg = resolve({"device": "cpu", "env": "Breakout-v5", "total_steps": 5_000, "learning_starts": 1_000, "buffer_size": 20_000,
                   "eval_episodes": 2, "run_dir": str(tmp_path / "run"), "progress": False})
    spec, device = check_setup(cfg)
    summary = train(cfg, spec, device, 0.0)
    assert summary["env_steps"] == 5_000 and summary["updates"] > 0
    assert summary["buffer_bytes_per_transition"] <= 1.1 * 84 * 84 * 4 + 64


def test_cnn_autograd_update_steps_like_torch_adam():
    """The image path: autograd's gradient lands in the flat gradient that FusedAdam steps (one
    left elsewhere would leave Adam stepping zeros). Same weights as torch.optim.Adam after 3 steps."""
    from fastrl.networks import NatureCNN

    torch.manual_seed(0)
    q1 = NatureCNN((4, 36, 36), (32,), 3)
    q2, target = copy.deepcopy(q1), copy.deepcopy(q1).requires_grad_(False)
    flat, flat_grad = flatten_parameters_(q1)
    update = make_autograd_update(q1, target, list(q1.parameters()), flat_grad,
                                  FusedAdam([flat], lr=1e-3, grads=[flat_grad]), 0.99, True, "huber", 10.0)
    reference = torch.optim.Adam(q2.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        obs = torch.randint(0, 255, (16, 4, 36, 36), generator=g, dtype=torch.uint8)
        next_obs = torch.randint(0, 255, (16, 4, 36, 36), generator=g, dtype=torch.uint8)
        actions, rewards = torch.randint(0, 3, (16,), generator=g), torch.rand(16, generator=g)
        terminated = torch.zeros(16)
        update(obs, actions.float(), rewards, next_obs, terminated)
        with torch.no_grad():
            best = q2(next_obs).argmax(-1, keepdim=True)
            y = rewards + 0.99 * target(next_obs).gather(-1, best).squeeze(-1)
        loss = torch.nn.functional.smooth_l1_loss(q2(obs).gather(-1, actions.unsqueeze(-1)).squeeze(-1), y)
        reference.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(q2.parameters(), 10.0)
        reference.step()
    for a, b in zip(q1.parameters(), q2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.equal(q1.head[-1].weight, target.head[-1].weight)
