"""Class ratios w_y = p_target(y) / p_source(y) under label shift, for IWDAN's weights.

Black-box shift estimation (BBSE; Lipton et al., ICML 2018), as IWDAN uses it (Tachet des
Combes et al., NeurIPS 2020): if only the label distribution shifts, the target's distribution
of *predicted* labels is μ = C w, where C[i, j] = p_source(ŷ = i, y = j) is the classifier's
joint confusion on source data. Solving C w = μ needs no target label. Both C and μ are moving
averages over training batches (hard predictions), so the estimate follows the classifier as
it trains, as the paper's per-epoch re-estimate does."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def confusion_matrix(predicted: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """counts[i, j] = how many images of class i were predicted as class j (on the inputs'
    device: IWDAN counts every training batch, the analysis the whole target test split)."""
    pairs = labels.long() * num_classes + predicted.long()
    return torch.bincount(pairs, minlength=num_classes**2).view(num_classes, num_classes)


def class_ratios(confusion: Tensor, target_predicted: Tensor) -> Tensor:
    """w ≥ 0 with C w ≈ μ (least squares through the pseudo-inverse, so a class the source
    batches have not shown yet cannot make it fail), scaled so that Σ_y p_source(y) w_y = 1:
    the weights then reweight source samples without changing the loss's expected scale."""
    w = (torch.linalg.pinv(confusion) @ target_predicted).clamp_min(0)
    total = confusion.sum(0) @ w
    # No source class found in the target at all (a degenerate early estimate): no reweighting.
    # (torch.where, not `if`: no host synchronisation in the training step.)
    return torch.where(total > 0, w / total.clamp_min(1e-12), torch.ones_like(w))


class ClassRatioEstimator(nn.Module):
    """Moving averages of the source confusion C and the target's predicted label distribution
    μ; `update(...)` folds in one batch and returns the current w (one weight per class),
    `ratios()` the current w.

    Both start uniform (C = I / classes, μ = 1 / classes), so w starts at 1: plain DANN until
    the batches say otherwise. Buffers, so a resumed run continues the same estimate."""

    def __init__(self, num_classes: int, momentum: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("confusion", torch.eye(num_classes) / num_classes)
        self.register_buffer("target_predicted", torch.full((num_classes,), 1 / num_classes))

    @torch.no_grad()
    def update(self, source_logits: Tensor, source_labels: Tensor,
               target_logits: Tensor) -> Tensor:
        k = len(self.target_predicted)
        # Transposed: C's rows are the predicted classes.
        joint = confusion_matrix(source_logits.argmax(1), source_labels, k).t().to(self.confusion)
        predicted = torch.bincount(target_logits.argmax(1), minlength=k).to(joint.dtype)
        self.confusion.lerp_(joint / len(source_labels), 1 - self.momentum)
        self.target_predicted.lerp_(predicted / len(target_logits), 1 - self.momentum)
        return self.ratios()

    def ratios(self) -> Tensor:
        # In float32 even inside a bf16 training step: a pseudo-inverse in bf16 (where autocast
        # would put the matmul) is too coarse for ratios near 1.
        with torch.autocast(self.confusion.device.type, enabled=False):
            return class_ratios(self.confusion, self.target_predicted)
