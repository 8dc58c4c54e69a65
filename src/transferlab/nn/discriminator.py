"""The domain discriminator shared by the adversarial methods: an MLP from features to two
logits (source = 0, target = 1), trained with cross-entropy."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from transferlab.nn.classifier import mlp

SOURCE, TARGET = 0, 1


class DomainDiscriminator(nn.Module):
    """`hidden` widths, optionally with batch norm and dropout after each hidden layer (the
    CDAN and tllib discriminators use batch norm; the DANN paper's Office network dropout)."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (100,),
                 batch_norm: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = mlp(in_features, hidden, 2, batch_norm=batch_norm, dropout=dropout)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)
