"""USPS's digit geometry: by default the loader puts the frame-filling 16x16 digit into MNIST's
20x20 box centred in a 28x28 frame (issue 15); `layout=stretch` keeps the raw frame."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from conftest import make_mnist
from helpers import compose_config
from test_usps_svhn import GREYS, ctx, make_usps
from transferlab.data.domain import Split
from transferlab.data.usps import load_usps
from transferlab.errors import UserError


def test_default_layout_is_mnists_box_in_a_28x28_frame(tmp_path: Path):
    levels = make_usps(tmp_path)
    usps = load_usps(ctx(tmp_path))
    for split, name in ((usps.train, "usps.bz2"), (usps.test, "usps.t.bz2")):
        raw = Split(GREYS[levels[name]].unsqueeze(1), split.labels)
        assert split.images.dtype == torch.uint8 and split.images.shape[-2:] == (28, 28)
        margin = torch.ones(28, 28, dtype=torch.bool)
        margin[4:24, 4:24] = False
        assert split.images[..., margin].eq(0).all()  # MNIST's empty 4-pixel margin
        assert torch.equal(split.images[..., 4:24, 4:24], raw.resized(20).images)
        assert torch.equal(split.labels, torch.arange(len(raw)) % 10)


def test_stretch_layout_keeps_the_raw_frame(tmp_path: Path):
    levels = make_usps(tmp_path)
    usps = load_usps(ctx(tmp_path), layout="stretch")
    assert torch.equal(usps.train.images[:, 0], GREYS[levels["usps.bz2"]])


def test_unknown_layout_is_refused(tmp_path: Path):
    make_usps(tmp_path)
    with pytest.raises(UserError, match="valid: mnist, stretch"):
        load_usps(ctx(tmp_path), layout="fill")


@pytest.mark.parametrize("pair,role", [("mnist_usps", "target"), ("usps_mnist", "source")])
def test_usps_pairs_use_mnists_geometry_by_default(tmp_path: Path, pair, role):
    root = tmp_path / "data"
    make_mnist(root)
    make_usps(root)
    built = instantiate(compose_config(f"data={pair}", f"data.root={root}",
                                       "data.source_val_size=10", "data.target_val_size=10").data)
    usps = getattr(built, role)
    assert usps.name == "USPS"
    for split in (usps.train, usps.test):
        assert split.images.shape[-2:] == (28, 28)
        assert split.images[..., :4, :].eq(0).all() and split.images[..., :, -4:].eq(0).all()
        assert split.images[..., 4:24, 4:24].gt(0).any()


@pytest.mark.parametrize("exp,role", [("mnist_usps", "target"), ("usps_mnist", "source")])
def test_paper_settings_feed_usps_as_the_adda_authors_code_did(exp, role):
    cfg = compose_config(f"experiment={exp}")
    assert cfg.data[role].layout == "stretch"
    assert cfg.backbone._target_.endswith(".lenet")
