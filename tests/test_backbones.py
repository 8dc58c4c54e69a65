"""ImageNet-style backbones: torchvision ResNets with the papers' bottleneck, pretrained weights
from torch.hub's cache (never downloaded in a test), the 0.1x trunk learning rate, timm."""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import torchvision

from helpers import compose_config, run_in_process
from transferlab.errors import UserError
from transferlab.experiment import build
from transferlab.nn.backbones import IMAGENET, resnet, timm_model

WEIGHTS_URL = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url


def cached_weights(torch_home: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A stand-in for torchvision's ResNet-18 file in torch.hub's cache: random weights of the
    right shapes, under the file name torchvision would download."""
    torch.manual_seed(seed)
    state = torchvision.models.resnet18().state_dict()
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / Path(urlparse(WEIGHTS_URL).path).name)
    return state


def test_resnet_has_the_bottleneck_imagenet_statistics_and_repeats_grey_input():
    net = resnet(in_channels=1, num_classes=5, arch="resnet18")
    assert net.in_channels == 3 and net.feature_dim == 256
    assert net.normalization == IMAGENET
    assert [type(m) for m in net.encoder.bottleneck] == [
        torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU]
    assert net.lr_mult == {}  # random weights: the trunk learns at the full rate
    net.eval()
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    assert resnet(3, 5, arch="resnet18", bottleneck_dim=None).feature_dim == 512


def test_pretrained_weights_come_from_the_hub_cache_and_the_trunk_learns_slower(
        tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = cached_weights(tmp_path)
    cfg = compose_config("data=tiny", "method=dann", "backbone=resnet18",
                         "backbone.weights=IMAGENET1K_V1")
    _, method = build(cfg, torch.device("cpu"))
    trunk = method.network.encoder.trunk.state_dict()
    assert all(torch.equal(trunk[k], v) for k, v in state.items() if not k.startswith("fc."))
    rates = {}
    names = {id(p): n for n, p in method.named_parameters()}
    for group in method.optimizer(method).param_groups:
        for p in group["params"]:
            rates[".".join(names[id(p)].split(".")[:3])] = group["lr"]
    assert rates["network.encoder.trunk"] == pytest.approx(0.001)
    assert rates["network.encoder.bottleneck"] == rates["network.head.0"] == 0.01


def test_unknown_weights_are_a_one_line_error_listing_the_valid_ones():
    with pytest.raises(UserError, match=r"backbone.weights=IMAGENET2K is not a weight of "
                                        r"resnet50; valid: DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2"):
        resnet(3, 5, arch="resnet50", weights="IMAGENET2K")
    with pytest.raises(UserError, match=r"backbone.arch=resnet200 is invalid"):
        resnet(3, 5, arch="resnet200")


def test_offline_without_the_cached_file_is_one_line(tmp_path: Path, monkeypatch):
    # A proxy that refuses every connection stands in for a machine without internet.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError) as error:
        resnet(3, 5, arch="resnet18", weights="IMAGENET1K_V1")
    message = str(error.value)
    assert "\n" not in message
    expected = tmp_path / "empty" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert f"{expected} is not there and downloading {WEIGHTS_URL} failed" in message
    assert "backbone.weights=null" in message


def test_a_resnet_trains_on_grey_digits(tmp_path: Path):
    record = run_in_process(tmp_path, "backbone=resnet18", "data.target.style=grey",
                            "trainer.steps=2", "trainer.batch_size=4", "trainer.num_threads=1",
                            "data.source_val_size=10", "data.target_val_size=10")
    assert record["status"] == "completed" and record["steps"] == 2


def test_timm_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(UserError, match=r"^backbone=timm needs the timm package: pip install "
                                        r"'transferlab\[timm\]'$"):
        timm_model(3, 5)


def test_a_timm_model_by_name_builds_with_the_same_bottleneck():
    pytest.importorskip("timm")
    net = timm_model(3, 5, name="resnet18")
    assert net.feature_dim == 256 and net.lr_mult == {}
    net.eval()
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(UserError, match=r"backbone.name=no_such_net is not a timm model"):
        timm_model(3, 5, name="no_such_net")
