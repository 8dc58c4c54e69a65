"""The conditioning of CDAN (Long et al., NeurIPS 2018, sec. 3.1): the domain discriminator sees
features f and class predictions g together, through the multilinear map f ⊗ g, so that it
can align the joint distribution of features and classes rather than features alone. CDAN
feeds the map's output to `DomainAdversarialLoss`; CDAN+E weights its samples by
`conditioning_weights`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from transferlab.losses.entropy import entropy_weights

# The paper switches to the randomized map when d_f · C exceeds 4096, with output size 1024.
RANDOMIZE_ABOVE = 4096
RANDOMIZED_DIM = 1024


class MultilinearMap(nn.Module):
    """`MultilinearMap(feature_dim, num_classes)(f, g)`: (N, d_f), (N, C) → (N, out_features).

    Up to `randomize_above` = d_f · C (None: at any size) it is the outer product f ⊗ g,
    flattened (T⊗ in the paper). Above it, the randomized map T⊙(f, g) = (R_f f) ⊙ (R_g g) / √d
    with d = `randomized_dim` and R_f, R_g drawn once from N(0, 1) and then fixed (buffers, so
    that a checkpoint keeps them): its inner products equal those of f ⊗ g in expectation.
    """

    def __init__(self, feature_dim: int, num_classes: int,
                 randomize_above: int | None = RANDOMIZE_ABOVE,
                 randomized_dim: int = RANDOMIZED_DIM) -> None:
        super().__init__()
        self.randomized = (randomize_above is not None
                           and feature_dim * num_classes > randomize_above)
        self.out_features = randomized_dim if self.randomized else feature_dim * num_classes
        if self.randomized:
            self.register_buffer("features_projection", torch.randn(feature_dim, randomized_dim))
            self.register_buffer("classes_projection", torch.randn(num_classes, randomized_dim))

    def forward(self, features: Tensor, predictions: Tensor) -> Tensor:
        if self.randomized:
            return ((features @ self.features_projection)
                    * (predictions @ self.classes_projection) / math.sqrt(self.out_features))
        return torch.einsum("nd,nc->ndc", features, predictions).flatten(1)


def conditioning_weights(logits: Tensor, n_source: int, reversal: float | None = None
                         ) -> Tensor:
    """CDAN+E's weights of the discriminator loss: 1 + e^(−H(p)) per sample (source rows
    first), each domain's divided by its sum taken as a constant (as the authors' code), so
    both domains weigh 1. `reversal` None: the weights are constants (tllib). A number λ:
    gradients reach the predictions through the entropy, reversed and scaled by λ, as the
    authors' code does with a gradient hook on the entropy."""
    weights = entropy_weights(logits, reversal)
    return torch.cat([w / w.sum().detach() for w in weights.split(
        [n_source, len(weights) - n_source])])
