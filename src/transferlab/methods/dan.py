"""DAN: deep adaptation network (Long et al., ICML 2015).

Source cross-entropy plus a weighted sum, over the chosen layers ("taps"), of the multi-kernel
MMD between the source and the target activations of that layer, so that the layers the paper
adapts carry the same distribution in both domains. `FeatureAlignment`, the shared shape
(cross-entropy + weight · Σ_layers discrepancy), is also the base of Deep CORAL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from transferlab.data.domain import TrainingView
from transferlab.errors import UserError
from transferlab.losses.discrepancy import DAN_BANDWIDTHS, multi_kernel_mmd
from transferlab.methods.base import Batch, Method, Stage
from transferlab.rules import Rule
from transferlab.schedules import dann_lambda


class FeatureAlignment(Method):
    """Cross-entropy on source + `alignment_weight` · Σ over `layers` of `discrepancy(source
    activations, target activations)`; both domains go through the network as one batch."""

    takes_regularizers = True
    limits: ClassVar = {"alignment_weight": Rule(float, min=0),
                        "alignment_gamma": Rule(float, min=0, nullable=True)}
    discrepancy_name: ClassVar[str]  # the loss tag, e.g. "mmd"

    def __init__(self, alignment_weight: float, layers: Sequence[str],
                 alignment_gamma: float | None = None, **common: Any) -> None:
        super().__init__(**common)
        self.alignment_weight = alignment_weight
        self.alignment_gamma = alignment_gamma
        self.layers = tuple(layers)
        valid = self.network.tap_names()
        unknown = [name for name in self.layers if name not in valid]
        if unknown or not self.layers:
            raise UserError(f"method.layers={list(self.layers)} is invalid: must be a non-empty "
                            f"list of tap names of this backbone: {', '.join(valid)}")

    def discrepancy(self, source: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def stages(self, view: TrainingView) -> list[Stage]:
        return self.joint_stage("align", view, self.update)

    def update(self, batch: Batch, progress: float) -> dict[str, Tensor]:
        (xs, ys), (xt, _) = batch["source"], batch["target"]
        logits, taps = self.network.taps(torch.cat([xs, xt]), self.layers)
        n = len(xs)
        label_loss = F.cross_entropy(logits[:n], ys)
        alignment = sum(self.discrepancy(a[:n].flatten(1), a[n:].flatten(1))
                        for a in taps.values())
        scalars: dict[str, Tensor | float] = {"loss/classification": label_loss,
                                              f"loss/{self.discrepancy_name}": alignment}
        self.joint_step(label_loss + self.weight(progress) * alignment, scalars, logits[n:])
        return scalars

    def weight(self, progress: float) -> float:
        """`alignment_weight`, or with `alignment_gamma` set, DANN's ramp from 0 up to it:
        aligning the random features of the first steps can collapse them (DAN, seed 1)."""
        if self.alignment_gamma is None:
            return self.alignment_weight
        return dann_lambda(progress, self.alignment_gamma, self.alignment_weight)


class DAN(FeatureAlignment):
    discrepancy_name = "mmd"
    limits: ClassVar = {**FeatureAlignment.limits,
                        "estimator": Rule(str, choices=("linear", "quadratic"))}

    def __init__(self, alignment_weight: float = 1.0,
                 layers: Sequence[str] = ("features", "logits"), estimator: str = "linear",
                 bandwidths: Sequence[float] = DAN_BANDWIDTHS, **common: Any) -> None:
        super().__init__(alignment_weight, layers, **common)
        self.linear = estimator == "linear"
        self.bandwidths = tuple(bandwidths)
        if not self.bandwidths or min(self.bandwidths) <= 0:
            raise UserError(f"method.bandwidths={list(self.bandwidths)} is invalid: must be a "
                            "non-empty list of numbers > 0")

    def discrepancy(self, source: Tensor, target: Tensor) -> Tensor:
        return multi_kernel_mmd(source, target, self.bandwidths, self.linear)
