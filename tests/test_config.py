import itertools

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers import choices_of, compose_config


def test_every_group_has_the_required_choices():
    assert {"mnist_mnistm", "tiny"} <= set(choices_of("data"))
    assert {"dann_mnist", "lenet"} <= set(choices_of("backbone"))
    assert {"source_only", "target_only", "dann", "adda", "finetune"} <= set(
        choices_of("method"))


@pytest.mark.parametrize("data,backbone,method", list(itertools.product(
    choices_of("data"), choices_of("backbone"), choices_of("method"))))
def test_config_composes_and_resolves_for_every_choice(data, backbone, method):
    cfg = compose_config(f"data={data}", f"backbone={backbone}", f"method={method}")
    for key in ("seed", "device", "trainer.steps", "trainer.batch_size", "trainer.eval_every",
                "data.root", "data.download", "data.source_val_size", "data.target_val_size",
                "evaluation.validators"):
        assert OmegaConf.select(cfg, key) is not None, key
    assert cfg.data.source_val_size >= 0
    assert "_target_" in cfg.method and "_target_" in cfg.backbone
    # every interpolation resolves
    OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("backbone", choices_of("backbone"))
def test_every_backbone_builds_for_the_tiny_pair(backbone):
    if backbone == "timm":
        pytest.importorskip("timm")  # an optional extra
    cfg = compose_config("data=tiny", f"backbone={backbone}")
    net = instantiate(cfg.backbone, in_channels=3, num_classes=10, image_size=28)
    assert net(torch.zeros(2, 3, 28, 28)).shape == (2, 10)


def test_data_root_defaults_to_env_then_dot_data(monkeypatch):
    monkeypatch.delenv("TRANSFERLAB_DATA", raising=False)
    assert compose_config().data.root == "./data"
    monkeypatch.setenv("TRANSFERLAB_DATA", "/somewhere")
    assert compose_config().data.root == "/somewhere"


@pytest.mark.parametrize("experiment", choices_of("experiment"))
def test_every_experiment_composes(experiment):
    cfg = compose_config(f"experiment={experiment}", "method=adda")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["data"]["_target_"] == "transferlab.data.build_pair"
    assert resolved["method"]["pretrain_steps"] == resolved["trainer"]["steps"]
