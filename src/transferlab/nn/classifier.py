"""A classifier split into the two parts transfer methods treat differently: the feature
encoder (G_f in the DANN paper) and the label head (G_y)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def mlp(in_features: int, hidden: Sequence[int], out_features: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
        in_features = width
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int, head_hidden: Sequence[int] = (),
                 in_channels: int = 3, image_size: int = 28) -> None:
        super().__init__()
        self.encoder = encoder
        with torch.no_grad():  # infer the feature width instead of asking every backbone for it
            self.feature_dim = encoder(torch.zeros(2, in_channels, image_size, image_size)).shape[1]
        self.head = mlp(self.feature_dim, head_hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))
