"""SHOT: the adaptation stage sees no source data, keeps the source classifier, and follows
its loss; the pseudo-labels follow the paper's centroid rule and survive a resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import compose_config
from steps import batches
from transferlab.experiment import build
from transferlab.losses.entropy import information_maximization
from transferlab.methods.shot import SHOT, centroid_pseudo_labels


def shot(*overrides: str) -> tuple:
    torch.manual_seed(0)
    pair, method = build(compose_config("data=tiny", "device=cpu", "method=shot", *overrides),
                         torch.device("cpu"))
    return pair, method, method.stages(pair.training_view(method.uses_target_labels))


def test_the_adaptation_stage_is_built_from_the_target_alone_and_reads_no_source():
    pair, _, (source, adapt) = shot()
    assert set(source.data) == {"labelled"} and source.data["labelled"] is not None
    assert set(adapt.data) == {"target"}
    assert adapt.data["target"].store is pair.target.train.store  # target images only
    assert not any(s.store is pair.source.train.store for s in adapt.data.values())
    # its update runs on a batch that holds no source at all
    batch = {"target": batches(pair, n=8)["target"]}
    batch = {k: (x.float(), y.clamp_min(0)) for k, (x, y) in batch.items()}
    adapt.update(batch, 0.0)
    # and the stage is made from a target split, nothing else: the source is not an argument
    assert list(SHOT.adaptation_stage.__annotations__) == ["target", "return"]


def test_adaptation_trains_encoder_and_bottleneck_and_keeps_the_classifier():
    pair, method, (_, adapt) = shot()
    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    adapt.on_start()  # the first pseudo-labels, from the source model
    labels = adapt.data["target"].labels
    assert labels.min() >= 0 and labels.max() < 10 and len(labels.unique()) > 1
    x = batches(pair, n=16)["target"][0].float()
    for step in range(3):
        adapt.update({"target": (x, adapt.data["target"].labels[:16])}, step / 10)
    changed = {n for n, p in method.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("network.encoder") for n in changed)
    assert any(n.startswith("bottleneck") for n in changed)
    assert not any(n.startswith("classifier") for n in changed)


def test_the_adaptation_loss_is_information_maximisation_plus_weighted_pseudo_labels():
    pair, method, (_, adapt) = shot("method.pseudo_label_weight=0.7", "method.im_weight=2.0")
    x, _ = batches(pair, n=12)["target"]
    x = x.float()
    labels = torch.arange(12) % 10
    method.eval()  # no dropout: the same logits twice
    with torch.no_grad():
        logits = method.logits(x)
    _, marginal, conditional = information_maximization(logits)
    scalars = adapt.update({"target": (x, labels)}, 0.0)
    assert scalars["loss/conditional_entropy"].item() == pytest.approx(conditional.item())
    assert scalars["loss/marginal_entropy"].item() == pytest.approx(marginal.item())
    assert scalars["loss/pseudo_labels"].item() == pytest.approx(
        F.cross_entropy(logits, labels).item())
    # the weights: a step with the loss's gradient moves the bottleneck as computed by hand
    _, again, (_, adapt_again) = shot("method.pseudo_label_weight=0.7", "method.im_weight=2.0")
    again.eval()
    with torch.enable_grad():
        out = again.logits(x)
        _, m, c = information_maximization(out)
        (2.0 * (c - m) + 0.7 * F.cross_entropy(out, labels)).backward()
    expected = again.bottleneck[0].bias.grad.clone()
    again.zero_grad()
    before = again.bottleneck[0].bias.detach().clone()
    sgd = torch.optim.SGD(again.bottleneck[0].parameters(), lr=1.0)
    again._adapt_optimizer = sgd
    adapt_again.update({"target": (x, labels)}, 0.0)
    torch.testing.assert_close(before - again.bottleneck[0].bias.detach(), expected)


def test_shot_im_has_no_pseudo_label_term():
    pair, method, (_, adapt) = shot("method=shot_im")
    assert method.pseudo_label_weight == 0
    x, y = batches(pair, n=8)["target"]
    assert "loss/pseudo_labels" not in adapt.update({"target": (x.float(), y.clamp_min(0))}, 0)


def test_centroid_pseudo_labels_on_a_hand_case():
    """Two clusters in feature space; the classifier's probabilities put one of cluster A's
    points in class 1 with low confidence. The probability-weighted centroids still sit in the
    clusters, so every point takes its cluster's label; then hard centroids confirm it."""
    features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.95, 0.0], [0.0, 1.0], [0.1, 0.9]])
    probabilities = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.45, 0.55], [0.1, 0.9],
                                  [0.2, 0.8]])
    assert centroid_pseudo_labels(features, probabilities).tolist() == [0, 0, 0, 1, 1]
    assert probabilities.argmax(1).tolist() == [0, 0, 1, 1, 1]  # what argmax alone would say


def test_the_pseudo_labels_survive_a_checkpoint():
    _, method, (_, adapt) = shot()
    adapt.on_start()
    adapt.data["target"].labels.copy_(torch.arange(len(adapt.data["target"])) % 10)
    state = method.state_dict()
    _, restored, (_, adapt_again) = shot()
    restored.load_state_dict(state)
    assert torch.equal(adapt_again.data["target"].labels, adapt.data["target"].labels)


def test_the_source_stage_smooths_its_labels():
    pair, method, (source, _) = shot("method.smoothing=0.3")
    x, y = batches(pair, n=8)["source"]
    method.eval()
    with torch.no_grad():
        expected = F.cross_entropy(method.logits(x.float()), y, label_smoothing=0.3)
    scalars = source.update({"labelled": (x.float(), y)}, 0.0)
    assert scalars["loss/classification"].item() == pytest.approx(expected.item(), rel=1e-5)
