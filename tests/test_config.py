from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers import GROUPS, choices_of, compose_config
from transferlab.config import CONFIG_DIR


def test_every_group_has_the_required_choices():
    assert {"mnist_mnistm", "tiny"} <= set(choices_of("data"))
    assert {"dann_mnist", "lenet"} <= set(choices_of("backbone"))
    assert {"source_only", "target_only", "dann", "adda", "finetune"} <= set(
        choices_of("method"))


@pytest.mark.parametrize("group,choice", [(g, c) for g in GROUPS for c in choices_of(g)])
def test_config_composes_and_resolves_for_every_choice(group, choice):
    cfg = compose_config(f"{group}={choice}")
    for key in ("seed", "device", "trainer.steps", "trainer.batch_size", "trainer.eval_every",
                "data.root", "data.download", "data.source_val_size", "data.target_val_size",
                "evaluation.validators"):
        assert OmegaConf.select(cfg, key) is not None, key
    assert cfg.data.source_val_size >= 0
    assert "_target_" in cfg.method and "_target_" in cfg.backbone
    # every interpolation resolves
    OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("group", GROUPS)
def test_no_group_interpolates_another_so_each_choice_composes_on_its_own(group):
    """Why composing each choice once suffices: a data, backbone or method YAML that read
    another of these groups' keys could fail only in combination, and would need the product
    of the groups tested (it took minutes)."""
    others = [g for g in GROUPS if g != group]
    for choice in choices_of(group):
        text = (Path(CONFIG_DIR) / group / f"{choice}.yaml").read_text()
        for other in others:
            assert "${" + other + "." not in text, f"{group}/{choice}.yaml reads {other}.*"


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
