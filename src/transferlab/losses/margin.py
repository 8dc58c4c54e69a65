"""Margin disparity discrepancy (MDD; Zhang et al., ICML 2019): an auxiliary ("adversarial")
head f' is trained to agree with the main head's predicted classes on source and to disagree
with them on target; the features, behind gradient reversal, are trained to make that
impossible, which bounds the target error by the source error plus the discrepancy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transferlab.nn.gradient_reversal import grad_reverse


def margin_disparity_discrepancy(logits_s: Tensor, logits_t: Tensor, adversarial_s: Tensor,
                                 adversarial_t: Tensor, margin: float) -> Tensor:
    """D_γ = γ · E_s[log σ_h(x)(f'(x))] + E_t[log(1 − σ_h(x)(f'(x)))], where h(x) is the main
    head's predicted class (argmax of `logits_*`, so no gradient reaches the main head), σ the
    softmax of the adversarial head's `adversarial_*` logits and γ = `margin`. The source term
    is minus the cross-entropy of f' against h, the target term the paper's "modified" loss
    log(1 − σ) that avoids the vanishing gradient of −log σ. The adversarial head maximises
    D_γ, the features minimise it; D_γ ≤ 0, and it nears 0 when f' agrees with h on every
    source sample and disagrees on every target sample."""
    source = -F.cross_entropy(adversarial_s, logits_s.argmax(1))
    # log(1 − σ_k) = log Σ_{j≠k} e^{z_j} − log Σ_j e^{z_j}: exact, and finite as σ_k → 1.
    log_p = F.log_softmax(adversarial_t, dim=1)
    others = log_p.scatter(1, logits_t.argmax(1, keepdim=True), float("-inf"))
    target = torch.logsumexp(others, dim=1).mean()
    return margin * source + target


class MarginDisparityLoss(nn.Module):
    """`loss = MarginDisparityLoss(adversarial_head, margin)(f_s, f_t, logits_s, logits_t,
    coeff)` is −D_γ with the adversarial head fed through gradient reversal: minimising it
    trains the head to maximise D_γ and, with the gradient scaled by `coeff`, the features
    to minimise it."""

    def __init__(self, adversarial_head: nn.Module, margin: float) -> None:
        super().__init__()
        self.adversarial_head = adversarial_head
        self.margin = margin

    def forward(self, features_s: Tensor, features_t: Tensor, logits_s: Tensor,
                logits_t: Tensor, coeff: float) -> Tensor:
        adversarial = self.adversarial_head(grad_reverse(torch.cat([features_s, features_t]),
                                                         coeff))
        n = len(features_s)
        return -margin_disparity_discrepancy(logits_s, logits_t, adversarial[:n],
                                             adversarial[n:], self.margin)
