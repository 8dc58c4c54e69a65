"""Virtual adversarial training (Miyato et al., TPAMI 2018): the local smoothness penalty
that VADA and DIRT-T apply on both domains.

The perturbation r with ‖r‖ = ε that most changes the prediction, KL(p(x) ‖ p(x + r)), is
found by power iteration on the Hessian H of that divergence at r = 0: start from a random unit
direction d, replace it by H d normalised, repeat. The paper approximates H d by the gradient
of KL(p(x) ‖ p(x + ξ d)) with a tiny ξ (1e-6); in float32 a step that small rounds away against
inputs of order 1 and leaves mostly rounding noise. Here H d is computed exactly, as
Jᵀ (diag(p) − p pᵀ) J d with J the Jacobian of the logits (forward-mode AD for J d, a backward
pass for Jᵀ ·): the ξ → 0 limit of the paper's finite difference, in any precision (for
piecewise-linear networks the divergence's Hessian is exactly this). The loss is the
divergence at x + r, pulling p(x + r) towards the (fixed) p(x)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor


def kl_divergence(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(softmax(p) ‖ softmax(q)) per sample, in nats. (N, C), (N, C) → (N,)."""
    log_p, log_q = F.log_softmax(p_logits, dim=1), F.log_softmax(q_logits, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1)


def _unit(d: Tensor) -> Tensor:
    """Each sample's perturbation scaled to L2 norm 1 (over all its pixels and channels).
    Divided by its largest entry first: a flat network's H d can be far smaller than any
    fixed epsilon of a plain normalisation."""
    flat = d.flatten(1)
    flat = flat / flat.abs().amax(1, keepdim=True).clamp_min(torch.finfo(d.dtype).tiny)
    return F.normalize(flat, dim=1).view_as(d)


def divergence_hessian_product(model: Callable[[Tensor], Tensor], x: Tensor, d: Tensor,
                               logits: Tensor) -> Tensor:
    """H d for each sample: the Hessian at r = 0 of KL(softmax(logits) ‖ softmax(model(x + r)))
    times `d`, computed exactly as Jᵀ (diag(p) − p pᵀ) J d (see the module docstring)."""
    x = x.detach().requires_grad_(True)
    with fwAD.dual_level():
        primal, jd = fwAD.unpack_dual(model(fwAD.make_dual(x, d)))
    p = F.softmax(logits.detach(), dim=1)
    curvature = p * jd - p * (p * jd).sum(1, keepdim=True)  # (diag(p) − p pᵀ) J d
    return torch.autograd.grad(primal, x, grad_outputs=curvature)[0]


def adversarial_perturbation(model: Callable[[Tensor], Tensor], x: Tensor, logits: Tensor,
                             radius: float, iterations: int = 1) -> Tensor:
    """The virtual adversarial perturbation of each sample of `x`: norm `radius`, direction
    found by `iterations` power-iteration steps on the divergence's Hessian. `logits` are the
    model's outputs on `x` (treated as constants)."""
    x, target = x.detach(), logits.detach().to(x.dtype)
    with torch.autocast(x.device.type, enabled=False):
        d = _unit(torch.randn_like(x))
        for _ in range(iterations):
            d = _unit(divergence_hessian_product(model, x, d, target).detach())
    return radius * d


def vat_loss(model: Callable[[Tensor], Tensor], x: Tensor, logits: Tensor, radius: float,
             iterations: int = 1) -> Tensor:
    """Mean KL(p(x) ‖ p(x + r_adv)), with p(x) from `logits` held fixed: the gradient moves
    the prediction at the perturbed point only."""
    r = adversarial_perturbation(model, x, logits, radius, iterations)
    return kl_divergence(logits.detach(), model(x + r)).mean()
