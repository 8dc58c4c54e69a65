"""Virtual adversarial training (Miyato et al., TPAMI 2018): the local smoothness penalty
that VADA and DIRT-T apply on both domains.

The perturbation r with ‖r‖ = ε that most changes the prediction, KL(p(x) ‖ p(x + r)), is
found by power iteration on the Hessian of that divergence at r = 0: start from a random unit
direction d, take the gradient of KL(p(x) ‖ p(x + ξ d)) with respect to d, normalise it, repeat.
The loss is the divergence at x + r, pulling p(x + r) towards the (fixed) p(x)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def kl_divergence(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(softmax(p) ‖ softmax(q)) per sample, in nats. (N, C), (N, C) → (N,)."""
    log_p, log_q = F.log_softmax(p_logits, dim=1), F.log_softmax(q_logits, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1)


def _unit(d: Tensor) -> Tensor:
    """Each sample's perturbation scaled to L2 norm 1 (over all its pixels and channels).
    Divided by its largest entry first: the gradients of a ξ-sized step are far smaller than
    any fixed epsilon of a plain normalisation."""
    flat = d.flatten(1)
    flat = flat / flat.abs().amax(1, keepdim=True).clamp_min(torch.finfo(d.dtype).tiny)
    return F.normalize(flat, dim=1).view_as(d)


def adversarial_perturbation(model: Callable[[Tensor], Tensor], x: Tensor, logits: Tensor,
                             radius: float, xi: float = 1e-6, iterations: int = 1) -> Tensor:
    """The virtual adversarial perturbation of each sample of `x`: norm `radius`, direction
    found by `iterations` power-iteration steps with finite-difference scale `xi`. `logits`
    are the model's outputs on `x` (treated as constants)."""
    x, target = x.detach(), logits.detach().to(x.dtype)
    # In the inputs' precision even under bf16 autocast: a step of xi = 1e-6 would round away.
    with torch.autocast(x.device.type, enabled=False):
        d = _unit(torch.randn_like(x))
        for _ in range(iterations):
            d.requires_grad_(True)
            divergence = kl_divergence(target, model(x + xi * d)).sum()
            d = _unit(torch.autograd.grad(divergence, d)[0].detach())
    return radius * d


def vat_loss(model: Callable[[Tensor], Tensor], x: Tensor, logits: Tensor, radius: float,
             xi: float = 1e-6, iterations: int = 1) -> Tensor:
    """Mean KL(p(x) ‖ p(x + r_adv)), with p(x) from `logits` held fixed: the gradient moves
    the prediction at the perturbed point only."""
    r = adversarial_perturbation(model, x, logits, radius, xi, iterations)
    return kl_divergence(logits.detach(), model(x + r)).mean()
