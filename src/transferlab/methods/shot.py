"""SHOT (Liang et al., "Do we really need to access the source data? Source hypothesis
transfer for unsupervised domain adaptation", ICML 2020): adaptation without the source data.

1. `source`: the backbone's encoder, a bottleneck (linear → batch norm → dropout 0.5) and a
   weight-normalised linear classifier learn the labelled source with label smoothing
   (ε = `smoothing`). A stored stage, reused by every SHOT run that trains it alike.
2. `adapt`: the classifier, the source hypothesis, is frozen; the encoder and the bottleneck
   learn from target batches alone (the stage's data holds no source split) by information
   maximisation, mean prediction entropy minus the entropy of the mean prediction
   (`im_weight`), plus `pseudo_label_weight` × the cross-entropy with self-supervised
   pseudo-labels. These come from the target's features: class centroids weighted by the
   predictions, each image labelled by its nearest centroid (cosine), then centroids of those
   labels and nearest again; they are re-estimated with the current model at the start of the
   stage and after every pass over the target (`relabel_every` steps).
`pseudo_label_weight=0` is the paper's SHOT-IM ablation (conf/method/shot_im.yaml).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from transferlab.data.domain import Split, TrainingView, as_input
from transferlab.losses.entropy import information_maximization
from transferlab.methods.base import (
    Batch,
    DomainName,
    Method,
    OptimizerFactory,
    Reuse,
    Stage,
    optimize,
)
from transferlab.rules import Rule

LABELLING_BATCH = 1024  # images per forward pass when the whole target is relabelled


def centroid_pseudo_labels(features: Tensor, probabilities: Tensor) -> Tensor:
    """SHOT's pseudo-labels: features (with a constant 1 appended, L2-normalised), centroids
    weighted by the class probabilities, each sample labelled by its nearest centroid in
    cosine distance; then one round of centroids of those labels and nearest again."""
    x = F.normalize(torch.cat([features, torch.ones_like(features[:, :1])], 1), dim=1)
    weights = probabilities
    for _ in range(2):
        centroids = weights.t() @ x / (1e-8 + weights.sum(0)[:, None])
        labels = (x @ F.normalize(centroids, dim=1).t()).argmax(1)
        weights = F.one_hot(labels, probabilities.shape[1]).to(x.dtype)
    return labels


class SHOT(Method):
    limits: ClassVar = {"smoothing": Rule(float, min=0, max=1),
                        "pseudo_label_weight": Rule(float, min=0),
                        "im_weight": Rule(float, min=0), "bottleneck_dim": Rule(int, min=1),
                        "source_steps": Rule(int, min=0), "adapt_steps": Rule(int, min=0),
                        "batch_size": Rule(int, min=1)}

    def __init__(self, train_optimizer: OptimizerFactory, source_steps: int, adapt_steps: int,
                 batch_size: int, bottleneck_dim: int = 256, smoothing: float = 0.1,
                 pseudo_label_weight: float = 0.1, im_weight: float = 1.0,
                 **common: Any) -> None:
        super().__init__(**common)
        self.source_steps, self.adapt_steps, self.batch_size = source_steps, adapt_steps, batch_size
        self.smoothing, self.im_weight = smoothing, im_weight
        self.pseudo_label_weight = pseudo_label_weight
        self.make_train_optimizer = train_optimizer
        self.bottleneck = nn.Sequential(nn.Linear(self.network.feature_dim, bottleneck_dim),
                                        nn.BatchNorm1d(bottleneck_dim), nn.Dropout(0.5))
        self.classifier = weight_norm(nn.Linear(bottleneck_dim, self.num_classes))
        self.pseudo: Split | None = None  # the target split, labelled by the pseudo-labels
        self._stashed_labels: Tensor | None = None  # loaded before the stages were built
        self._as_evaluated = TrainingView.as_evaluated

    def stages(self, view: TrainingView) -> list[Stage]:
        optimizer = self.optimizer(self.network.encoder, self.bottleneck, self.classifier,
                                   factory=self.make_train_optimizer)
        trained = {"network": self.network, "bottleneck": self.bottleneck,
                   "classifier": self.classifier}
        settings = {"update": "shot-source", "smoothing": self.smoothing,
                    "bottleneck": str(self.bottleneck), "classifier": "weight-normalised"}

        def source_update(batch: Batch, progress: float) -> dict[str, Tensor]:
            x, y = batch["labelled"]
            loss = F.cross_entropy(self.logits(x), y, label_smoothing=self.smoothing)
            optimize(optimizer, loss)
            return {"loss/classification": loss}

        source = Stage("source", self.source_steps, source_update, {"labelled": view.source},
                       [optimizer], reuse=Reuse(trained, settings))
        self._as_evaluated = view.as_evaluated
        return [source, self.adaptation_stage(view.target)]

    def adaptation_stage(self, target: Split) -> Stage:
        """The adaptation stage, built from the target split alone: no source data reaches it."""
        labels = target.labels.clone()
        if self._stashed_labels is not None and len(self._stashed_labels) == len(labels):
            labels.copy_(self._stashed_labels)
        self.pseudo = Split(target.store, labels, target.rows, target.mapped)
        # The classifier, the source hypothesis, is not in it: it stays as the source left it.
        self._adapt_optimizer = self.optimizer(self.network.encoder, self.bottleneck,
                                               factory=self.make_train_optimizer)
        return Stage("adapt", self.adapt_steps, self.adapt_update, {"target": self.pseudo},
                     [self._adapt_optimizer], on_start=self.relabel)

    @property
    def relabel_every(self) -> int:
        """Steps of one pass over the target."""
        assert self.pseudo is not None
        return max(1, math.ceil(len(self.pseudo) / self.batch_size))

    def adapt_update(self, batch: Batch, progress: float) -> dict[str, Tensor]:
        x, pseudo_labels = batch["target"]
        logits = self.logits(x)
        _, marginal, conditional = information_maximization(logits)
        loss = self.im_weight * (conditional - marginal)
        scalars: dict[str, Tensor] = {"loss/conditional_entropy": conditional,
                                      "loss/marginal_entropy": marginal}
        if self.pseudo_label_weight:
            pseudo_loss = F.cross_entropy(logits, pseudo_labels)
            loss = loss + self.pseudo_label_weight * pseudo_loss
            scalars["loss/pseudo_labels"] = pseudo_loss
        optimize(self._adapt_optimizer, loss)
        if (round(progress * self.adapt_steps) + 1) % self.relabel_every == 0:
            self.relabel()  # the next batches are drawn with the new labels
        return scalars

    @torch.no_grad()
    def relabel(self) -> None:
        """Pseudo-labels for the whole target split from the current model, in eval mode."""
        if not self.pseudo_label_weight:
            return
        assert self.pseudo is not None
        was_training = self.training
        self.eval()
        features, probabilities = [], []
        for start in range(0, len(self.pseudo), LABELLING_BATCH):
            index = torch.arange(start, min(start + LABELLING_BATCH, len(self.pseudo)))
            images, _ = self.pseudo.take(index)
            f, logits = self.outputs(as_input(self._as_evaluated(images),
                                              self.network.in_channels,
                                              self.network.normalization), "target")
            features.append(f.float())
            probabilities.append(F.softmax(logits.float(), dim=1))
        self.pseudo.labels.copy_(centroid_pseudo_labels(torch.cat(features),
                                                         torch.cat(probabilities)))
        self.train(was_training)

    def logits(self, x: Tensor) -> Tensor:
        return self.classifier(self.bottleneck(self.network.features(x)))

    def outputs(self, x: Tensor, domain: DomainName) -> tuple[Tensor, Tensor]:
        features = self.bottleneck(self.network.features(x))
        return features, self.classifier(features)

    def get_extra_state(self) -> dict[str, Tensor]:
        """The pseudo-labels, so that a run resumed mid-pass draws the labels it drew."""
        return {"pseudo_labels": self.pseudo.labels.clone()} if self.pseudo is not None else {}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        labels = state.get("pseudo_labels")
        if labels is None:
            return
        if self.pseudo is not None and len(self.pseudo.labels) == len(labels):
            self.pseudo.labels.copy_(labels)
        else:
            self._stashed_labels = labels
