"""Instance weighting (importance-weighted ERM; Shimodaira 2000, Sugiyama et al. 2007): the
instance-based family of transfer methods. Under covariate shift, the target risk is the source
risk with each source sample weighted by w(x) = p_target(x) / p_source(x); a domain classifier
on the network's features estimates w (Bickel et al., 2007), and the source cross-entropy is
weighted by it, clipped and normalised to mean 1.

Two schedules (`estimate_steps`):
- 0 (default): alongside. Each step the domain classifier learns on the current features
  (detached: it must measure the shift, not shape the features) and the same step's source
  loss is weighted by its estimate.
- N > 0: first. N steps of plain source training with the domain classifier learning
  alongside; then both the encoder it read and the classifier are frozen (a copy of the
  encoder, so the network trains on) and `steps` steps of weighted training follow, with each
  sample's weight fixed, as in classical two-step importance weighting.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from transferlab.data.domain import TrainingView
from transferlab.errors import UserError
from transferlab.losses.adversarial import domain_labels
from transferlab.losses.density_ratio import density_ratio, normalised_weights
from transferlab.methods.base import Batch, Method, Stage, optimize
from transferlab.nn import DomainDiscriminator
from transferlab.rules import Rule


class IWERM(Method):
    takes_regularizers = True
    limits: ClassVar = {"clip": Rule(float, min=1, nullable=True),
                        "estimate_steps": Rule(int, min=0)}

    def __init__(self, clip: float | None = 10.0, estimate_steps: int = 0,
                 domain_hidden: Sequence[int] = (100,), **common: Any) -> None:
        super().__init__(**common)
        if self.regularizers and estimate_steps:
            raise UserError(f"method.regularizers with method.estimate_steps={estimate_steps}: "
                            "the weighted stage sees no target batch; regularizers stack on "
                            "the one-stage IWERM (estimate_steps=0)")
        self.clip, self.estimate_steps = clip, estimate_steps
        self.domain_classifier = DomainDiscriminator(self.network.feature_dim, domain_hidden)
        if estimate_steps:
            self.weighting_encoder = copy.deepcopy(self.network.encoder)
        # Set when the two-step schedule freezes its estimate (a buffer: a resumed run knows).
        self.register_buffer("weights_frozen", torch.tensor(False))

    def stages(self, view: TrainingView) -> list[Stage]:
        both = {"source": view.source, "target": view.target}
        optimizer = self.optimizer(self.network, self.domain_classifier)

        def alongside(batch: Batch, progress: float) -> dict[str, Tensor]:
            return self.estimating_update(optimizer, batch, weighted=True)

        if not self.estimate_steps:
            return [Stage("iwerm", self.steps, alongside, both, [optimizer])]

        def estimate(batch: Batch, progress: float) -> dict[str, Tensor]:
            return self.estimating_update(optimizer, batch, weighted=False)

        weighted_optimizer = self.optimizer(self.network)

        def weighted(batch: Batch, progress: float) -> dict[str, Tensor]:
            return self.fixed_weights_update(weighted_optimizer, batch)

        return [Stage("estimate", self.estimate_steps, estimate, both, [optimizer]),
                Stage("weighted", self.steps, weighted, {"source": view.source},
                      [weighted_optimizer], on_start=self.freeze_weights)]

    def freeze_weights(self) -> None:
        self.weighting_encoder.load_state_dict(self.network.encoder.state_dict())
        self.weights_frozen.fill_(True)

    def train(self, mode: bool = True) -> IWERM:
        super().train(mode)
        if self.weights_frozen:  # the frozen estimate keeps its batch-norm statistics too
            self.weighting_encoder.eval().requires_grad_(False)
            self.domain_classifier.eval().requires_grad_(False)
        return self

    def weights(self, domain_logits_s: Tensor) -> Tensor:
        # The domain classifier always learns from as many source as target samples (the
        # loop draws a batch of each), so the prior correction of the density ratio is 1.
        n = len(domain_logits_s)
        return normalised_weights(density_ratio(domain_logits_s.detach(), n, n), self.clip)

    def estimating_update(self, optimizer: torch.optim.Optimizer, batch: Batch,
                          weighted: bool) -> dict[str, Tensor]:
        (xs, ys), (xt, _) = batch["source"], batch["target"]
        features = self.network.features(torch.cat([xs, xt]))
        n = len(xs)
        domain_logits = self.domain_classifier(features.detach())
        domain_loss = F.cross_entropy(domain_logits, domain_labels(n, len(xt), xs.device))
        logits = self.network.head(features[:n])
        if weighted:
            weights = self.weights(domain_logits[:n])
            label_loss = weighted_cross_entropy(logits, ys, weights)
        else:
            label_loss = F.cross_entropy(logits, ys)
        scalars: dict[str, Tensor | float] = {
            "loss/classification": label_loss, "loss/domain": domain_loss,
            **(weight_stats(weights) if weighted else {})}
        self.joint_step(label_loss + domain_loss, scalars,
                        lambda: self.network.head(features[n:]), optimizer)
        return scalars

    def fixed_weights_update(self, optimizer: torch.optim.Optimizer,
                             batch: Batch) -> dict[str, Tensor]:
        xs, ys = batch["source"]
        with torch.no_grad():
            weights = self.weights(self.domain_classifier(self.weighting_encoder(xs)))
        label_loss = weighted_cross_entropy(self.network(xs), ys, weights)
        optimize(optimizer, label_loss)
        return {"loss/classification": label_loss, **weight_stats(weights)}


def weighted_cross_entropy(logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    return (F.cross_entropy(logits, labels, reduction="none") * weights).mean()


def weight_stats(weights: Tensor) -> dict[str, Tensor]:
    """The largest weight, and the effective sample size as a fraction of the batch
    ((Σw)² / (n Σw²), Kish): how far the weighting concentrates the loss on few samples."""
    return {"iwerm/max_weight": weights.max(),
            "iwerm/effective_fraction": weights.sum() ** 2 / (len(weights) * weights.pow(2).sum())}
