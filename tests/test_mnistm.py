import logging
import os
from pathlib import Path

import pytest
import torch

from transferlab.data import DataContext, mnistm
from transferlab.data.mnistm import blend, load_mnistm
from transferlab.errors import DataError


def _digits(n: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(1))


def test_blend_is_abs_difference_of_patch_and_digit():
    # A photo exactly digit-sized leaves one possible crop: the whole photo.
    photo = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    digits = _digits()
    out = blend(digits, [photo], torch.Generator().manual_seed(0))
    expected = (photo.int()[None] - digits.int()).abs().to(torch.uint8)
    assert out.shape == (8, 3, 28, 28) and out.dtype == torch.uint8
    assert torch.equal(out, expected)


def test_blend_crops_come_from_the_photos():
    photos = [torch.randint(0, 256, (3, 33, 31), dtype=torch.uint8) for _ in range(2)]
    digits = torch.zeros(6, 1, 28, 28, dtype=torch.uint8)  # |patch - 0| = the patch itself
    out = blend(digits, photos, torch.Generator().manual_seed(0))
    for img in out:
        crops = [p[:, y : y + 28, x : x + 28] for p in photos
                 for y in range(p.shape[1] - 27) for x in range(p.shape[2] - 27)]
        assert any(torch.equal(img, c) for c in crops)


def test_blend_is_deterministic_per_seed():
    photos = [torch.randint(0, 256, (3, 50, 40), dtype=torch.uint8) for _ in range(3)]
    digits = _digits(32)
    a, b, c = (blend(digits, photos, torch.Generator().manual_seed(s)) for s in (0, 0, 1))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_load_mnistm_builds_then_reuses_cache(data_root: Path, tmp_path: Path, monkeypatch):
    ctx = DataContext(data_root, False, tmp_path / "cache")
    first = load_mnistm(ctx)
    assert first.train.images.shape == (60, 3, 28, 28)
    assert first.test.images.shape == (20, 3, 28, 28)
    assert first.train.images.dtype == torch.uint8
    assert torch.equal(first.train.labels, torch.arange(60) % 10)
    assert len(list((tmp_path / "cache" / "MNIST-M").glob("*.pt"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("blend called although the cache is valid")

    monkeypatch.setattr(mnistm, "blend", fail)
    second = load_mnistm(ctx)
    assert torch.equal(first.train.images, second.train.images)


def test_corrupted_cache_is_detected_and_rebuilt(data_root: Path, tmp_path: Path):
    ctx = DataContext(data_root, False, tmp_path / "cache")
    good = load_mnistm(ctx)
    (cache,) = (tmp_path / "cache" / "MNIST-M").glob("*.pt")
    tensors = torch.load(cache, weights_only=True)
    tensors["train"][0, 0, 0, 0] ^= 0xFF  # a flipped byte that still loads fine
    torch.save(tensors, cache)
    rebuilt = load_mnistm(ctx)
    assert torch.equal(good.train.images, rebuilt.train.images)


def test_different_recipe_seed_gives_different_mnistm(data_root: Path, tmp_path: Path):
    ctx = DataContext(data_root, False, tmp_path / "cache")
    assert not torch.equal(load_mnistm(ctx, seed=0).train.images,
                           load_mnistm(ctx, seed=1).train.images)


def test_missing_photos_error_names_the_folder(tmp_path: Path):
    from conftest import make_mnist

    make_mnist(tmp_path)
    with pytest.raises(DataError, match=r"BSDS500/data/images/train"):
        load_mnistm(DataContext(tmp_path, False, tmp_path / "cache"))


@pytest.mark.parametrize("damage", ["random-bytes", "empty", "sidecar"])
def test_a_damaged_cache_file_is_named_and_rebuilt(data_root: Path, tmp_path: Path, caplog,
                                                   damage):
    ctx = DataContext(data_root, False, tmp_path / "cache")
    good = load_mnistm(ctx)
    (cache,) = (tmp_path / "cache" / "MNIST-M").glob("*.pt")
    damaged = cache.with_suffix(".json") if damage == "sidecar" else cache
    damaged.write_bytes(b"" if damage == "empty" else os.urandom(4096))
    with caplog.at_level(logging.WARNING, logger="transferlab.data.mnistm"):
        rebuilt = load_mnistm(ctx)
    assert torch.equal(good.train.images, rebuilt.train.images)
    assert f"MNIST-M cache damaged ({damaged}" in caplog.text and "rebuilding it" in caplog.text
    assert "weights_only" not in caplog.text
    caplog.clear()
    load_mnistm(ctx)  # the rebuilt cache is whole again
    assert "damaged" not in caplog.text
