"""IWDAN: the label-shift estimate (BBSE) and the update that weights DANN's two losses by it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from test_alignment_methods import LR, build_method, gradients, source_target, step
from transferlab.losses.adversarial import domain_labels
from transferlab.losses.label_shift import ClassRatioEstimator, class_ratios
from transferlab.schedules import dann_lambda

# p_source = 1/3 each; the classifier mistakes a fifth of class 0 for class 1 and a tenth of
# class 1 for class 0 (columns: true class, rows: predicted).
SOURCE_PRIOR = torch.full((3,), 1 / 3, dtype=torch.float64)
MISTAKES = torch.tensor([[0.8, 0.1, 0.0], [0.2, 0.9, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
TRUE_RATIOS = torch.tensor([2.0, 0.5, 0.5], dtype=torch.float64)  # target: 2/3, 1/6, 1/6


def test_class_ratios_undo_the_classifiers_confusion():
    confusion = MISTAKES * SOURCE_PRIOR
    target_predicted = confusion @ TRUE_RATIOS
    torch.testing.assert_close(class_ratios(confusion, target_predicted), TRUE_RATIOS)
    # The naive ratio of predicted to source proportions is off: the test can tell them apart.
    assert (target_predicted / SOURCE_PRIOR - TRUE_RATIOS).abs().max() > 0.2


def test_class_ratios_are_non_negative_and_keep_the_source_expectation_at_one():
    confusion = torch.diag(SOURCE_PRIOR)
    w = class_ratios(confusion, torch.tensor([0.7, 0.35, -0.05], dtype=torch.float64))
    assert (w >= 0).all() and w[2] == 0
    assert (SOURCE_PRIOR @ w).item() == pytest.approx(1.0)
    # No source class in the target at all: no reweighting rather than zero weights.
    torch.testing.assert_close(class_ratios(confusion, -torch.ones(3, dtype=torch.float64)),
                               torch.ones(3, dtype=torch.float64))


def one_hot_logits(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return F.one_hot(labels, classes).double() * 10


def test_estimator_starts_at_one_and_tracks_the_target_predictions():
    estimator = ClassRatioEstimator(3, momentum=0.9).double()
    torch.testing.assert_close(estimator.ratios(), torch.ones(3, dtype=torch.float64))
    source = torch.arange(3).repeat(20)                      # balanced, classified correctly
    target = torch.tensor([0] * 40 + [1] * 10 + [2] * 10)    # predicted 2/3, 1/6, 1/6
    for _ in range(200):
        w = estimator.update(one_hot_logits(source, 3), source, one_hot_logits(target, 3))
    torch.testing.assert_close(w, TRUE_RATIOS)
    assert "confusion" in estimator.state_dict()  # a resumed run keeps its estimate


def test_iwdan_update_weights_both_losses_by_the_class_ratio_of_the_sample_label():
    # Momentum 0: the estimate is this batch's alone, so the test can compute it independently.
    method, view, batch = build_method("iwdan", "method.ratio_momentum=0")
    reference = copy.deepcopy(method)
    xs, ys, xt = source_target(batch)
    n = len(xs)
    features = reference.network.features(torch.cat([xs, xt]))
    logits = reference.network.head(features)
    confusion = torch.zeros(10, 10, dtype=torch.float64)
    for predicted, label in zip(logits[:n].argmax(1), ys, strict=True):
        confusion[predicted, label] += 1 / n
    predicted = torch.bincount(logits[n:].argmax(1), minlength=10).double() / len(xt)
    w = class_ratios(confusion, predicted)[ys]
    assert w.std() > 0.1  # the weights vary, so dropping them changes the update

    lam = dann_lambda(0.5, method.lambda_gamma, method.lambda_max)
    label_loss = (F.cross_entropy(logits[:n], ys, reduction="none") * w).mean()
    domain_losses = F.cross_entropy(
        reference.adversarial.discriminator(features), domain_labels(n, len(xt), xs.device),
        reduction="none")
    domain_loss = (domain_losses[:n] * w).sum() / w.sum() / 2 + domain_losses[n:].mean() / 2
    # SGD's first step: the network descends the label loss and ascends λ · the domain loss;
    # the discriminator descends the domain loss.
    label_grads = gradients(label_loss, reference.network, "network.")
    domain_grads = gradients(domain_loss, reference.network, "network.")
    expected = {k: -LR * (label_grads[k] - lam * domain_grads[k]) for k in label_grads}
    expected |= {k: -LR * g for k, g in
                 gradients(domain_loss, reference.adversarial, "adversarial.").items()}
    changes = step(method, view, batch)
    for name, value in expected.items():
        torch.testing.assert_close(changes[name], value, msg=lambda m, name=name: f"{name}: {m}")


def test_iwdan_without_label_shift_is_dann():
    iwdan, view, batch = build_method("iwdan")
    dann, _, _ = build_method("dann")
    dann.load_state_dict(iwdan.state_dict(), strict=False)
    with torch.no_grad():  # an estimate of no shift: w = 1 whatever this batch predicts
        iwdan.class_ratio.confusion.copy_(torch.eye(10) / 10)
        iwdan.class_ratio.target_predicted.fill_(0.1)
    iwdan.class_ratio.momentum = 1.0
    iwdan_changes, dann_changes = step(iwdan, view, batch), step(dann, view, batch)
    for name, value in dann_changes.items():
        torch.testing.assert_close(iwdan_changes[name], value)
