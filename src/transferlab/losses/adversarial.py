"""The domain-adversarial loss (Ganin & Lempitsky, ICML 2015): a domain discriminator learns to
tell source features from target features, and, through a gradient-reversal layer, the layers
below it learn to make the two indistinguishable. DANN applies it to features, CDAN to the
multilinear map of features and predictions, VADA adds it to its cluster-assumption losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transferlab.nn.discriminator import SOURCE, TARGET
from transferlab.nn.gradient_reversal import grad_reverse


def domain_labels(n_source: int, n_target: int, device: torch.device) -> Tensor:
    """SOURCE for the first `n_source` samples, TARGET for the next `n_target`."""
    return torch.cat([torch.full((n_source,), SOURCE, device=device),
                      torch.full((n_target,), TARGET, device=device)])


class DomainAdversarialLoss(nn.Module):
    """`loss, domain_acc = DomainAdversarialLoss(discriminator)(f_s, f_t, coeff)`.

    Both domains go through the discriminator as one batch (batch-norm layers in it see both).
    `coeff` is the reversed gradient's scale (DANN's annealed λ). `weights`, one per sample
    (source first), weight the cross-entropy as CDAN+E does, divided by their (constant) sum;
    gradients reach whatever they were computed from unless the caller detached them.
    """

    def __init__(self, discriminator: nn.Module) -> None:
        super().__init__()
        self.discriminator = discriminator

    def forward(self, source: Tensor, target: Tensor, coeff: float,
                weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logits = self.discriminator(grad_reverse(torch.cat([source, target]), coeff))
        domains = domain_labels(len(source), len(target), logits.device)
        losses = F.cross_entropy(logits, domains, reduction="none")
        if weights is None:
            loss = losses.mean()
        else:
            loss = (losses * weights).sum() / weights.detach().sum()
        accuracy = (logits.argmax(1) == domains).float().mean()
        return loss, accuracy
