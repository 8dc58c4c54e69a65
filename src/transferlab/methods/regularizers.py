"""Loss terms that stack on a one-stage method by config, each on the target batch's logits:

    python -m transferlab method=dann '+method/regularizers=[mcc]'
    python -m transferlab method=dann '+method/regularizers=[mcc,entropy]' \\
        method.regularizers.mcc.weight=0.5

Each lives in `conf/method/regularizers/<name>.yaml` under its own name, and adds
`weight × term` to the method's loss through `Method.regularized`; the term is logged as
`regularizer/<name>`. The formulas are the shared ones in `transferlab.losses`.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from transferlab.losses.entropy import class_confusion, entropy
from transferlab.rules import Rule


class Regularizer:
    """`weight × self(target_logits)` is added to the loss of the method it is stacked on."""

    limits: ClassVar = {"weight": Rule(float, min=0)}

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def __call__(self, target_logits: Tensor) -> Tensor:
        raise NotImplementedError


class ConditionalEntropy(Regularizer):
    """Entropy minimisation (Grandvalet & Bengio, NIPS 2004): the mean prediction entropy on
    target, which pushes decision boundaries away from dense target regions."""

    def __call__(self, target_logits: Tensor) -> Tensor:
        return entropy(target_logits).mean()


class MinimumClassConfusion(Regularizer):
    """MCC (Jin et al., ECCV 2020): the weighted class confusion of the target batch."""

    limits: ClassVar = {**Regularizer.limits, "temperature": Rule(float, min=1e-6)}

    def __init__(self, weight: float, temperature: float = 2.5) -> None:
        super().__init__(weight)
        self.temperature = temperature

    def __call__(self, target_logits: Tensor) -> Tensor:
        return class_confusion(target_logits, self.temperature)
