"""Network builders: the Nature CNN for image stacks, and a plain nn.Sequential MLP (the autograd
reference that tests and benchmarks hold the stacked MLPs against)."""

from __future__ import annotations

import torch
from torch import nn


def mlp(in_dim: int, hidden_sizes: tuple[int, ...], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [nn.Linear(in_dim, size), nn.ReLU()]
        in_dim = size
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class NatureCNN(nn.Module):
    """Mnih et al. 2015 torso: uint8 frames in, scaled to [0, 1] inside the network."""

    def __init__(self, obs_shape: tuple[int, ...], hidden_sizes: tuple[int, ...], out_dim: int):
        super().__init__()
        channels = obs_shape[0]
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, *obs_shape)).shape[1]
        self.head = mlp(flat, hidden_sizes, out_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(obs.float() / 255.0))
