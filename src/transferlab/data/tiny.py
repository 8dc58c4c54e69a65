"""A tiny synthetic digit-like pair, generated in memory: for tests, CI and smoke runs.

Ten fixed random stroke patterns are the classes; each sample is its class pattern, shifted
and noisy. The source domain is grey strokes on black; the target domain blends the same
strokes over a random colour per sample, |colour - stroke|, a cheap imitation of MNIST-M.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from transferlab.data.domain import DataContext, Domain, Split

SIZE = 28


def load_tiny(ctx: DataContext, style: str = "grey", n_train: int = 600, n_test: int = 200,
              seed: int = 0, num_classes: int = 10) -> Domain:
    """`ctx` is unused: the data is generated, never read or downloaded."""
    del ctx
    templates = _templates(num_classes)
    g = torch.Generator().manual_seed(seed + (0 if style == "grey" else 1000))
    train, test = (_sample(templates, n, style, g) for n in (n_train, n_test))
    return Domain(f"tiny-{style}", train, test, num_classes=len(templates))


def _templates(num_classes: int = 10) -> Tensor:
    g = torch.Generator().manual_seed(1234)
    coarse = (torch.rand(num_classes, 1, 5, 5, generator=g) > 0.55).float()
    x = F.interpolate(coarse, size=(SIZE - 8, SIZE - 8), mode="bilinear", align_corners=False)
    return F.pad(x, (4, 4, 4, 4)).squeeze(1)  # (C, 28, 28) in [0, 1]


def _sample(templates: Tensor, n: int, style: str, g: torch.Generator) -> Split:
    labels = torch.randint(len(templates), (n,), generator=g)
    shifts = torch.randint(-2, 3, (n, 2), generator=g)
    x = torch.stack([templates[y].roll((int(dy), int(dx)), dims=(0, 1))
                     for y, (dy, dx) in zip(labels, shifts, strict=True)])
    x = (x + 0.15 * torch.randn(x.shape, generator=g)).clamp(0, 1).unsqueeze(1)
    if style == "colour":
        colour = torch.rand(n, 3, 1, 1, generator=g)
        x = (colour - x).abs()
    elif style != "grey":
        raise ValueError(f"unknown tiny style {style!r}; valid: 'grey', 'colour'")
    return Split((x * 255).round().to(torch.uint8), labels)
