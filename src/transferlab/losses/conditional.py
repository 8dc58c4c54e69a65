"""The conditioning of CDAN (Long et al., NeurIPS 2018, sec. 3.1): the domain discriminator sees
features f and class predictions g together, through the multilinear map f ⊗ g, so that it
can align the joint distribution of features and classes rather than features alone. CDAN
feeds the map's output to `DomainAdversarialLoss`; CDAN+E adds `entropy.entropy_weights`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# The paper switches to the randomized map when d_f · C exceeds 4096, with output size 1024.
RANDOMIZE_ABOVE = 4096
RANDOMIZED_DIM = 1024


class MultilinearMap(nn.Module):
    """`MultilinearMap(feature_dim, num_classes)(f, g)`: (N, d_f), (N, C) → (N, out_features).

    Up to `randomize_above` = d_f · C it is the outer product f ⊗ g, flattened (T⊗ in the
    paper). Above it, the randomized map T⊙(f, g) = (R_f f) ⊙ (R_g g) / √d with d =
    `randomized_dim` and R_f, R_g drawn once from N(0, 1) and then fixed (buffers, so that a
    checkpoint keeps them): its inner products equal those of f ⊗ g in expectation.
    """

    def __init__(self, feature_dim: int, num_classes: int,
                 randomize_above: int = RANDOMIZE_ABOVE,
                 randomized_dim: int = RANDOMIZED_DIM) -> None:
        super().__init__()
        self.randomized = feature_dim * num_classes > randomize_above
        self.out_features = randomized_dim if self.randomized else feature_dim * num_classes
        if self.randomized:
            self.register_buffer("features_projection", torch.randn(feature_dim, randomized_dim))
            self.register_buffer("classes_projection", torch.randn(num_classes, randomized_dim))

    def forward(self, features: Tensor, predictions: Tensor) -> Tensor:
        if self.randomized:
            return ((features @ self.features_projection)
                    * (predictions @ self.classes_projection) / math.sqrt(self.out_features))
        return torch.einsum("nd,nc->ndc", features, predictions).flatten(1)
