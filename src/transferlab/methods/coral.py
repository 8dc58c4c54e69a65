"""Deep CORAL (Sun & Saenko, ECCV 2016 workshops): source cross-entropy plus the CORAL loss, the
squared distance between the source and the target covariance of a layer's activations, so
that second-order statistics match across domains. The paper applies it to the last layer
(fc8, the class scores), as the default here does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from transferlab.losses.discrepancy import coral
from transferlab.methods.dan import FeatureAlignment


class DeepCORAL(FeatureAlignment):
    discrepancy_name = "coral"

    def __init__(self, alignment_weight: float = 1.0, layers: Sequence[str] = ("logits",),
                 **common: Any) -> None:
        super().__init__(alignment_weight, layers, **common)

    def discrepancy(self, source: Tensor, target: Tensor) -> Tensor:
        return coral(source, target)
