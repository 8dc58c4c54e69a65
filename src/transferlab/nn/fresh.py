"""A module's architecture with new weights."""

from __future__ import annotations

import copy

from torch import nn


def fresh_copy(module: nn.Module) -> nn.Module:
    """The same architecture with newly initialised parameters (each layer's own
    `reset_parameters`): a second classifier that starts equal to the first would get equal
    gradients and never disagree with it (MCD), nor measure a disparity (MDD)."""
    clone = copy.deepcopy(module)
    for layer in clone.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    return clone
