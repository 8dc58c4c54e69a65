"""MCD's classifier discrepancy and VAT's virtual adversarial perturbation, on cases whose
answers are known by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from transferlab.losses.classifier_discrepancy import classifier_discrepancy
from transferlab.losses.vat import adversarial_perturbation, kl_divergence, vat_loss

BIG = 50.0


def test_discrepancy_is_the_mean_absolute_difference_of_the_softmaxes():
    # One-hot on different classes of 4: |p1 - p2| = (1, 1, 0, 0), mean 0.5.
    a = torch.tensor([[BIG, 0, 0, 0]], dtype=torch.double)
    b = torch.tensor([[0, BIG, 0, 0]], dtype=torch.double)
    assert classifier_discrepancy(a, b).item() == pytest.approx(0.5)
    # (0.5, 0.5) against (0.2, 0.8): |.| = (0.3, 0.3), mean 0.3; with a second, agreeing
    # sample the mean over samples and classes halves it.
    p = torch.tensor([[0.5, 0.5]]).log()
    q = torch.tensor([[0.2, 0.8]]).log()
    assert classifier_discrepancy(p, q).item() == pytest.approx(0.3)
    assert classifier_discrepancy(torch.cat([p, p]), torch.cat([q, p])).item() == \
        pytest.approx(0.15)
    assert classifier_discrepancy(q, q).item() == 0.0


def test_kl_divergence_on_a_hand_case():
    p, q = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.25, 0.75]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_divergence(p.log(), q.log()).item() == pytest.approx(expected)
    assert kl_divergence(q.log(), q.log()).item() == pytest.approx(0.0, abs=1e-7)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 5)).double()


def test_vat_perturbation_has_the_configured_norm_per_sample():
    model, x = _model(), torch.randn(6, 3, 8, 8, dtype=torch.double)
    r = adversarial_perturbation(model, x, model(x), radius=3.5)
    assert r.shape == x.shape
    torch.testing.assert_close(r.flatten(1).norm(dim=1), torch.full((6,), 3.5,
                                                                    dtype=torch.double))


def test_vat_perturbation_beats_random_directions_of_the_same_norm():
    model, x = _model(1), torch.randn(8, 3, 8, 8, dtype=torch.double)
    logits = model(x)
    radius = 0.5
    r = adversarial_perturbation(model, x, logits, radius=radius)
    adversarial = kl_divergence(logits, model(x + r))
    for _ in range(20):
        d = torch.randn_like(x)
        d = radius * d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        assert (adversarial > kl_divergence(logits, model(x + d))).all()


def test_power_iteration_finds_the_top_eigenvector_of_the_divergence_hessian():
    # For logits W x, the Hessian of KL(p(x) ‖ p(x + r)) at r = 0 is Wᵀ (diag p − p pᵀ) W.
    torch.manual_seed(2)
    linear = nn.Linear(6, 4, bias=False).double()
    x = torch.randn(1, 6, dtype=torch.double)
    p = torch.softmax(linear(x), dim=1)[0]
    w = linear.weight.detach()
    hessian = w.t() @ (torch.diag(p) - torch.outer(p, p)) @ w
    top = torch.linalg.eigh(hessian).eigenvectors[:, -1]
    r = adversarial_perturbation(linear, x, linear(x), radius=1.0, iterations=30)
    assert abs(torch.dot(r[0], top).item()) == pytest.approx(1.0, abs=1e-6)


def test_vat_loss_is_the_divergence_at_the_perturbed_point_from_the_fixed_prediction():
    model, x = _model(3), torch.randn(4, 3, 8, 8, dtype=torch.double)
    logits = model(x)
    torch.manual_seed(5)
    loss = vat_loss(model, x, logits, radius=1.0)
    torch.manual_seed(5)  # the same random start, so the same perturbation
    r = adversarial_perturbation(model, x, logits, radius=1.0)
    assert loss.item() == pytest.approx(kl_divergence(logits, model(x + r)).mean().item())
    # p(x) is a constant of the loss: no gradient flows through `logits`.
    logits_leaf = logits.detach().requires_grad_(True)
    vat_loss(model, x, logits_leaf, radius=1.0).backward()
    assert logits_leaf.grad is None


def test_the_power_iteration_direction_in_float32_is_the_float64_one():
    """H d computed exactly (forward-mode J d, backward Jᵀ ·) in float32 points where the
    paper's finite difference points in float64, where ξ = 1e-6 does not round away; the same
    finite difference in float32 is rounding noise (or zero)."""
    import copy

    from transferlab.losses.vat import _unit, divergence_hessian_product
    from transferlab.nn.backbones import dann_mnist

    torch.manual_seed(0)
    net = dann_mnist(in_channels=3, num_classes=10).eval()
    x = torch.rand(16, 3, 28, 28) * 2 - 1
    net64, x64 = copy.deepcopy(net).double(), x.double()
    with torch.no_grad():
        logits32, logits64 = net(x), net64(x64)
    d = _unit(torch.randn_like(x64))

    def finite_difference(model, inputs, logits, direction, xi):
        direction = direction.clone().requires_grad_(True)
        divergence = kl_divergence(logits, model(inputs + xi * direction)).sum()
        return torch.autograd.grad(divergence, direction)[0]

    def cosine(a, b):
        a, b = a.double().flatten(1), b.double().flatten(1)
        return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)).abs()

    reference = finite_difference(net64, x64, logits64, d, 1e-6)
    exact = divergence_hessian_product(net, x, d.float(), logits32)
    assert cosine(exact, reference).min() > 0.999
    rounded = finite_difference(net, x, logits32, d.float(), 1e-6)
    assert cosine(rounded, reference).median() < 0.5


def test_vada_keeps_batch_norm_statistics_to_the_target_passes():
    from helpers import compose_config
    from steps import batches
    from transferlab.experiment import build
    from transferlab.nn.norms import batch_norm_layers

    def running_after_one_update(statistics: str, source_only: bool = False):
        torch.manual_seed(0)
        # dann_mnist with batch norm: no noise or dropout, so a pass is the same pass twice
        pair, method = build(compose_config("data=tiny", "device=cpu", "method=vada",
                                            "backbone.batch_norm=true",
                                            f"method.bn_statistics={statistics}"),
                             torch.device("cpu"))
        (stage,) = method.stages(pair.training_view(False))
        batch = {k: (x.float(), y) for k, (x, y) in batches(pair, n=8).items()}
        if source_only:  # the target pass alone, as the running statistics should see it
            method.network.train()
            method.network.features(batch["target"][0])
        else:
            stage.update(batch, 0.0)
        return [m.running_mean.clone() for m in batch_norm_layers(method.network)]

    target_pass = running_after_one_update("target", source_only=True)
    for kept, expected in zip(running_after_one_update("target"), target_pass, strict=True):
        torch.testing.assert_close(kept, expected)
    every_pass = running_after_one_update("all")
    assert any(not torch.allclose(a, b) for a, b in zip(every_pass, target_pass, strict=True))
