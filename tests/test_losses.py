"""The shared losses on cases whose answers are known by hand."""

from __future__ import annotations

import math

import pytest
import torch

from transferlab.losses.adversarial import DomainAdversarialLoss
from transferlab.losses.density_ratio import density_ratio, normalised_weights
from transferlab.losses.entropy import (
    batch_nuclear_norm,
    class_confusion,
    entropy,
    entropy_weights,
    information_maximization,
)

BIG = 50.0  # a logit margin that makes softmax one-hot to float precision


def one_hot_logits(labels: list[int], classes: int = 4) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), classes).double() * BIG


def test_entropy_is_zero_for_one_hot_and_log_c_for_uniform():
    torch.testing.assert_close(entropy(one_hot_logits([0, 3])), torch.zeros(2, dtype=torch.double))
    torch.testing.assert_close(entropy(torch.zeros(3, 5)), torch.full((3,), math.log(5)))


def test_entropy_of_a_hand_case():
    p = torch.tensor([[0.5, 0.25, 0.25]])
    assert entropy(p.log()).item() == pytest.approx(1.5 * math.log(2))


def test_information_maximization_terms_on_hand_cases():
    # Confident and balanced over 4 classes: marginal log 4, conditional 0.
    im, marginal, conditional = information_maximization(one_hot_logits([0, 1, 2, 3]))
    assert (im.item(), marginal.item(), conditional.item()) == pytest.approx(
        (math.log(4), math.log(4), 0.0))
    # Confident but collapsed onto one class: nothing gained.
    im, marginal, conditional = information_maximization(one_hot_logits([2, 2, 2]))
    assert (im.item(), marginal.item(), conditional.item()) == pytest.approx((0, 0, 0), abs=1e-9)
    # Uniform predictions: marginal and conditional both log C, IM 0.
    im, marginal, _ = information_maximization(torch.zeros(6, 3))
    assert marginal.item() == pytest.approx(math.log(3)) and im.item() == pytest.approx(0)


def test_batch_nuclear_norm_rewards_confident_diverse_predictions():
    # One-hot over 4 distinct classes: the matrix has 4 orthonormal rows, norm 4, over N=4.
    assert batch_nuclear_norm(one_hot_logits([0, 1, 2, 3])).item() == pytest.approx(1.0)
    # All one class: rank 1, norm sqrt(N).
    assert batch_nuclear_norm(one_hot_logits([1] * 4)).item() == pytest.approx(2 / 4)
    # Uniform: rank 1, rows of 1/C, norm sqrt(N * C) / C.
    assert batch_nuclear_norm(torch.zeros(4, 4)).item() == pytest.approx(math.sqrt(16) / 4 / 4)


def test_entropy_weights_follow_their_formula():
    logits = torch.tensor([[BIG, 0.0], [0.0, 0.0]], dtype=torch.double)
    torch.testing.assert_close(entropy_weights(logits),
                               torch.tensor([2.0, 1 + math.exp(-math.log(2))],
                                            dtype=torch.double))


def test_class_confusion_is_zero_for_one_hot_and_positive_for_confused_batches():
    confusion = class_confusion(one_hot_logits([0, 1, 2, 3, 1]), temperature=1.0)
    assert confusion.item() == pytest.approx(0.0, abs=1e-9)
    assert class_confusion(torch.zeros(8, 4), temperature=1.0).item() == pytest.approx(0.75)


def test_class_confusion_hand_case_with_two_classes():
    # Two samples, p = (0.75, 0.25) and (0.25, 0.75): equal entropies, so W = 1 each.
    # C = [[0.625, 0.375], [0.375, 0.625]], rows sum to 1, off-diagonal mass 0.75 over 2 classes.
    logits = torch.tensor([[0.75, 0.25], [0.25, 0.75]]).log()
    assert class_confusion(logits, temperature=1.0).item() == pytest.approx(0.375)


def test_density_ratio_recovers_the_true_ratio_of_a_1d_gaussian_shift():
    # Source N(0, 1), target N(1, 1): the Bayes-optimal domain logit is the log density ratio
    # plus the log prior odds; a logistic regression fit on samples should recover it.
    g = torch.Generator().manual_seed(0)
    n_s, n_t = 4000, 2000
    xs, xt = torch.randn(n_s, 1, generator=g), torch.randn(n_t, 1, generator=g) + 1
    x, d = torch.cat([xs, xt]), torch.cat([torch.zeros(n_s), torch.ones(n_t)]).long()
    model = torch.nn.Linear(1, 2)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), d)
        loss.backward()
        return loss

    opt.step(closure)
    grid = torch.linspace(-1, 2, 7).unsqueeze(1)
    with torch.no_grad():
        estimated = density_ratio(model(grid), n_s, n_t)
    true = torch.exp(grid.squeeze(1) - 0.5)  # N(1,1)/N(0,1) = exp(x - 1/2)
    torch.testing.assert_close(estimated, true, rtol=0.15, atol=0.0)


def test_normalised_weights_clip_then_average_one():
    w = normalised_weights(torch.tensor([0.5, 1.0, 10.0]), clip=2.0)
    torch.testing.assert_close(w, torch.tensor([0.5, 1.0, 2.0]) / (3.5 / 3))
    assert normalised_weights(torch.tensor([1.0, 3.0])).mean().item() == pytest.approx(1.0)


def test_domain_adversarial_loss_hand_case_and_reversed_gradient():
    # A discriminator that reads the first feature as the target logit: source features
    # (0, ...) and (2, ...) and a target feature (1, ...), domain logits (0, x0).
    disc = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        disc.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    source = torch.tensor([[0.0, 5.0], [2.0, 5.0]], requires_grad=True)
    target = torch.tensor([[1.0, 5.0]], requires_grad=True)
    loss, acc = DomainAdversarialLoss(disc)(source, target, coeff=0.5)
    # CE for label 0 with logits (0, x) is log(1 + e^x); for label 1, log(1 + e^-x).
    expected = (math.log(2) + math.log(1 + math.e ** 2) + math.log(1 + math.e ** -1)) / 3
    assert loss.item() == pytest.approx(expected)
    assert acc.item() == pytest.approx(2 / 3)  # the second source sample looks like target
    loss.backward()
    sigmoid = torch.sigmoid(torch.tensor([0.0, 2.0]))
    # d loss / d x0 of a source sample is sigmoid(x0) / 3; reversed and scaled by 0.5:
    torch.testing.assert_close(source.grad[:, 0], -0.5 * sigmoid / 3)
    assert torch.all(source.grad[:, 1] == 0)


def test_domain_adversarial_loss_weights_samples():
    disc = torch.nn.Linear(1, 2)
    f_s, f_t = torch.randn(3, 1), torch.randn(2, 1)
    per_sample = torch.nn.functional.cross_entropy(
        disc(torch.cat([f_s, f_t])), torch.tensor([0, 0, 0, 1, 1]), reduction="none")
    w = torch.tensor([1.0, 2.0, 1.0, 1.0, 0.0])
    loss, _ = DomainAdversarialLoss(disc)(f_s, f_t, 1.0, weights=w)
    assert loss.item() == pytest.approx(((per_sample * w).sum() / w.sum()).item())
