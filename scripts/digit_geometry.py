"""Where the ink is in MNIST and USPS digits, from the train images alone (no labels): the
evidence behind the USPS loader's default `layout: mnist` (README, Data).

    python scripts/digit_geometry.py [DATA_ROOT]     # default: $TRANSFERLAB_DATA or ./data
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from transferlab.data.domain import DataContext
from transferlab.data.mnist import load_mnist
from transferlab.data.usps import load_usps

INK = 0.5  # a pixel is ink above half the maximum intensity


def extent(mask: Tensor) -> Tensor:
    """Per image, the number of rows (or columns) from the first to the last one with ink."""
    index = torch.arange(mask.shape[1]).expand_as(mask)
    first = torch.where(mask, index, mask.shape[1]).min(1).values
    last = torch.where(mask, index, -1).max(1).values
    return (last - first + 1).float()


def describe(name: str, images: Tensor) -> str:
    x = images.float().squeeze(1) / 255
    _, side, _ = x.shape
    ink = x > INK
    height, width = extent(ink.any(2)), extent(ink.any(1))
    border = ink[:, 0].any(1) | ink[:, -1].any(1) | ink[:, :, 0].any(1) | ink[:, :, -1].any(1)

    def spread(t: Tensor) -> str:
        return f"{t.mean():.1f} (p5 {t.quantile(.05):.0f}, p95 {t.quantile(.95):.0f})"

    return (f"{name:<30}frame {side}x{side}  ink height {spread(height)}  width "
            f"{spread(width)}  height/frame {(height / side).mean():.2f}  ink fraction "
            f"{ink.float().mean():.3f}  touches the border {border.float().mean():.2f}")


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TRANSFERLAB_DATA", "data"))
    ctx = DataContext(root, download=False, cache_dir=Path(tempfile.mkdtemp()))
    print(describe("MNIST train", load_mnist(ctx).train.images))
    stretch = load_usps(ctx, layout="stretch").train
    print(describe("USPS train, raw 16x16", stretch.images))
    print(describe("USPS train, stretch to 28x28", stretch.resized(28).images))
    print(describe("USPS train, layout=mnist", load_usps(ctx, layout="mnist").train.images))


if __name__ == "__main__":
    main()
