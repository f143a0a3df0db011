"""--precision bf16: bf16 matrix products from fp32 master weights, and fp32 everything that
accumulates (gradients, clipping, Adam state, target nets, TD targets, losses). Both update paths
(the hand-written ReLU-MLP backward and autograd under autocast), DQN and TD3/DDPG."""

import json

import pytest
import torch
import torch.nn.functional as F

from benchmarks.common import random_batch
from fastrl.config import load_config_file, resolve, validate
from fastrl.dqn import td_target
from fastrl.envs import lookup_spec
from fastrl.fused_adam import FusedAdam, flatten_parameters_
from fastrl.learner import bf16_unsupported_note
from fastrl.registry import ALGORITHMS
from fastrl.settings import ConfigError
from fastrl.stacked_mlp import StackedMLP, backward
from fastrl.td3 import bootstrap_target, box_fraction
from fastrl.train import build_parser, check_setup, main, train

ENVS = {"dqn": "CartPole-v1", "td3": "Pendulum-v1", "ddpg": "Pendulum-v1"}
PATHS = [(algo, gradients) for algo in ENVS for gradients in ("manual", "autograd")]
CPU = torch.device("cpu")


def _agent(algo, precision, gradients, device=CPU, use_compile=False, **settings):
    """An agent as the trainer builds it, from weights that depend on the seed only (not on the
    precision), with 64-64 nets: the 64 x 64 product is one that runs in bf16."""
    cfg = resolve({"algo": algo, "env": ENVS[algo], "precision": precision, "gradients": gradients,
                   "hidden_sizes": (64, 64), "batch_size": 128, "max_grad_norm": 0.0, **settings})
    torch.manual_seed(0)
    return ALGORITHMS[algo].build(lookup_spec(cfg.env), cfg, device, use_compile), cfg


def _one_cycle(algo):
    """Settings under which one update is a whole cycle: TD3's actor steps every update."""
    return {"policy_delay": 1} if algo == "td3" else {}


def _flat_grads(agent):
    """The flat gradients the optimizers stepped with, by net."""
    if hasattr(agent, "optimizer"):
        return {"q": agent.optimizer.grads[0]}
    return {"critic": agent.critic_opt.grads[0], "actor": agent.actor_opt.grads[0]}


def _nets(agent):
    """(online net, its target, its optimizer) triples."""
    if hasattr(agent, "q"):
        return [(agent.q, agent.q_target, agent.optimizer)]
    return [(agent.actor, agent.actor_target, agent.actor_opt), (agent.critic, agent.critic_target, agent.critic_opt)]


def _stacked(agent):
    return [m for online, target, _ in _nets(agent) for net in (online, target) for m in net.modules()
            if isinstance(m, StackedMLP)]


def _batch(algo, seed, device=CPU):
    return random_batch(lookup_spec(ENVS[algo]), 128, device, seed)


# --- the gradients ---


@pytest.mark.parametrize("algo,gradients", PATHS)
def test_bf16_gradients_are_close_to_fp32(algo, gradients):
    """One update from the same weights on the same batch (TD3 with its actor step): the bf16
    gradients point the fp32 ones' way and have their size, in fp32; the loss and metrics agree to
    bf16's resolution. They must also differ from fp32 bit for bit: bf16 products were used."""
    fp32, _ = _agent(algo, "fp32", gradients, **_one_cycle(algo))
    bf16, _ = _agent(algo, "bf16", gradients, **_one_cycle(algo))
    batch = _batch(algo, seed=0)
    out32, out16 = fp32.update(batch), bf16.update(batch)
    for name, g32 in _flat_grads(fp32).items():
        g16 = _flat_grads(bf16)[name]
        assert g16.dtype == torch.float32 and g16.shape == g32.shape
        assert float(F.cosine_similarity(g16, g32, dim=0)) > 0.99, name
        assert float(g16.norm() / g32.norm()) == pytest.approx(1.0, abs=0.05), name
        assert not torch.equal(g16, g32), name
    assert out16.keys() == out32.keys()
    for name in out32:
        assert out16[name].dtype == torch.float32, name
        torch.testing.assert_close(out16[name], out32[name], rtol=0.02, atol=2e-3, msg=name)


def test_handwritten_bf16_backward_equals_autograd_under_autocast():
    """The hand-written path in bf16 is the same function as autograd's under torch.autocast: the
    same layers in bf16, the same fp32 output and narrow-input layers, the same roundings."""
    torch.manual_seed(1)
    net = StackedMLP(2, 5, (32, 32), 1, compute_dtype=torch.bfloat16)
    x = torch.randn(64, 5, requires_grad=True)
    g = torch.randn(2, 64, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.float32  # the output layer stays fp32 under autocast
    (out * g).sum().backward()
    w_grads = [torch.empty_like(w) for w in net.weights]
    b_grads = [torch.empty_like(b) for b in net.biases]
    with torch.no_grad():
        mine, trace = net.forward_traced(x.detach())
        d_input = backward(trace, g, w_grads, b_grads, input_cols=slice(1, None))
    assert [w.dtype for w in trace.weights] == [torch.float32, torch.bfloat16, torch.float32]
    torch.testing.assert_close(mine, out.detach(), rtol=1e-5, atol=1e-6)
    for grad, param in zip(w_grads + b_grads, list(net.weights) + list(net.biases)):
        assert grad.dtype == torch.float32
        torch.testing.assert_close(grad, param.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(d_input.sum(0), x.grad[:, 1:], rtol=1e-4, atol=1e-6)


def test_low_precision_layers_leave_the_output_and_narrow_input_layers_in_fp32():
    assert StackedMLP(1, 3, (256, 256), 1, torch.bfloat16).low_precision_layers == (1,)
    assert StackedMLP(2, 23, (64, 64, 64), 6, torch.bfloat16).low_precision_layers == (0, 1, 2)
    net = StackedMLP(1, 3, (256,), 1, torch.bfloat16)  # both layers narrow: nothing to gain
    assert net.low_precision_layers == () and net.compute_layers()[0] == list(net.weights)


# --- what stays fp32 ---


@pytest.mark.parametrize("algo,gradients", PATHS)
def test_master_weights_adam_state_and_targets_stay_fp32_in_the_flat_layout(algo, gradients):
    agent, cfg = _agent(algo, "bf16", gradients)
    layout = [[(p.data_ptr(), p.grad.data_ptr()) for p in online.parameters()] for online, _, _ in _nets(agent)]
    for step in range(3):  # TD3's actor and target steps included (policy delay 2)
        metrics = agent.update(_batch(algo, seed=step))
        assert all(v.dtype == torch.float32 for v in metrics.values())
    for (online, target, opt), before in zip(_nets(agent), layout):
        for t in (opt.params[0], opt.grads[0], opt.exp_avg[0], opt.exp_avg_sq[0]):
            assert t.dtype == torch.float32
        assert all(p.dtype == torch.float32 for p in [*online.parameters(), *target.parameters()])
        # every parameter and its gradient still view the optimizer's flat tensors, where they did
        assert [(p.data_ptr(), p.grad.data_ptr()) for p in online.parameters()] == before
        assert torch.equal(torch.cat([p.grad.reshape(-1) for p in online.parameters()]), opt.grads[0])
        assert torch.equal(torch.cat([p.detach().reshape(-1) for p in online.parameters()]), opt.params[0])
    if gradients == "manual":  # the products did run in bf16
        assert all(any(w.dtype == torch.bfloat16 for w in m.compute_layers()[0]) for m in _stacked(agent))


def test_td_targets_are_fp32_from_bf16_nets():
    """The targets through the hand-written path's target nets (bf16 products, fp32 outputs)."""
    dqn, _ = _agent("dqn", "bf16", "manual")
    b = _batch("dqn", seed=0)
    next_q = dqn.q_target.infer(b.next_obs)[0]
    assert next_q.dtype == torch.float32
    assert td_target(b.rewards, b.terminated, next_q, dqn.q.infer(b.next_obs)[0], 0.99).dtype == torch.float32
    td3, cfg = _agent("td3", "bf16", "manual")
    b = _batch("td3", seed=0)
    low, high = td3.actor.low, td3.actor.high
    target = bootstrap_target(td3.critic_target.infer, td3.actor_target.infer, b.rewards, b.next_obs, b.terminated,
                              torch.randn(b.actions.shape), box_fraction(0.2, low, high), box_fraction(0.5, low, high),
                              low, high, cfg.gamma)
    assert target.dtype == torch.float32 and target.shape == b.rewards.shape


# --- the bf16 copies of the weights ---


@pytest.mark.parametrize("algo", list(ENVS))
def test_bf16_copies_follow_optimizer_steps_and_target_updates(algo):
    """Each update fills the copies of every net it reads, then steps the online nets and (after
    TD3's actor step) moves the targets: copies not remade after a change would now be stale."""
    agent, _ = _agent(algo, "bf16", "manual", target_update="soft")
    for step in range(4):
        agent.update(_batch(algo, seed=step))
        for net in _stacked(agent):
            weights, biases = net.compute_layers()
            for i in net.low_precision_layers:
                assert torch.equal(weights[i], net.weights[i].detach().to(torch.bfloat16))
                assert torch.equal(biases[i], net.biases[i].detach().to(torch.bfloat16))


def test_bf16_copies_follow_weights_changed_and_loads():
    net = StackedMLP(2, 4, (32, 32), 1, torch.bfloat16)
    flat, flat_grad = flatten_parameters_(net)
    first = net.compute_layers()[0][1]
    assert net.compute_layers()[0][1] is first  # reused until the weights change
    flat_grad.normal_()
    opt = FusedAdam([flat], lr=0.1, grads=[flat_grad])
    opt.step()
    net.weights_changed()
    assert torch.equal(net.compute_layers()[0][1], net.weights[1].detach().to(torch.bfloat16))
    assert not torch.equal(net.compute_layers()[0][1], first)
    other = StackedMLP(2, 4, (32, 32), 1)
    net.load_state_dict(other.state_dict())  # loading says so itself
    assert torch.equal(net.compute_layers()[0][1], other.weights[1].detach().to(torch.bfloat16))


# --- compile, CUDA ---


# The autograd path compiles as it does in fp32 (tests/test_td3.py), with autocast regions added.
@pytest.mark.parametrize("gradients", ["manual", pytest.param("autograd", marks=pytest.mark.slow)])
def test_compiled_bf16_update_equals_eager(gradients, cold_compile):
    """Under torch.compile the copies are made in the graph (a Python-side cache would go stale):
    TD3's update, actor and target steps included, against the eager bf16 update."""
    eager, _ = _agent("td3", "bf16", gradients, hidden_sizes=(32, 32), batch_size=64)
    compiled, _ = _agent("td3", "bf16", gradients, use_compile=True, hidden_sizes=(32, 32), batch_size=64)
    spec = lookup_spec("Pendulum-v1")
    for step in range(4):
        batch = random_batch(spec, 64, CPU, step)
        eager.generator.manual_seed(step)
        compiled.generator.manual_seed(step)  # the same smoothing noise
        out_e, out_c = eager.update(batch), compiled.update(batch)
        for name in out_e:
            torch.testing.assert_close(out_c[name], out_e[name], rtol=1e-2, atol=1e-3, msg=name)
    for a, c in zip([*eager.actor.parameters(), *eager.critic.parameters(), *eager.critic_target.parameters()],
                    [*compiled.actor.parameters(), *compiled.critic.parameters(),
                     *compiled.critic_target.parameters()]):
        torch.testing.assert_close(c, a, rtol=1e-2, atol=1e-4)
    if gradients == "manual":  # an eager forward after compiled steps reads fresh copies
        for net in _stacked(compiled):
            weights = net.compute_layers()[0]
            assert all(torch.equal(weights[i], net.weights[i].detach().to(torch.bfloat16))
                       for i in net.low_precision_layers)


@pytest.mark.cuda
@pytest.mark.parametrize("algo,gradients", PATHS)
def test_bf16_update_on_cuda_is_close_to_fp32(algo, gradients, cuda_device):
    fp32, _ = _agent(algo, "fp32", gradients, device=cuda_device, **_one_cycle(algo))
    bf16, _ = _agent(algo, "bf16", gradients, device=cuda_device, **_one_cycle(algo))
    batch = _batch(algo, seed=0, device=cuda_device)
    fp32.update(batch)
    bf16.update(batch)
    for name, g32 in _flat_grads(fp32).items():
        g16 = _flat_grads(bf16)[name]
        assert g16.dtype == torch.float32
        assert float(F.cosine_similarity(g16, g32, dim=0)) > 0.99, name
        assert float(g16.norm() / g32.norm()) == pytest.approx(1.0, abs=0.05), name


# --- the setting ---


def test_precision_is_in_help_and_a_bad_value_is_one_line_exit_2(tmp_path, capsys):
    assert "--precision {fp32,bf16}" in build_parser().format_help()
    with pytest.raises(SystemExit) as exit_:
        main(["--precision", "fp16", "--run-dir", str(tmp_path / "run")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1, lines
    assert "--precision" in lines[0] and "'fp16'" in lines[0] and "fp32" in lines[0] and "bf16" in lines[0], lines[0]
    assert not (tmp_path / "run").exists()
    path = tmp_path / "run.toml"  # a config file's value is checked by the setting's declaration
    path.write_text('precision = "half"\n')
    with pytest.raises(ConfigError, match=r"^--precision: 'half' is not one of fp32, bf16$"):
        validate(resolve(load_config_file(path)))


def test_precision_is_logged_in_the_start_line_and_summary(tmp_path, capsys):
    cfg = resolve({"algo": "dqn", "precision": "bf16", "total_steps": 600, "learning_starts": 300, "num_envs": 2,
                   "eval_episodes": 1, "hidden_sizes": (32, 32), "run_dir": str(tmp_path / "run"), "progress": False})
    spec, device = check_setup(cfg)
    summary = train(cfg, spec, device, 0.0)
    assert "precision bf16" in capsys.readouterr().err
    assert summary["precision"] == "bf16" and summary["updates"] > 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["precision"] == "bf16"


@pytest.mark.parametrize("avx512_bf16,amx,warned", [(False, False, True), (True, False, False), (False, True, False)])
def test_bf16_without_hardware_support_is_called_out(monkeypatch, avx512_bf16, amx, warned):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    note = bf16_unsupported_note("bf16", torch.device("cpu"))
    assert (note is not None) == warned
    if warned:
        assert note.startswith("--precision bf16: this CPU has no bf16 matrix products") and "--precision fp32" in note
    assert bf16_unsupported_note("fp32", torch.device("cpu")) is None
    assert bf16_unsupported_note("bf16", torch.device("cuda")) is None


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["td3", "ddpg"])
@pytest.mark.parametrize("seed", [1, 2])
def test_bf16_pendulum_preset_reaches_minus_200(algo, seed, tmp_path):
    """Learning holds in bf16: the 20k-step preset's bar, as in fp32 (tests/test_td3.py)."""
    cfg = resolve({"algo": algo, "env": "Pendulum-v1", "seed": seed, "precision": "bf16",
                   "run_dir": str(tmp_path / "run"), "progress": False})
    spec, device = check_setup(cfg)
    summary = train(cfg, spec, device, 0.0)
    assert summary["env_steps"] == 20_000
    assert summary["final_eval_return_mean"] >= -200, summary


# --- SAC: bf16 on the hand-written update ---


def _sac(precision, gradients="manual", **settings):
    cfg = resolve({"algo": "sac", "env": "Pendulum-v1", "precision": precision, "gradients": gradients,
                   "hidden_sizes": (64, 64), "batch_size": 128, "max_grad_norm": 0.0, **settings})
    torch.manual_seed(0)
    return ALGORITHMS["sac"].build(lookup_spec(cfg.env), cfg, CPU, False)


def _sac_nets(agent):
    return [agent.actor.net, agent.critic, agent.critic_target]


def test_sac_bf16_gradients_are_close_to_fp32():
    """One SAC update (critic, actor and α steps) from the same weights, batch and noise: the bf16
    gradients point the fp32 ones' way and have their size; the metrics agree to bf16's resolution;
    and they differ bit for bit (bf16 products were used)."""
    fp32, bf16 = _sac("fp32"), _sac("bf16")
    batch = _batch("td3", seed=0)
    out32, out16 = fp32.update(batch), bf16.update(batch)
    for opt32, opt16, name in ((fp32.critic_opt, bf16.critic_opt, "critic"), (fp32.actor_opt, bf16.actor_opt, "actor"),
                               (fp32.temperature.opt, bf16.temperature.opt, "log alpha")):
        g32, g16 = opt32.grads[0], opt16.grads[0]
        assert g16.dtype == torch.float32 and g16.shape == g32.shape
        assert float(F.cosine_similarity(g16, g32, dim=0)) > 0.99, name
        assert float(g16.norm() / g32.norm()) == pytest.approx(1.0, abs=0.05), name
        if name != "log alpha":  # log π is formed from the fp32 output layer: its mean may round alike
            assert not torch.equal(g16, g32), name
    assert out16.keys() == out32.keys() and {"alpha_loss", "entropy", "actor_loss"} <= out16.keys()
    for name in out32:
        assert out16[name].dtype == torch.float32, name
        torch.testing.assert_close(out16[name], out32[name], rtol=0.02, atol=2e-3, msg=name)


def test_sac_handwritten_bf16_update_equals_autograd_under_autocast(monkeypatch):
    """SAC's hand-written bf16 update is the same function as its autograd update with every
    forward run under torch.autocast through `StackedMLP.forward` (bf16 in the same layers, fp32
    output and narrow-input layers; the gradients taken outside autocast, as `fastrl.learner` says):
    over updates with clipping on and the actor every other one, the gradients, metrics and weights
    agree far closer than bf16 and fp32 do."""
    import fastrl.sac as sac

    def autocast_forward(net, x):
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            return StackedMLP.forward(net, x)

    hand = _sac("bf16", "manual", max_grad_norm=0.5, policy_delay=2)
    fp32 = _sac("fp32", "manual", max_grad_norm=0.5, policy_delay=2)
    monkeypatch.setattr(sac, "autograd_forward", autocast_forward)  # batch-major: autocast applies
    auto = _sac("fp32", "autograd", max_grad_norm=0.5, policy_delay=2)
    target = auto.critic_target  # called as a module by the soft target
    monkeypatch.setattr(target, "forward", lambda x: autocast_forward(target, x))
    for step in range(4):
        batch = _batch("td3", seed=step)
        out_hand, out_auto, out_fp32 = hand.update(batch), auto.update(batch), fp32.update(batch)
        for name in out_hand:
            torch.testing.assert_close(out_hand[name], out_auto[name], rtol=1e-4, atol=1e-5, msg=name)
        stepped = [(hand.critic_opt, auto.critic_opt, fp32.critic_opt)]
        if step % 2 == 1:  # an actor update
            stepped.append((hand.actor_opt, auto.actor_opt, fp32.actor_opt))
        for opt_h, opt_a, opt_f in stepped:
            g_h, g_a, g_f = opt_h.grads[0], opt_a.grads[0], opt_f.grads[0]
            gap_auto, gap_fp32 = float((g_h - g_a).norm() / g_a.norm()), float((g_h - g_f).norm() / g_f.norm())
            assert gap_auto < gap_fp32 / 10, (step, gap_auto, gap_fp32)
    for a, b in zip([*hand.actor.parameters(), *hand.critic.parameters(), *hand.critic_target.parameters()],
                    [*auto.actor.parameters(), *auto.critic.parameters(), *auto.critic_target.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_sac_bf16_master_weights_stay_fp32_and_copies_follow_every_change():
    """After each update (critic, actor and target steps), the bf16 copies of every net's
    low-precision layers equal its current fp32 masters cast, and everything else stays fp32."""
    agent = _sac("bf16", policy_delay=2)
    for step in range(4):
        metrics = agent.update(_batch("td3", seed=step))
        assert all(v.dtype == torch.float32 for v in metrics.values())
        for net in _sac_nets(agent):
            assert net.low_precision_layers == (1,)
            weights, biases = net.compute_layers()
            for i in net.low_precision_layers:
                assert weights[i].dtype == torch.bfloat16
                assert torch.equal(weights[i], net.weights[i].detach().to(torch.bfloat16))
                assert torch.equal(biases[i], net.biases[i].detach().to(torch.bfloat16))
    for opt in (agent.critic_opt, agent.actor_opt, agent.temperature.opt):
        for t in (opt.params[0], opt.grads[0], opt.exp_avg[0], opt.exp_avg_sq[0]):
            assert t.dtype == torch.float32
    assert all(p.dtype == torch.float32 for net in _sac_nets(agent) for p in net.parameters())
