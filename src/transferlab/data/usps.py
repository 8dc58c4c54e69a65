"""USPS through torchvision's own `USPS` class: `<root>/usps.bz2` (train, 7291 digits) and
`<root>/usps.t.bz2` (test, 2007), bz2-compressed libsvm text, 16x16 grey."""

from __future__ import annotations

import torch
from torchvision.datasets import USPS

from transferlab.data.domain import DataContext, Domain, Split
from transferlab.data.files import load_failed

NAMES = (USPS.split_list["train"][1], USPS.split_list["test"][1])


def load_usps(ctx: DataContext) -> Domain:
    return Domain("USPS", _split(ctx, "train"), _split(ctx, "test"))


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
