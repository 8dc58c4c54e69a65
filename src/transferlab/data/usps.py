"""USPS through torchvision's own `USPS` class: `<root>/usps.bz2` (train, 7291 digits) and
`<root>/usps.t.bz2` (test, 2007), bz2-compressed libsvm text, 16x16 grey.

USPS digits were size-normalised to *fill* their 16x16 frame; MNIST digits were normalised to a
20x20 box centred in a 28x28 frame. `layout` decides which convention the loader returns:

- `"mnist"`: the 16x16 digit resized to 20x20 and centred in a 28x28 frame with a 4-pixel empty
  margin, as MNIST's digits are. Digit height, ink fraction and margins then match MNIST's
  (measured on the images alone, no labels: see `docs/RESULTS.md`).
- `"stretch"`: the 16x16 frame as it is; the pair resizes it to its `image_size` (to 28x28 the
  digit is then 40% taller than an MNIST digit and touches every border). This is what
  torchvision and most re-implementations feed, and what the ADDA paper's code did (at 32x32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.datasets import USPS

from transferlab.data.domain import DataContext, Domain, Split
from transferlab.data.files import load_failed
from transferlab.errors import UserError

NAMES = (USPS.split_list["train"][1], USPS.split_list["test"][1])
LAYOUTS = ("mnist", "stretch")
MNIST_FRAME, MNIST_BOX = 28, 20  # MNIST: digits normalised to a 20x20 box in a 28x28 frame


def load_usps(ctx: DataContext, layout: str = "mnist") -> Domain:
    if layout not in LAYOUTS:
        raise UserError(f"data.*.layout={layout!r} is not a USPS layout; valid: "
                        f"{', '.join(LAYOUTS)}")
    train, test = _split(ctx, "train"), _split(ctx, "test")
    if layout == "mnist":
        train, test = mnist_layout(train), mnist_layout(test)
    return Domain("USPS", train, test)


def mnist_layout(split: Split) -> Split:
    """Frame-filling digits → MNIST's geometry: resize to a 20x20 box, pad to 28x28."""
    box = split.resized(MNIST_BOX).images
    pad = (MNIST_FRAME - MNIST_BOX) // 2
    return Split(F.pad(box, (pad, pad, pad, pad)), split.labels)


def _split(ctx: DataContext, split: str) -> Split:
    path = ctx.root / USPS.split_list[split][1]
    try:
        ds = USPS(str(ctx.root), train=split == "train", download=ctx.download)
        labels = torch.tensor(ds.targets, dtype=torch.long)
        # The file is not checksummed unless downloaded, so a damaged one can still parse:
        # refuse an empty file or labels outside 1..10 here rather than deep in training.
        if len(labels) == 0 or labels.min() < 0 or labels.max() > 9:
            raise ValueError("no samples, or labels outside 1..10")
    except (OSError, EOFError, ValueError, IndexError, RuntimeError) as e:
        raise load_failed(ctx, e, "USPS", path, NAMES,
                          "truncated or not a bz2-compressed libsvm file") from e
    # torchvision has already mapped the [-1, 1] features to uint8 0..255 (truncating).
    return Split(torch.from_numpy(ds.data).unsqueeze(1).contiguous(), labels)
