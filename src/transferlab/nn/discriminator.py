"""The domain discriminator shared by the adversarial methods: an MLP from features to two
logits (source = 0, target = 1), trained with cross-entropy."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from transferlab.nn.classifier import mlp

SOURCE, TARGET = 0, 1


class DomainDiscriminator(nn.Module):
    def __init__(self, in_features: int, hidden: Sequence[int] = (100,)) -> None:
        super().__init__()
        self.net = mlp(in_features, hidden, 2)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)
