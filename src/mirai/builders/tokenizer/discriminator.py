"""A small PatchGAN discriminator and hinge losses for the optional adversarial term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """Scores overlapping patches as real or reconstructed (one logit per patch).

    Strided 4x4 convolutions halve the resolution ``n_layers`` times; GroupNorm rather than
    BatchNorm so that real and fake batches are normalised independently of each other.
    """

    def __init__(self, in_channels: int = 3, width: int = 32, n_layers: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = width
        for _ in range(n_layers - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.GroupNorm(8, ch * 2), nn.LeakyReLU(0.2)]
            ch *= 2
        layers.append(nn.Conv2d(ch, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: push real logits above 1 and fake ones below -1."""
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The tokenizer's adversarial loss: make reconstructions score as real."""
    return -fake_logits.mean()
