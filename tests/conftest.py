"""Shared fixtures: tiny raw data files in torchvision's layouts, and ways to run the app."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def write_idx(path: Path, tensor: torch.Tensor) -> None:
    """An IDX file as MNIST ships them: magic (0, 0, type 0x08, ndim), big-endian dims, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, tensor.dim())
    header += b"".join(struct.pack(">I", d) for d in tensor.shape)
    path.write_bytes(header + tensor.to(torch.uint8).numpy().tobytes())


def make_mnist(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    raw = root / "MNIST" / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = (torch.rand(n, 28, 28, generator=g) > 0.7).to(torch.uint8) * 255
        labels = torch.arange(n) % 10
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)


def make_photos(root: Path, n: int = 3, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    folder = root / "BSR" / "BSDS500" / "data" / "images" / "train"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        photo = torch.randint(0, 256, (3, 40 + 4 * i, 36), generator=g, dtype=torch.uint8)
        Image.fromarray(photo.permute(1, 2, 0).numpy()).save(folder / f"{100 + i}.jpg",
                                                              quality=95)
    return folder


@pytest.fixture(autouse=True, scope="session")
def stage_cache(tmp_path_factory) -> Path:
    """Runs made by tests store and reuse stages in a folder of this session, never in the
    user's cache (runs in subprocesses inherit the variable)."""
    folder = tmp_path_factory.mktemp("stages")
    os.environ["TRANSFERLAB_STAGE_CACHE"] = str(folder)
    return folder


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A data root with a tiny MNIST and three BSDS500-like photos."""
    root = tmp_path / "data"
    make_mnist(root)
    make_photos(root)
    return root


def run_cli(*overrides: str, cwd: Path, env: dict | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    """`python -m transferlab ...` in a subprocess, as a user would run it."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    full_env.pop("TRANSFERLAB_DATA", None)
    result = subprocess.run([sys.executable, "-m", "transferlab", *overrides], cwd=cwd,
                            env=full_env, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


TINY_FAST = ("data=tiny", "device=cpu", "trainer.progress_bar=false", "trainer.log_every=1")


def make_image_folder(folder: Path, classes: tuple[str, ...] = ("cat", "dog", "owl"),
                      per_class: int = 6, size: tuple[int, int] = (20, 24), seed: int = 0,
                      split: bool = False, grey: bool = False, noise: float = 40.0) -> Path:
    """A domain folder in ImageFolder layout: `per_class` images of each class, alternately PNG
    and JPEG, each class a different mean colour plus uniform `noise` (0: flat images, small
    files at any size); with `split`, under train/ and test/ (a third of each class in
    test)."""
    from torchvision.io import write_jpeg, write_png

    g = torch.Generator().manual_seed(seed)
    for c, name in enumerate(classes):
        for i in range(per_class):
            part = ("test" if i % 3 == 2 else "train") if split else ""
            target = folder / part / name
            target.mkdir(parents=True, exist_ok=True)
            base = torch.tensor([60.0 * c, 200.0 - 50 * c, 30.0 * i % 255]).view(3, 1, 1)
            image = (base + noise * torch.rand(3, *size, generator=g)).clamp(0, 255).to(
                torch.uint8)
            if grey:
                image = image[:1]
            if i % 2:
                write_jpeg(image, str(target / f"{i:03d}.jpg"), quality=95)
            else:
                write_png(image, str(target / f"{i:03d}.png"))
    return folder
