"""The seams methods build on: features and taps, parameter groups, the training view, and
the evaluation pass that hands each evaluator only what it declared."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import choices_of, compose_config, method_overrides
from transferlab.errors import UserError
from transferlab.evaluation import Evaluator, evaluate
from transferlab.experiment import build
from transferlab.nn import Classifier
from transferlab.nn.backbones import dann_mnist


def test_feature_size_probe_leaves_batch_norm_statistics_alone():
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten())
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    net = Classifier(encoder, num_classes=10, in_channels=3, image_size=8)
    assert net.feature_dim == 4 * 6 * 6
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert encoder.training  # the probe restores the mode it found


def test_taps_return_named_activations_and_the_head_works_on_given_features():
    net = dann_mnist(in_channels=3, num_classes=10)
    x = torch.randn(4, 3, 28, 28)
    logits, taps = net.taps(x, ["features", "head.1", "logits"])
    assert taps["features"].shape == (4, 768) and taps["head.1"].shape == (4, 100)
    torch.testing.assert_close(taps["logits"], logits)
    torch.testing.assert_close(net.head(net.features(x)), net(x))
    assert (taps["head.1"] >= 0).all()  # the ReLU's output, not the linear layer's
    with pytest.raises(UserError, match="unknown layer 'fc9'; valid: features, logits, "):
        net.taps(x, ["fc9"])


def test_lr_multipliers_give_parameter_groups_their_own_rates():
    cfg = compose_config("data=tiny", "method=dann", "device=cpu",
                         "backbone.lr_mult={encoder: 0.1}",
                         "+method.lr_mult={adversarial.discriminator: 10.0}")
    _, method = build(cfg, torch.device("cpu"))
    optimizer = method.optimizer(method)
    rates = {}
    names = {id(p): n for n, p in method.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            rates[names[id(p)].split(".")[0] + "." + names[id(p)].split(".")[1]] = group["lr"]
    assert rates == {"network.encoder": pytest.approx(0.001), "network.head": 0.01,
                     "adversarial.discriminator": pytest.approx(0.1)}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(method.parameters()))


# Methods that train on target labels by design: the oracle and few-shot fine-tuning.
LABELLED = {"target_only", "finetune"}


@pytest.mark.parametrize("name", choices_of("method"))
def test_methods_see_target_labels_only_when_they_declare_it(name: str):
    cfg = compose_config("data=tiny", *method_overrides(name), "device=cpu")
    pair, method = build(cfg, torch.device("cpu"))
    labelled = method.uses_target_labels
    assert labelled == (name in LABELLED), "an adaptation method must not read target labels"
    view = pair.training_view(method.uses_target_labels)
    assert torch.equal(view.target.images, pair.target.train.images)
    if labelled:
        assert torch.equal(view.target.labels, pair.target.train.labels)
    else:
        assert (view.target.labels == -1).all()
    assert torch.equal(view.source.labels, pair.source.train.labels)


def test_validation_splits_are_held_out_of_the_train_splits():
    cfg = compose_config("data=tiny", "device=cpu")
    pair, _ = build(cfg, torch.device("cpu"))
    for train, val in ((pair.source.train, pair.source_val),
                       (pair.target.train, pair.target_val)):
        assert len(val) == 100
        rows = {bytes(img.flatten().tolist()) for img in train.images}
        assert not any(bytes(img.flatten().tolist()) in rows for img in val.images)


class Spy(Evaluator):
    """Records what it was handed."""

    def __init__(self, reads, labels, uses_features) -> None:
        self.reads, self.labels, self.uses_features = reads, labels, uses_features
        self.seen = {}

    def __call__(self, outputs):
        self.seen = dict(outputs)
        return 0.0


def test_evaluators_get_only_the_splits_labels_and_features_they_declare():
    cfg = compose_config("data=tiny", "device=cpu")
    pair, method = build(cfg, torch.device("cpu"))
    label_free = Spy(("target_val",), None, False)
    with_source = Spy(("source_val", "target_val"), "source", True)
    evaluate(method, pair, {"a": label_free, "b": with_source}, batch_size=64)
    assert set(label_free.seen) == {"target_val"}
    assert label_free.seen["target_val"].labels is None
    assert label_free.seen["target_val"].features is None
    assert label_free.seen["target_val"].logits.shape == (100, 10)
    assert torch.equal(with_source.seen["source_val"].labels, pair.source_val.labels)
    assert with_source.seen["target_val"].labels is None
    assert with_source.seen["target_val"].features.shape == (100, 768)
