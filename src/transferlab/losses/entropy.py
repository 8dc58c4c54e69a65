"""The entropy family: quantities of a batch of class predictions that need no labels. Each is
a training loss in some method and a validator in `transferlab.evaluation` (one formula, one
place): prediction entropy (entropy minimisation, VADA, DIRT-T; the `entropy` validator),
information maximisation (the `im` validator), batch nuclear-norm (BNM), minimum class
confusion (MCC), and CDAN+E's entropy-based sample weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from transferlab.nn.gradient_reversal import grad_reverse


def entropy(logits: Tensor) -> Tensor:
    """Per-sample entropy of softmax(logits), in nats: 0 for a one-hot prediction, log C for a
    uniform one. (N, C) → (N,)."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(1)


def information_maximization(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """IM = H(mean prediction) − mean H(prediction) (Gomes et al. 2010; Shi & Sha 2012): high
    when each prediction is confident and the batch uses all classes. Returns (IM, the
    marginal entropy, the mean conditional entropy)."""
    p = F.softmax(logits, dim=1)
    mean = p.mean(0)
    marginal = -(mean * mean.clamp_min(1e-12).log()).sum()
    conditional = entropy(logits).mean()
    return marginal - conditional, marginal, conditional


def batch_nuclear_norm(logits: Tensor) -> Tensor:
    """‖softmax(logits)‖_* / N (Cui et al., CVPR 2020): large when predictions are both
    confident and diverse. BNM maximises it; as a validator, higher is better."""
    return torch.linalg.matrix_norm(F.softmax(logits, dim=1), ord="nuc") / len(logits)


def entropy_weights(logits: Tensor, reversal: float | None = None) -> Tensor:
    """1 + e^(−H(p)) per sample (CDAN+E, MCC): confident samples weigh up to 2, uncertain
    ones down to 1 + 1/C. Not differentiated through; with `reversal` λ, gradients reach the
    logits through H, reversed and scaled by λ (CDAN+E as its authors' code runs it)."""
    h = entropy(logits.detach()) if reversal is None else grad_reverse(entropy(logits), reversal)
    return 1 + torch.exp(-h)


def class_confusion(logits: Tensor, temperature: float = 2.5) -> Tensor:
    """Minimum class confusion loss (Jin et al., ECCV 2020): with Ŷ = softmax(logits / T) and
    entropy weights W normalised to sum N, the class correlation C = Ŷᵀ diag(W) Ŷ, each row
    normalised to sum 1; the loss is the mean over classes of the off-diagonal mass,
    Σ_{j≠j'} C_jj' / num_classes. 0 for a one-hot batch."""
    scaled = logits / temperature
    p = F.softmax(scaled, dim=1)
    w = entropy_weights(scaled)
    w = (len(w) * w / w.sum()).unsqueeze(1)
    confusion = (p * w).t() @ p
    confusion = confusion / confusion.sum(1, keepdim=True)
    return (confusion.sum() - confusion.trace()) / logits.shape[1]
