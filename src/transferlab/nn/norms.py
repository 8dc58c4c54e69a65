"""Batch-norm layers, found and handled in one place (VADA's statistics, AdaBN, TENT)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batch_norm_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, BATCH_NORMS)]


@contextmanager
def running_statistics_kept(module: nn.Module) -> Iterator[None]:
    """In the block, batch-norm layers in training mode still normalise by their batch but
    leave their running statistics as they are (momentum 0: running = 1 · running)."""
    layers = batch_norm_layers(module)
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
