"""MNIST through torchvision's own `MNIST` class, in torchvision's layout `<root>/MNIST/raw`."""

from __future__ import annotations

from torchvision.datasets import MNIST
from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

from transferlab.data.domain import DataContext, Domain, Split
from transferlab.data.files import not_found, unreadable
from transferlab.errors import DataError


def load_mnist(ctx: DataContext) -> Domain:
    raw = ctx.root / "MNIST" / "raw"
    try:
        train, test = (MNIST(str(ctx.root), train=t, download=ctx.download) for t in (True, False))
    except RuntimeError as e:
        if "not found" in str(e):
            raise not_found(ctx, "MNIST", f"{raw}/train-images-idx3-ubyte (and the other three "
                            "IDX files)", "MNIST/raw") from None
        if "download" in str(e).lower():
            raise DataError(f"could not download MNIST into {raw} ({str(e).splitlines()[0]}); "
                            "copy the IDX files there by hand") from None
        raise _unreadable(raw) from e
    except (AssertionError, ValueError) as e:
        raise _unreadable(raw) from e
    return Domain("MNIST", _split(train), _split(test))


def _split(ds: MNIST) -> Split:
    return Split(ds.data.unsqueeze(1).contiguous(), ds.targets.long())


def _unreadable(raw) -> DataError:
    """Find which IDX file is broken, so the message can name it."""
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    for name in names:
        try:
            read_sn3_pascalvincent_tensor(str(raw / name), strict=True)
        except Exception:
            return unreadable(raw / name, "MNIST", "truncated or not an IDX file")
    return DataError(f"MNIST files in {raw} do not match each other (image and label counts "
                     "differ); replace them with the original MNIST files")
