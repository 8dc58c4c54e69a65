"""DANN: domain-adversarial training (Ganin & Lempitsky, ICML 2015; Ganin et al., JMLR 2016).

Features of a source and a target batch go through the label head (source only) and, behind a
gradient-reversal layer, through a domain discriminator. Minimising the summed loss trains the
discriminator to tell the domains apart and, through the reversed gradient, the encoder to make
them indistinguishable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from transferlab.data.domain import TrainingView
from transferlab.losses.adversarial import DomainAdversarialLoss
from transferlab.methods.base import Batch, Method, Stage
from transferlab.nn import DomainDiscriminator
from transferlab.rules import Rule
from transferlab.schedules import dann_lambda


class DANN(Method):
    takes_regularizers = True
    limits: ClassVar = {"lambda_gamma": Rule(float, min=0), "lambda_max": Rule(float, min=0)}

    def __init__(self, lambda_gamma: float = 10.0, lambda_max: float = 1.0,
                 domain_hidden: Sequence[int] = (100,), domain_batch_norm: bool = False,
                 domain_dropout: float = 0.0, **common: Any) -> None:
        super().__init__(**common)
        self.lambda_gamma, self.lambda_max = lambda_gamma, lambda_max
        self.adversarial = DomainAdversarialLoss(DomainDiscriminator(
            self.network.feature_dim, domain_hidden, domain_batch_norm, domain_dropout))

    def stages(self, view: TrainingView) -> list[Stage]:
        return self.joint_stage("dann", view, self.update)

    def update(self, batch: Batch, progress: float) -> dict[str, Tensor | float]:
        (xs, ys), (xt, _) = batch["source"], batch["target"]
        n = len(xs)
        # One encoder pass over both domains: batch-norm layers (if any) see one joint batch.
        features = self.network.features(torch.cat([xs, xt]))
        source_logits = self.network.head(features[:n])
        lam = dann_lambda(progress, self.lambda_gamma, self.lambda_max)
        scalars: dict[str, Tensor | float] = {"dann/lambda": lam}
        weights = self.source_weights(source_logits, ys, features[n:], scalars)
        label_losses = F.cross_entropy(source_logits, ys, reduction="none")
        if weights is None:
            label_loss = label_losses.mean()
            domain_weights = None
        else:  # each domain's weights normalised separately: both keep equal total weight
            label_loss = (label_losses * weights).mean()
            domain_weights = torch.cat([weights / weights.sum().clamp_min(1e-12),
                                        torch.full_like(features[n:, 0], 1 / len(xt))])
        domain_loss, domain_acc = self.adversarial(features[:n], features[n:], lam,
                                                   domain_weights)
        scalars.update({"loss/classification": label_loss, "loss/domain": domain_loss,
                        "dann/domain_acc": domain_acc})
        self.joint_step(label_loss + domain_loss, scalars,
                        lambda: self.network.head(features[n:]))
        return scalars

    def source_weights(self, source_logits: Tensor, labels: Tensor, target_features: Tensor,
                       scalars: dict[str, Tensor | float]) -> Tensor | None:
        """One weight per source sample for both losses (None: unweighted, DANN itself);
        IWDAN's class ratios override it."""
        return None
