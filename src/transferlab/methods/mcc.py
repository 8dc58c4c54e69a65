"""MCC: minimum class confusion (Jin et al., ECCV 2020).

Cross-entropy on labelled source plus `trade_off` × the class confusion of the target batch:
the temperature-scaled target predictions, weighted by how certain each is, should not put
mass on two classes at once. The same term stacks on other methods as a regulariser
(`+method/regularizers=[mcc]`); both use `transferlab.losses.entropy.class_confusion`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor

from transferlab.data.domain import TrainingView
from transferlab.losses.entropy import class_confusion
from transferlab.methods.base import Batch, Method, Stage
from transferlab.rules import Rule


class MCC(Method):
    takes_regularizers = True
    limits: ClassVar = {"trade_off": Rule(float, min=0), "temperature": Rule(float, min=1e-6)}

    def __init__(self, trade_off: float = 1.0, temperature: float = 2.5, **common: Any) -> None:
        super().__init__(**common)
        self.trade_off, self.temperature = trade_off, temperature

    def stages(self, view: TrainingView) -> list[Stage]:
        return self.joint_stage("mcc", view, self.update)

    def update(self, batch: Batch, progress: float) -> dict[str, Tensor]:
        (xs, ys), (xt, _) = batch["source"], batch["target"]
        label_loss = F.cross_entropy(self.network(xs), ys)
        target_logits = self.network(xt)
        confusion = class_confusion(target_logits, self.temperature)
        scalars = {"loss/classification": label_loss, "loss/mcc": confusion}
        self.joint_step(label_loss + self.trade_off * confusion, scalars, target_logits)
        return scalars
