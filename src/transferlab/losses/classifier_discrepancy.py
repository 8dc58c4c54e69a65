"""The classifier discrepancy of MCD (Saito et al., CVPR 2018, eq. 1): how much two
classifiers on the same features disagree about a batch."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def classifier_discrepancy(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """d(p1, p2) = mean over samples and classes of |softmax(a) − softmax(b)|: 0 when the two
    agree, 2 / num_classes when both are one-hot on different classes."""
    return (F.softmax(logits_a, dim=1) - F.softmax(logits_b, dim=1)).abs().mean()
