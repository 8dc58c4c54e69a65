"""MCD: maximum classifier discrepancy (Saito et al., CVPR 2018).

A generator G (the encoder) and two classifiers F1, F2 (the network's head and a second head
of the same shape, initialised independently). Each step, on one source and one target batch:
(A) G, F1 and F2 learn the source labels; (B) with G fixed, F1 and F2 learn to disagree as much
as possible on target while staying right on source, which finds target samples outside the
source support; (C) with F1 and F2 fixed, G learns to make them agree on target, `num_k` times.
The discrepancy is `transferlab.losses.classifier_discrepancy`.

Predictions are the mean of the two classifiers' logits: its argmax is the paper's ensemble
(F1 + F2, as in the official code's test), and the mean keeps the logits' scale for validators.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from transferlab.data.domain import TrainingView
from transferlab.losses.classifier_discrepancy import classifier_discrepancy
from transferlab.methods.base import (
    Batch,
    DomainName,
    Method,
    OptimizerFactory,
    Stage,
    optimize,
)
from transferlab.nn import fresh_copy
from transferlab.rules import Rule


class MCD(Method):
    takes_regularizers = True
    limits: ClassVar = {"num_k": Rule(int, min=1)}

    def __init__(self, train_optimizer: OptimizerFactory, num_k: int = 4,
                 **common: Any) -> None:
        super().__init__(**common)
        self.num_k = num_k
        self.make_train_optimizer = train_optimizer
        self.head2 = fresh_copy(self.network.head)

    def stages(self, view: TrainingView) -> list[Stage]:
        factory = self.make_train_optimizer
        self._g_optimizer = self.optimizer(self.network.encoder, factory=factory)
        self._f_optimizer = self.optimizer(self.network.head, self.head2, factory=factory)
        data = {"source": view.source, "target": view.target}
        return [Stage("mcd", self.steps, self.update, data,
                      [self._g_optimizer, self._f_optimizer], anneal_lr=False)]

    def update(self, batch: Batch, progress: float) -> dict[str, Tensor]:
        (xs, ys), (xt, _) = batch["source"], batch["target"]
        source_loss = self.step_source(xs, ys)
        maximised = self.step_classifiers(xs, ys, xt)
        scalars: dict[str, Tensor | float] = {}
        for _ in range(self.num_k):
            minimised = self.step_generator(xt, scalars)
        # The discrepancy after step B (what the classifiers reached) and at the last C step.
        return {"loss/classification": source_loss, "mcd/discrepancy_classifiers": maximised,
                "mcd/discrepancy_generator": minimised, **scalars}

    def _source_loss(self, features: Tensor, labels: Tensor) -> Tensor:
        return (F.cross_entropy(self.network.head(features), labels)
                + F.cross_entropy(self.head2(features), labels))

    def _discrepancy(self, features: Tensor) -> Tensor:
        return classifier_discrepancy(self.network.head(features), self.head2(features))

    def step_source(self, xs: Tensor, ys: Tensor) -> Tensor:
        """(A) G, F1 and F2 on the source labels."""
        loss = self._source_loss(self.network.features(xs), ys)
        optimize((self._g_optimizer, self._f_optimizer), loss)
        return loss.detach()

    def step_classifiers(self, xs: Tensor, ys: Tensor, xt: Tensor) -> Tensor:
        """(B) F1 and F2 maximise their discrepancy on target, staying right on source."""
        with torch.no_grad():  # G is fixed in this step
            fs, ft = self.network.features(xs), self.network.features(xt)
        discrepancy = self._discrepancy(ft)
        optimize(self._f_optimizer, self._source_loss(fs, ys) - discrepancy)
        return discrepancy.detach()

    def step_generator(self, xt: Tensor,
                       scalars: dict[str, Tensor | float] | None = None) -> Tensor:
        """(C) G minimises the discrepancy on target; only G's optimizer steps. Stacked
        regularizers act here, in G's one step on target, on the prediction (the heads'
        mean); their terms go into `scalars`."""
        features = self.network.features(xt)
        first, second = self.network.head(features), self.head2(features)
        discrepancy = classifier_discrepancy(first, second)
        self.joint_step(discrepancy, {} if scalars is None else scalars,
                        lambda: (first + second) / 2, self._g_optimizer)
        return discrepancy.detach()

    def outputs(self, x: Tensor, domain: DomainName) -> tuple[Tensor, Tensor]:
        features = self.network.features(x)
        return features, (self.network.head(features) + self.head2(features)) / 2
