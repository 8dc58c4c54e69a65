"""USPS and SVHN loaders and their pairs, on tiny files in the exact formats torchvision reads."""

from __future__ import annotations

import bz2
import hashlib
import json
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import scipy.io
import torch
from hydra.utils import instantiate
from torchvision.datasets import SVHN

from conftest import make_mnist
from helpers import compose_config
from transferlab.data import DataContext
from transferlab.data.svhn import load_svhn
from transferlab.data.usps import load_usps
from transferlab.errors import DataError

# Exactly representable features and the uint8 values torchvision makes of them (truncating).
LEVELS = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
GREYS = torch.tensor([0, 63, 127, 191, 255], dtype=torch.uint8)


def make_usps(root: Path, n_train: int = 40, n_test: int = 20) -> dict[str, torch.Tensor]:
    """usps.bz2 / usps.t.bz2 as libsvm ships them: `label 1:v ... 256:v`, label 1..10 for digit
    0..9, v in [-1, 1]. Returns the level indices per split, to derive the expected pixels."""
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    levels = {}
    for name, n in (("usps.bz2", n_train), ("usps.t.bz2", n_test)):
        index = torch.randint(len(LEVELS), (n, 16, 16), generator=g)
        lines = [f"{i % 10 + 1} " + " ".join(f"{j + 1}:{v:g}" for j, v in
                                             enumerate(LEVELS[img.flatten()].tolist()))
                 for i, img in enumerate(index)]
        (root / name).write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
        levels[name] = index
    return levels


def make_svhn(root: Path, monkeypatch: pytest.MonkeyPatch, n_train: int = 30,
              n_test: int = 20) -> dict[str, np.ndarray]:
    """train_32x32.mat / test_32x32.mat as SVHN ships them: X (32, 32, 3, N) uint8, y (N, 1)
    with 10 for digit 0. torchvision checks each file's MD5, so the tiny files' checksums
    stand in for the published ones (restored by monkeypatch after the test)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        digits = np.arange(n) % 10
        y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
        url, name, _ = SVHN.split_list[split]
        scipy.io.savemat(root / name, {"X": x, "y": y})
        md5 = hashlib.md5((root / name).read_bytes()).hexdigest()
        monkeypatch.setitem(SVHN.split_list, split, [url, name, md5])
        arrays[split] = x
    return arrays


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    make_mnist(root)
    make_usps(root)
    make_svhn(root, monkeypatch)
    return root


def ctx(root: Path, download: bool = False) -> DataContext:
    return DataContext(root, download, root / "cache")


def test_load_usps_gives_uint8_grey_with_torchvisions_pixel_mapping(tmp_path: Path):
    levels = make_usps(tmp_path)
    usps = load_usps(ctx(tmp_path), layout="stretch")  # the raw frame; see test_usps_layout.py
    assert usps.name == "USPS"
    for split, name in ((usps.train, "usps.bz2"), (usps.test, "usps.t.bz2")):
        n = len(levels[name])
        assert split.images.dtype == torch.uint8 and split.images.shape == (n, 1, 16, 16)
        assert torch.equal(split.images[:, 0], GREYS[levels[name]])
        assert torch.equal(split.labels, torch.arange(n) % 10)


def test_load_svhn_gives_uint8_rgb_and_maps_label_10_to_0(tmp_path: Path, monkeypatch):
    arrays = make_svhn(tmp_path, monkeypatch)
    svhn = load_svhn(ctx(tmp_path))
    for split, x in ((svhn.train, arrays["train"]), (svhn.test, arrays["test"])):
        n = x.shape[-1]
        assert split.images.dtype == torch.uint8 and split.images.shape == (n, 3, 32, 32)
        assert split.images.is_contiguous()
        assert torch.equal(split.images, torch.from_numpy(x).permute(3, 2, 0, 1))
        assert torch.equal(split.labels, torch.arange(n) % 10)


@pytest.mark.parametrize("pair,size,source,target", [
    ("mnist_usps", 28, "MNIST", "USPS"),
    ("usps_mnist", 28, "USPS", "MNIST"),
    ("svhn_mnist", 32, "SVHN", "MNIST"),
])
def test_pair_from_config_has_one_image_size(root: Path, pair, size, source, target):
    cfg = compose_config(f"data={pair}", f"data.root={root}", "data.source_val_size=10",
                         "data.target_val_size=10")
    built = instantiate(cfg.data)
    assert (built.source.name, built.target.name) == (source, target)
    splits = (built.source.train, built.source.test, built.source_val,
              built.target.train, built.target.test, built.target_val)
    for split in splits:
        assert split.images.dtype == torch.uint8 and split.images.shape[-2:] == (size, size)
    assert len(built.source_val) == 10
    assert built.channels == (3 if pair == "svhn_mnist" else 1)


def test_usps_source_keeps_a_valid_validation_size():
    cfg = compose_config("data=usps_mnist")
    assert 0 < cfg.data.source_val_size < 7291  # USPS train size


@pytest.mark.parametrize("loader,names", [
    (load_usps, ("usps.bz2", "usps.t.bz2")),
    (load_svhn, ("train_32x32.mat", "test_32x32.mat")),
])
def test_missing_files_error_names_them_and_the_fix(tmp_path: Path, loader, names):
    with pytest.raises(DataError) as err:
        loader(ctx(tmp_path))
    message = str(err.value)
    assert "\n" not in message
    assert all(str(tmp_path / n) in message for n in names)
    assert "data.root" in message and "data.download=true" in message


def test_failed_usps_download_says_so(tmp_path: Path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr("torchvision.datasets.usps.download_url", offline)
    with pytest.raises(DataError, match=r"download failed \(<urlopen error no network>\)"):
        load_usps(ctx(tmp_path, download=True))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [
    _truncate,
    lambda p: p.write_bytes(b"not bzip2 at all"),
    lambda p: p.write_bytes(bz2.compress(b"0 " + b" ".join(b"%d:0" % j for j in range(1, 257)))),
    lambda p: p.write_bytes(bz2.compress(b"1 1:0 2:0\n")),
    lambda p: p.write_bytes(b""),
], ids=["truncated", "not-bz2", "label-0", "short-row", "empty"])
def test_damaged_usps_file_is_named(tmp_path: Path, damage):
    make_usps(tmp_path)
    path = tmp_path / "usps.t.bz2"
    damage(path)
    with pytest.raises(DataError, match=f"cannot read {path}") as err:
        load_usps(ctx(tmp_path))
    assert "\n" not in str(err.value)


def test_truncated_svhn_file_is_named(tmp_path: Path, monkeypatch):
    make_svhn(tmp_path, monkeypatch)
    path = tmp_path / "test_32x32.mat"
    _truncate(path)
    with pytest.raises(DataError, match=f"cannot read {path}"):
        load_svhn(ctx(tmp_path))


def test_usps_to_mnist_runs_end_to_end(root: Path, tmp_path: Path):
    from transferlab.experiment import run

    cfg = compose_config("data=usps_mnist", f"data.root={root}", "data.source_val_size=10",
                         "data.target_val_size=5",
                         "method=dann", "device=cpu", "trainer.steps=2", "trainer.eval_every=2",
                         "trainer.batch_size=8", "trainer.progress_bar=false")
    out = tmp_path / "run"
    out.mkdir()
    run(cfg, out, {"data": "usps_mnist", "backbone": "dann_mnist", "method": "dann"})
    record = json.loads((out / "results.json").read_text())
    assert record["status"] == "completed" and record["steps"] == 2
    assert record["domains"] == {"source": "USPS", "target": "MNIST"}
