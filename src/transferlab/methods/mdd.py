"""MDD: margin disparity discrepancy (Zhang et al., ICML 2019).

Besides the main head, an adversarial head of the same architecture (freshly initialised) sits
on the features behind gradient reversal. It learns to maximise the margin disparity
discrepancy D_γ (agree with the main head's predictions on source, disagree on target); the
features learn, with the reversed gradient scaled by an annealed λ, to minimise it. The main
head is trained by source cross-entropy only.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from transferlab.data.domain import TrainingView
from transferlab.losses.margin import MarginDisparityLoss
from transferlab.methods.base import Batch, Method, Stage
from transferlab.nn import fresh_copy
from transferlab.rules import Rule
from transferlab.schedules import dann_lambda


class MDD(Method):
    takes_regularizers = True
    limits: ClassVar = {"margin": Rule(float, min=0), "lambda_gamma": Rule(float, min=0),
                        "lambda_max": Rule(float, min=0)}

    def __init__(self, margin: float = 4.0, lambda_gamma: float = 10.0,
                 lambda_max: float = 0.1, **common: Any) -> None:
        super().__init__(**common)
        self.lambda_gamma, self.lambda_max = lambda_gamma, lambda_max
        self.disparity = MarginDisparityLoss(fresh_copy(self.network.head), margin)

    def stages(self, view: TrainingView) -> list[Stage]:
        return self.joint_stage("mdd", view, self.update)

    def update(self, batch: Batch, progress: float) -> dict[str, Tensor | float]:
        (xs, ys), (xt, _) = batch["source"], batch["target"]
        features = self.network.features(torch.cat([xs, xt]))
        logits = self.network.head(features)
        n = len(xs)
        label_loss = F.cross_entropy(logits[:n], ys)
        lam = dann_lambda(progress, self.lambda_gamma, self.lambda_max)
        transfer = self.disparity(features[:n], features[n:], logits[:n], logits[n:], lam)
        # loss/transfer is −D_γ as the adversarial head currently estimates it.
        scalars: dict[str, Tensor | float] = {"loss/classification": label_loss,
                                              "loss/transfer": transfer, "mdd/lambda": lam}
        self.joint_step(label_loss + transfer, scalars, logits[n:])
        return scalars
