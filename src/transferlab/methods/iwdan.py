"""IWDAN: DANN under label shift (Tachet des Combes et al., NeurIPS 2020).

When the domains' label distributions differ (USPS has 16% zeros, MNIST 10%), matching the
feature distributions as a whole can force some target digits onto the features of the wrong
class. IWDAN matches the target's features with the source's *reweighted by class*: each
source sample weighs w_y = p_target(y) / p_source(y) in the domain loss and in the
classification loss, with w estimated without target labels from the classifier's own
predictions (`transferlab.losses.label_shift`). With no label shift, w = 1 and this is DANN.

The estimate assumes what label shift assumes: the classifier confuses classes on the target
as it does on the source. Where alignment itself maps one target class onto another's source
features, the estimate reads that as a shift in the classes' shares and reinforces it
(docs/USPS.md: MNIST → USPS, USPS nines taken for sevens).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from transferlab.losses.label_shift import ClassRatioEstimator
from transferlab.methods.dann import DANN
from transferlab.rules import Rule


class IWDAN(DANN):
    limits: ClassVar = {**DANN.limits, "ratio_momentum": Rule(float, min=0, max=0.9999)}

    def __init__(self, ratio_momentum: float = 0.99, **dann: Any) -> None:
        super().__init__(**dann)
        self.class_ratio = ClassRatioEstimator(self.num_classes, ratio_momentum)

    def source_weights(self, source_logits: Tensor, labels: Tensor, target_features: Tensor,
                       scalars: dict[str, Tensor | float]) -> Tensor:
        with torch.no_grad():  # the estimate measures the predictions, it does not train them
            target_logits = self.network.head(target_features)
        w = self.class_ratio.update(source_logits, labels, target_logits)
        scalars.update({"iwdan/ratio_min": w.min(), "iwdan/ratio_max": w.max()})
        return w[labels]

    def results(self) -> dict[str, Any]:
        """The final estimate of p_target(y) / p_source(y), one value per class."""
        return {"class_ratios": [round(w, 4) for w in self.class_ratio.ratios().tolist()]}
