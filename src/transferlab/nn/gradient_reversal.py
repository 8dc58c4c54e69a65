"""The gradient-reversal layer of DANN (Ganin & Lempitsky, 2015): identity in the forward pass,
gradient multiplied by -λ in the backward pass, so that the layers below it learn to *increase*
the loss of whatever sits above it (the domain discriminator)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, coeff: float) -> Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad.neg() * ctx.coeff, None


def grad_reverse(x: Tensor, coeff: float = 1.0) -> Tensor:
    return _Reverse.apply(x, coeff)


class GradientReversal(nn.Module):
    """`GradientReversal()(x, coeff)`: λ is passed per call because DANN anneals it."""

    def forward(self, x: Tensor, coeff: float = 1.0) -> Tensor:
        return grad_reverse(x, coeff)
