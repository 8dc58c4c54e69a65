"""VADA: virtual adversarial domain adaptation (Shu et al., ICLR 2018, eq. 7).

DANN-style feature alignment plus the cluster assumption: decision boundaries should not
cross dense regions of the data. On labelled source and unlabelled target batches it
minimises

    cross-entropy(source) + λ_d · domain loss + λ_s · VAT(source)
                          + λ_t · (conditional entropy(target) + VAT(target))

where VAT (Miyato et al.) penalises prediction changes within a ball of radius `radius`
around each input. As in the official code (github.com/RuiShu/dirt-t), the domain loss is the
non-saturating form of the minimax game: each step, the discriminator first learns to tell
the domains apart (its own Adam), then the encoder minimises the discriminator's cross-entropy
against the swapped domain labels. (Gradient reversal, the saturating form, gives the encoder
almost no gradient once the discriminator is confident; at λ_d = 0.01 the features then barely
align.) One Adam optimizer at a constant rate trains the classifier, and predictions come from
an exponential moving average of its weights (`ema_decay`, 0.998).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from transferlab.data.domain import TrainingView
from transferlab.losses.adversarial import domain_labels
from transferlab.losses.entropy import entropy
from transferlab.losses.vat import vat_loss
from transferlab.methods.base import (
    Batch,
    DomainName,
    Method,
    OptimizerFactory,
    Reuse,
    Stage,
    optimize,
)
from transferlab.nn import DomainDiscriminator
from transferlab.nn.discriminator import SOURCE, TARGET
from transferlab.nn.norms import running_statistics_kept
from transferlab.rules import Rule


class VADA(Method):
    takes_regularizers = True
    limits: ClassVar = {"lambda_d": Rule(float, min=0), "lambda_s": Rule(float, min=0),
                        "lambda_t": Rule(float, min=0), "radius": Rule(float, min=0),
                        "ema_decay": Rule(float, min=0, max=1),
                        "bn_statistics": Rule(str, choices=("target", "all"))}

    def __init__(self, train_optimizer: OptimizerFactory, lambda_d: float = 1e-2,
                 lambda_s: float = 1.0, lambda_t: float = 1e-2, radius: float = 3.5,
                 ema_decay: float = 0.998, bn_statistics: str = "target",
                 domain_hidden: Sequence[int] = (100,), **common: Any) -> None:
        super().__init__(**common)
        self.lambda_d, self.lambda_s, self.lambda_t = lambda_d, lambda_s, lambda_t
        self.radius, self.ema_decay = radius, ema_decay
        self.bn_statistics = bn_statistics
        self.make_train_optimizer = train_optimizer
        self.discriminator = DomainDiscriminator(self.network.feature_dim, domain_hidden)
        self.average = copy.deepcopy(self.network).requires_grad_(False)
        # What the VADA stage's result depends on besides its data, starting weights and
        # optimizer: a VADA run's stage is a DIRT-T run's first stage (see stage_cache).
        self.vada_settings = {
            "update": "vada", "lambda_d": lambda_d, "lambda_s": lambda_s, "lambda_t": lambda_t,
            "radius": radius, "ema_decay": ema_decay, "bn_statistics": bn_statistics,
            "regularizers": {name: {"class": type(r).__name__, **vars(r)}
                             for name, r in self.regularizers.items()}}

    def stages(self, view: TrainingView) -> list[Stage]:
        return [self.vada_stage(view, self.steps)]

    def vada_stage(self, view: TrainingView, steps: int) -> Stage:
        self._optimizer = self.optimizer(self.network, factory=self.make_train_optimizer)
        self._d_optimizer = self.optimizer(self.discriminator, factory=self.make_train_optimizer)
        trained = {"network": self.network, "discriminator": self.discriminator,
                   "average": self.average}
        return Stage("vada", steps, self.update, {"source": view.source, "target": view.target},
                     [self._optimizer, self._d_optimizer], anneal_lr=False,
                     reuse=Reuse(trained, self.vada_settings))

    def update(self, batch: Batch, progress: float) -> dict[str, Tensor]:
        (xs, ys), (xt, _) = batch["source"], batch["target"]
        with self.statistics_kept():
            source_features = self.network.features(xs)
        target_features = self.network.features(xt)
        source_logits = self.network.head(source_features)
        target_logits = self.network.head(target_features)
        features = torch.cat([source_features, target_features])
        domains = domain_labels(len(xs), len(xt), features.device)
        discriminator_loss = F.cross_entropy(self.discriminator(features.detach()), domains)
        optimize(self._d_optimizer, discriminator_loss)

        domain_logits = self.discriminator(features)
        domain_loss = F.cross_entropy(domain_logits, SOURCE + TARGET - domains)  # swapped
        label_loss = F.cross_entropy(source_logits, ys)
        target_entropy = entropy(target_logits).mean()
        target_vat = self.vat(xt, target_logits)
        loss = (label_loss + self.lambda_d * domain_loss
                + self.lambda_t * (target_entropy + target_vat))
        scalars = {"loss/classification": label_loss, "loss/domain": domain_loss,
                   "loss/discriminator": discriminator_loss,
                   "loss/target_entropy": target_entropy, "loss/target_vat": target_vat,
                   "vada/domain_acc": (domain_logits.argmax(1) == domains).float().mean()}
        if self.lambda_s:
            source_vat = self.vat(xs, source_logits)
            loss = loss + self.lambda_s * source_vat
            scalars["loss/source_vat"] = source_vat
        self.joint_step(loss, scalars, target_logits)
        self.update_average()
        return scalars

    def vat(self, x: Tensor, logits: Tensor) -> Tensor:
        with self.statistics_kept():
            return vat_loss(self.network, x, logits, self.radius)

    def statistics_kept(self) -> AbstractContextManager[None]:
        """With `bn_statistics: target`, as the official code: batch-norm layers normalise the
        passes in this block by their own batch but leave the running statistics (what
        evaluation uses) to the target passes. With `all`, every pass updates them."""
        if self.bn_statistics == "all":
            return nullcontext()
        return running_statistics_kept(self.network)

    @torch.no_grad()
    def update_average(self) -> None:
        """average ← decay · average + (1 − decay) · weights; batch-norm statistics are
        copied, not averaged (as TensorFlow's ExponentialMovingAverage over the trainable
        variables in the official code)."""
        for average, current in zip(self.average.parameters(), self.network.parameters(),
                                    strict=True):
            average.lerp_(current, 1 - self.ema_decay)
        for average, current in zip(self.average.buffers(), self.network.buffers(),
                                    strict=True):
            average.copy_(current)

    def outputs(self, x: Tensor, domain: DomainName) -> tuple[Tensor, Tensor]:
        features = self.average.features(x)
        return features, self.average.head(features)
