"""Backbones: each builds a `Classifier` for images of `in_channels` x `image_size`^2."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from transferlab.nn.classifier import Classifier


def _conv_block(c_in: int, c_out: int, batch_norm: bool) -> list[nn.Module]:
    norm = [nn.BatchNorm2d(c_out)] if batch_norm else []
    return [nn.Conv2d(c_in, c_out, 5), *norm, nn.ReLU(inplace=True), nn.MaxPool2d(2)]


def dann_mnist(in_channels: int, num_classes: int, image_size: int = 28,
               batch_norm: bool = False, head_hidden: Sequence[int] = (100, 100),
               lr_mult: Mapping[str, float] | None = None) -> Classifier:
    """The MNIST network of the DANN paper (JMLR 2016, fig. 4 and appendix): conv 5x5x32 →
    maxpool 2 → conv 5x5x48 → maxpool 2 → features; label head 100 → 100 → classes."""
    encoder = nn.Sequential(*_conv_block(in_channels, 32, batch_norm),
                            *_conv_block(32, 48, batch_norm), nn.Flatten())
    return Classifier(encoder, num_classes, head_hidden, in_channels, image_size,
                      lr_mult=lr_mult)


def lenet(in_channels: int, num_classes: int, image_size: int = 28, batch_norm: bool = False,
          feature_dim: int = 500, lr_mult: Mapping[str, float] | None = None) -> Classifier:
    """LeNet as in the ADDA paper: conv 5x5x20 → maxpool → conv 5x5x50 → maxpool → fc 500
    (the features) → linear classifier."""
    side = ((image_size - 4) // 2 - 4) // 2
    encoder = nn.Sequential(*_conv_block(in_channels, 20, batch_norm),
                            *_conv_block(20, 50, batch_norm), nn.Flatten(),
                            nn.Linear(50 * side * side, feature_dim), nn.ReLU(inplace=True))
    return Classifier(encoder, num_classes, (), in_channels, image_size, lr_mult=lr_mult)


class GaussianNoise(nn.Module):
    """Adds N(0, std²) noise in training mode, nothing in evaluation mode."""

    def __init__(self, std: float = 1.0) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: Tensor) -> Tensor:
        return x + self.std * torch.randn_like(x) if self.training else x


def _conv3(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
            nn.LeakyReLU(0.1, inplace=True)]


def dirtt_small(in_channels: int, num_classes: int, image_size: int = 32,
                instance_norm: bool = True, dropout: float = 0.5, noise: float = 1.0,
                lr_mult: Mapping[str, float] | None = None) -> Classifier:
    """The digit network of the DIRT-T paper ("small", appendix and official code
    github.com/RuiShu/dirt-t, codebase/models/nns/small.py): instance-normalised input →
    3 × conv 3x3x64 (batch norm, leaky ReLU 0.1) → maxpool 2 → dropout → Gaussian noise →
    the same again → features, which the domain discriminator sees (the code's trim = 5); the
    head is 3 × conv 3x3x64 → global average pool → linear."""
    width = 64
    side = image_size // 4
    encoder = nn.Sequential(
        *([nn.InstanceNorm2d(in_channels)] if instance_norm else []),
        *_conv3(in_channels, width), *_conv3(width, width), *_conv3(width, width),
        nn.MaxPool2d(2), nn.Dropout(dropout), GaussianNoise(noise),
        *_conv3(width, width), *_conv3(width, width), *_conv3(width, width),
        nn.MaxPool2d(2), nn.Dropout(dropout), GaussianNoise(noise), nn.Flatten())
    head = nn.Sequential(nn.Unflatten(1, (width, side, side)), *_conv3(width, width),
                         *_conv3(width, width), *_conv3(width, width),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
    return Classifier(encoder, num_classes, in_channels=in_channels, image_size=image_size,
                      lr_mult=lr_mult, head=head)
