"""MNIST-M, made the way the DANN paper made it (Ganin & Lempitsky, 2015, section 5).

Each MNIST digit is blended over a random 28x28 crop of one of the 200 BSDS500 train photos:
per pixel and channel, out = |patch - digit|. The result depends only on MNIST, the photos and
`seed`, so it is made once and cached under a fingerprint of those inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms.functional import pil_to_tensor

from transferlab.checkpoint import load_safely
from transferlab.data.domain import DataContext, Domain, Split
from transferlab.data.files import not_found
from transferlab.data.mnist import load_mnist
from transferlab.errors import DataError, UserError
from transferlab.files import write_atomic, write_json

RECIPE_VERSION = 1
PHOTOS = Path("BSR/BSDS500/data/images/train")
log = logging.getLogger(__name__)
BSDS500_URL = (
    "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz"
)


def load_mnistm(ctx: DataContext, seed: int = 0) -> Domain:
    mnist = load_mnist(ctx)
    photo_files = _photo_files(ctx)
    fingerprint = _fingerprint(mnist, photo_files, seed)
    cache = ctx.cache_dir / "MNIST-M" / f"mnistm-{fingerprint[:16]}.pt"
    tensors = _read_cache(cache, fingerprint)
    if tensors is None:
        photos = [_read_photo(p) for p in photo_files]
        generator = torch.Generator().manual_seed(seed)
        tensors = {
            "train": blend(mnist.train.images, photos, generator),
            "test": blend(mnist.test.images, photos, generator),
        }
        _write_cache(cache, fingerprint, tensors)
    return Domain("MNIST-M", Split(tensors["train"], mnist.train.labels),
                  Split(tensors["test"], mnist.test.labels))


def blend(digits: Tensor, photos: list[Tensor], generator: torch.Generator) -> Tensor:
    """|patch - digit| per channel, each patch a random crop of a random photo.

    digits: (N, 1, H, W) uint8; photos: (3, h, w) uint8 each; returns (N, 3, H, W) uint8.
    """
    n, _, height, width = digits.shape
    which = torch.randint(len(photos), (n,), generator=generator)
    u = torch.rand(n, 2, generator=generator)
    patches = torch.empty(n, 3, height, width, dtype=torch.uint8)
    rows, cols = torch.arange(height), torch.arange(width)
    for p, photo in enumerate(photos):
        index = (which == p).nonzero().squeeze(1)
        if len(index) == 0:
            continue
        top = (u[index, 0] * (photo.shape[1] - height + 1)).long()
        left = (u[index, 1] * (photo.shape[2] - width + 1)).long()
        r = (top[:, None] + rows)[:, :, None]
        c = (left[:, None] + cols)[:, None, :]
        patches[index] = photo[:, r, c].permute(1, 0, 2, 3)
    return (patches.short() - digits.short()).abs_().to(torch.uint8)


def _photo_files(ctx: DataContext) -> list[Path]:
    folder = ctx.root / PHOTOS
    files = sorted(folder.glob("*.jpg"))
    if not files and ctx.download:
        download_bsds500(ctx.root)
        files = sorted(folder.glob("*.jpg"))
    if not files:
        raise not_found(ctx, "BSDS500 photos", f"the 200 train .jpg files in {folder} (the "
                        "layout inside BSR_bsds500.tgz)", str(PHOTOS))
    return files


def _read_photo(path: Path) -> Tensor:
    try:
        with Image.open(path) as image:
            return pil_to_tensor(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot decode BSDS500 photo {path} ({e}); replace it with the file "
                        "from BSR_bsds500.tgz") from None


def _fingerprint(mnist: Domain, photo_files: list[Path], seed: int) -> str:
    h = hashlib.sha256(f"mnistm-v{RECIPE_VERSION}-seed{seed}".encode())
    for split in (mnist.train, mnist.test):
        h.update(split.images.numpy().tobytes())
    for p in photo_files:
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _content_hash(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].numpy().tobytes())
    return h.hexdigest()


def _read_cache(path: Path, fingerprint: str) -> dict[str, Tensor] | None:
    """The cached tensors, or None when absent or damaged (then the caller rebuilds them)."""
    if not path.exists():
        return None
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        tensors = load_safely(path)
        if meta["fingerprint"] == fingerprint and meta["content"] == _content_hash(tensors):
            return tensors
        problem = f"{path} does not match the hash in {meta_path}"
    except UserError as e:
        problem = str(e)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        problem = f"{meta_path} or its tensors unreadable: {type(e).__name__}: {e}"
    log.warning(f"MNIST-M cache damaged ({problem}); rebuilding it")
    return None


def _write_cache(path: Path, fingerprint: str, tensors: dict[str, Tensor]) -> None:
    try:
        write_atomic(path, lambda file: torch.save(tensors, file))
        meta = {"fingerprint": fingerprint, "content": _content_hash(tensors),
                "recipe_version": RECIPE_VERSION}
        write_json(path.with_suffix(".json"), meta, indent=1)
    except OSError as e:
        raise DataError(f"cannot write the MNIST-M cache to {path.parent} ({e.strerror}); set "
                        "data.cache_dir to a writable folder") from None


def download_bsds500(root: Path) -> None:
    """Fetch BSR_bsds500.tgz and extract only the train photos, refusing any member whose path
    would leave `root` (tarfile's `data` filter)."""
    from torchvision.datasets.utils import download_url

    try:
        download_url(BSDS500_URL, str(root), filename="BSR_bsds500.tgz")
    except Exception as e:
        raise DataError(f"could not download {BSDS500_URL} ({e}); download it by hand and "
                        f"extract it under {root}") from None
    extract_photos(root / "BSR_bsds500.tgz", root)
    verify_photos(root / PHOTOS)


def verify_photos(folder: Path) -> None:
    """Check the 200 photos against the SHA-256 sums of the official archive's train photos
    (shipped as bsds500_train.sha256), so a corrupted or substituted download is never used."""
    manifest = Path(__file__).with_name("bsds500_train.sha256").read_text().split("\n")
    for line in filter(None, manifest):
        digest, name = line.split()
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path} is missing from the downloaded BSDS500 archive; delete "
                            f"{folder} and download again")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise DataError(f"{path} does not match its known SHA-256 checksum; the download is "
                            f"corrupted: delete {folder} and download again")


def extract_photos(archive: Path, root: Path) -> None:
    prefix = str(PHOTOS) + "/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        try:
            tar.extractall(root, members=members, filter="data")
        except tarfile.FilterError as e:
            raise DataError(f"refusing to extract {archive}: {e}") from None
