"""CDAN and CDAN+E: conditional domain-adversarial networks (Long et al., NeurIPS 2018).

DANN's game, but the domain discriminator sees the multilinear map of the features and the
class predictions (randomized above 4096 dimensions), so that features are aligned class by
class rather than only as a whole. With `entropy_conditioning` (CDAN+E) each sample's
discriminator loss is weighted by 1 + e^(−entropy of its prediction), so that confident,
transferable samples count more; the weights of each domain are normalised separately, as in
the authors' code, so that both domains keep equal total weight. `entropy_gradient`: the
weights as constants (`detached`, tllib's), or `reversed`, the authors' code: the
discriminator loss's gradient reaches the predictions through the entropy, reversed and scaled
by λ. The authors' digit settings (LeNet, the exact map of 500 × 10, a 500-500 discriminator
with dropout): `randomize_above=null domain_hidden=[500,500]` (docs/methods.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from transferlab.data.domain import TrainingView
from transferlab.losses.adversarial import DomainAdversarialLoss
from transferlab.losses.conditional import (
    RANDOMIZE_ABOVE,
    RANDOMIZED_DIM,
    MultilinearMap,
    conditioning_weights,
)
from transferlab.methods.base import Batch, Method, Stage
from transferlab.nn import DomainDiscriminator
from transferlab.rules import Rule
from transferlab.schedules import dann_lambda


class CDAN(Method):
    takes_regularizers = True
    limits: ClassVar = {"lambda_gamma": Rule(float, min=0), "lambda_max": Rule(float, min=0),
                        "entropy_gradient": Rule(str, choices=("detached", "reversed")),
                        "randomize_above": Rule(int, min=0, nullable=True),
                        "randomized_dim": Rule(int, min=1),
                        "domain_dropout": Rule(float, min=0, max=0.99)}

    def __init__(self, entropy_conditioning: bool = False, entropy_gradient: str = "detached",
                 lambda_gamma: float = 10.0, lambda_max: float = 1.0,
                 randomize_above: int | None = RANDOMIZE_ABOVE,
                 randomized_dim: int = RANDOMIZED_DIM,
                 domain_hidden: Sequence[int] = (1024, 1024), domain_batch_norm: bool = False,
                 domain_dropout: float = 0.5, **common: Any) -> None:
        super().__init__(**common)
        self.entropy_conditioning, self.entropy_gradient = entropy_conditioning, entropy_gradient
        self.lambda_gamma, self.lambda_max = lambda_gamma, lambda_max
        self.multilinear = MultilinearMap(self.network.feature_dim, self.num_classes,
                                          randomize_above, randomized_dim)
        self.adversarial = DomainAdversarialLoss(DomainDiscriminator(
            self.multilinear.out_features, domain_hidden, domain_batch_norm, domain_dropout))

    def stages(self, view: TrainingView) -> list[Stage]:
        return self.joint_stage("cdan", view, self.update)

    def update(self, batch: Batch, progress: float) -> dict[str, Tensor | float]:
        (xs, ys), (xt, _) = batch["source"], batch["target"]
        features = self.network.features(torch.cat([xs, xt]))
        logits = self.network.head(features)
        n = len(xs)
        label_loss = F.cross_entropy(logits[:n], ys)
        # The discriminator conditions on the predictions but does not train them (the
        # authors' code detaches them too): only the features are pushed to fool it.
        joint = self.multilinear(features, F.softmax(logits, dim=1).detach())
        lam = dann_lambda(progress, self.lambda_gamma, self.lambda_max)
        weights = None
        if self.entropy_conditioning:
            reversal = lam if self.entropy_gradient == "reversed" else None
            weights = conditioning_weights(logits, n, reversal)
        domain_loss, domain_acc = self.adversarial(joint[:n], joint[n:], lam, weights)
        scalars: dict[str, Tensor | float] = {
            "loss/classification": label_loss, "loss/domain": domain_loss, "cdan/lambda": lam,
            "cdan/domain_acc": domain_acc}
        self.joint_step(label_loss + domain_loss, scalars, logits[n:])
        return scalars
