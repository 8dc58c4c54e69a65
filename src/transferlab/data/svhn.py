"""SVHN through torchvision's own `SVHN` class: `<root>/train_32x32.mat` (73257 digits) and
`<root>/test_32x32.mat` (26032), 32x32 RGB. torchvision maps SVHN's label 10 to digit 0, and
checks each file's MD5, so a damaged file is caught before it is parsed."""

from __future__ import annotations

import torch
from torchvision.datasets import SVHN

from transferlab.data.domain import DataContext, Domain, Split
from transferlab.data.files import load_failed

NAMES = (SVHN.split_list["train"][1], SVHN.split_list["test"][1])


def load_svhn(ctx: DataContext) -> Domain:
    return Domain("SVHN", _split(ctx, "train"), _split(ctx, "test"))


def _split(ctx: DataContext, split: str) -> Split:
    path = ctx.root / SVHN.split_list[split][1]
    try:
        ds = SVHN(str(ctx.root), split=split, download=ctx.download)
    except (OSError, ValueError, RuntimeError) as e:
        raise load_failed(ctx, e, "SVHN", path, NAMES,
                          "truncated or corrupted (its MD5 checksum does not match)") from e
    # ds.data is a transposed (N, C, H, W) view of the .mat's (H, W, C, N) array.
    return Split(torch.from_numpy(ds.data).contiguous(), torch.from_numpy(ds.labels))
