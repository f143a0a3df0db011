import copy

import torch
from torch import nn

from fastrl.targets import make_target_updater


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 2))


def perturbed(module):
    target = copy.deepcopy(module)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(torch.randn_like(p))
        for b in target.buffers():
            if b.is_floating_point():
                b.add_(1.0)
    return target


def test_soft_update_is_the_polyak_formula():
    online = net()
    online.train()(torch.randn(16, 5))  # moves BatchNorm running stats and its int counter
    target = perturbed(online)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    tau = 0.3
    make_target_updater([(online, target)], "soft", tau, 1).step(1)
    for name, value in target.state_dict().items():
        if value.is_floating_point():
            expected = tau * online.state_dict()[name] + (1 - tau) * before[name]
            torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
        else:  # num_batches_tracked: copied, never lerped
            assert torch.equal(value, online.state_dict()[name])


def test_two_soft_steps_compose():
    online = net()
    target = perturbed(online)
    w0 = target[0].weight.clone()
    updater = make_target_updater([(online, target)], "soft", 0.1, 1)
    updater.step(1)
    updater.step(2)
    torch.testing.assert_close(target[0].weight, online[0].weight + 0.81 * (w0 - online[0].weight))


def test_tau_one_is_a_hard_copy():
    online = net()
    target = perturbed(online)
    make_target_updater([(online, target)], "soft", 1.0, 1).step(1)
    for a, b in zip(online.state_dict().values(), target.state_dict().values()):
        assert torch.equal(a, b)


def test_hard_update_copies_every_period_only():
    online = net()
    target = perturbed(online)
    stale = copy.deepcopy(target.state_dict())
    updater = make_target_updater([(online, target)], "hard", 0.5, 3)
    for k in (1, 2):
        updater.step(k)
        for name, value in target.state_dict().items():
            assert torch.equal(value, stale[name])
    updater.step(3)
    for name, value in target.state_dict().items():
        assert torch.equal(value, online.state_dict()[name])


def test_one_updater_covers_several_networks():
    a, b = net(), nn.Linear(3, 3)
    ta, tb = perturbed(a), perturbed(b)
    make_target_updater([(a, ta), (b, tb)], "soft", 1.0, 1).step(1)
    assert torch.equal(ta[3].weight, a[3].weight) and torch.equal(tb.weight, b.weight)
