"""The alignment losses of DAN, Deep CORAL, CDAN and MDD on cases whose answers are known by
hand or by theory."""

from __future__ import annotations

import math

import pytest
import torch

from transferlab.losses.conditional import MultilinearMap, conditioning_weights
from transferlab.losses.discrepancy import DAN_BANDWIDTHS, coral, multi_kernel_mmd
from transferlab.losses.margin import MarginDisparityLoss, margin_disparity_discrepancy


def kernel_sum(squared_distance: float, mean_squared_distance: float) -> float:
    return sum(math.exp(-squared_distance / (b * mean_squared_distance))
               for b in DAN_BANDWIDTHS)


def test_linear_mmd_of_a_hand_case():
    # One quad-tuple: s = (0, 0), t = (2, 2) in 1-D. Squared distances s-s' 0, t-t' 0,
    # s-t' 4, s'-t 4, mean 2; estimate k(0) + k(0) - 2 k(4), with k(0) = 5 kernels of 1.
    s, t = torch.tensor([[0.0], [0.0]]), torch.tensor([[2.0], [2.0]])
    expected = 2 * len(DAN_BANDWIDTHS) - 2 * kernel_sum(4.0, 2.0)
    assert multi_kernel_mmd(s, t, linear=True).item() == pytest.approx(expected, rel=1e-6)


def test_quadratic_mmd_of_a_hand_case():
    # s = (0, 0), t = (2, 3): over the joint batch's 12 ordered distinct pairs the squared
    # distances are 0 (s-s, twice), 1 (t-t, twice), 4 (4 times) and 9 (4 times): mean 54/12.
    # Within-domain means over distinct pairs: k(0) and k(1); cross mean (k(4) + k(9)) / 2.
    s, t = torch.tensor([[0.0], [0.0]]), torch.tensor([[2.0], [3.0]])
    m = 54 / 12
    expected = (kernel_sum(0.0, m) + kernel_sum(1.0, m)
                - (kernel_sum(4.0, m) + kernel_sum(9.0, m)))
    assert multi_kernel_mmd(s, t, linear=False).item() == pytest.approx(expected, rel=1e-6)


def test_mmd_bandwidth_is_a_constant_of_the_batch_for_the_gradient():
    # Moving a target point away from the source raises the estimate: each t meets one s in
    # a cross term, and with the bandwidth held fixed its gradient is
    # Σ_b exp(-1 / (b m)) / (b m) · 2 (t - s) with m = 0.5. A bandwidth that took part in the
    # gradient would add terms that shrink the kernels instead.
    s = torch.tensor([[0.0], [0.0]])
    t = torch.tensor([[1.0], [1.0]], requires_grad=True)
    multi_kernel_mmd(s, t, linear=True).backward()
    expected = sum(math.exp(-1 / (b * 0.5)) / (b * 0.5) * 2 for b in DAN_BANDWIDTHS)
    torch.testing.assert_close(t.grad, torch.tensor([[expected], [expected]]))


@pytest.mark.parametrize("linear", [True, False])
def test_mmd_is_near_zero_for_one_distribution_and_clearly_positive_for_a_shift(linear: bool):
    # The linear-time estimate averages n/2 terms, so it needs more samples for a small spread.
    n = 8192 if linear else 512
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(n, 5, generator=g), torch.randn(n, 5, generator=g)
    same = multi_kernel_mmd(s, t, linear=linear).item()
    shifted = multi_kernel_mmd(s, t + 1.0, linear=linear).item()
    assert abs(same) < 0.1 * shifted
    assert shifted > 0.3


@pytest.mark.parametrize("linear", [True, False])
def test_mmd_estimates_are_unbiased_so_they_go_negative_for_one_distribution(linear: bool):
    # An unbiased estimate of MMD² = 0 averages 0 and is negative about as often as positive;
    # a biased (V-statistic) estimate would be positive every time.
    g = torch.Generator().manual_seed(1)
    same, shifted = [], []
    for _ in range(200):
        s, t = torch.randn(32, 3, generator=g), torch.randn(32, 3, generator=g)
        same.append(multi_kernel_mmd(s, t, linear=linear).item())
        shifted.append(multi_kernel_mmd(s, t + 1.5, linear=linear).item())
    same_t = torch.tensor(same)
    assert 0.25 < (same_t < 0).float().mean().item() < 0.75
    assert abs(same_t.mean().item()) < 3 * same_t.std().item() / math.sqrt(len(same))
    assert min(shifted) > 0 or (linear and (torch.tensor(shifted) > 0).float().mean() > 0.9)


def test_coral_is_zero_for_equal_covariances_whatever_the_means():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(50, 4, generator=g)
    assert coral(s, s + torch.tensor([3.0, -1.0, 0.5, 2.0])).item() == pytest.approx(0, abs=1e-6)


def test_coral_of_a_2d_hand_case():
    # Source varies along x only, target along y only, both with unbiased variance 2:
    # C_S = diag(2, 0), C_T = diag(0, 2), ‖C_S - C_T‖²_F = 8, over 4 d² = 16.
    s = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    assert coral(s, t).item() == pytest.approx(0.5)


def test_multilinear_map_is_the_outer_product_below_the_threshold():
    f = torch.tensor([[1.0, 2.0, 3.0]])
    g = torch.tensor([[0.25, 0.75]])
    m = MultilinearMap(feature_dim=3, num_classes=2, randomize_above=6)
    assert not m.randomized and m.out_features == 6
    torch.testing.assert_close(m(f, g), torch.outer(f[0], g[0]).flatten().unsqueeze(0))


def test_randomized_multilinear_map_above_the_threshold_keeps_inner_products():
    # The paper's threshold: 768 features x 10 classes (the DANN CNN) is above 4096.
    m = MultilinearMap(feature_dim=768, num_classes=10)
    assert m.randomized and m.out_features == 1024
    assert m(torch.randn(5, 768), torch.rand(5, 10)).shape == (5, 1024)
    assert list(m.parameters()) == [] and set(m.state_dict()) == {
        "features_projection", "classes_projection"}  # fixed, and saved with checkpoints
    # E⟨T(f, g), T(f', g')⟩ = ⟨f, f'⟩⟨g, g'⟩; with a wide map the average is close.
    torch.manual_seed(0)
    wide = MultilinearMap(feature_dim=4, num_classes=3, randomize_above=0,
                          randomized_dim=200_000)
    f = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    g = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    mapped = wide(f, g)
    for i, j, exact in ((0, 1, 1.0 * 0.5), (0, 0, 2.0 * 0.5), (1, 1, 2.0 * 1.0)):
        assert (mapped[i] @ mapped[j]).item() == pytest.approx(exact, abs=0.05)


def test_margin_disparity_discrepancy_of_a_hand_case():
    # Source: main head predicts class 0, the adversarial head gives it 0.8 → γ · log 0.8.
    # Target: main head predicts class 1, the adversarial head gives it 0.25 → log(1 - 0.25).
    logits_s, logits_t = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    adversarial_s = torch.tensor([[0.8, 0.2]]).log()
    adversarial_t = torch.tensor([[0.75, 0.25]]).log()
    d = margin_disparity_discrepancy(logits_s, logits_t, adversarial_s, adversarial_t, margin=4)
    assert d.item() == pytest.approx(4 * math.log(0.8) + math.log(0.75))


def test_margin_disparity_discrepancy_is_zero_when_the_adversary_wins_outright():
    # Agreeing with the main head on source and putting no mass on its class on target is
    # the adversary's optimum: D = 0 (its largest value), finite even as σ → 1.
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    agree = torch.tensor([[100.0, 0.0, 0.0], [0.0, 0.0, 100.0]])
    disagree = torch.tensor([[0.0, 100.0, 0.0], [100.0, 0.0, 0.0]])
    assert margin_disparity_discrepancy(logits, logits, agree, disagree, 2).item() == (
        pytest.approx(0, abs=1e-6))
    d = margin_disparity_discrepancy(logits, logits, disagree, agree, 2)
    assert torch.isfinite(d) and d.item() < -100


def test_margin_disparity_loss_trains_the_head_up_and_the_features_down_the_discrepancy():
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 3)
    features = torch.randn(6, 4, requires_grad=True)
    logits = torch.randn(6, 3)
    coeff = 0.3
    loss = MarginDisparityLoss(head, margin=2.0)(features[:3], features[3:], logits[:3],
                                                 logits[3:], coeff)
    loss.backward()
    head_grad, feature_grad = head.weight.grad.clone(), features.grad.clone()

    head.zero_grad()
    features.grad = None
    d = margin_disparity_discrepancy(logits[:3], logits[3:], head(features[:3]),
                                     head(features[3:]), 2.0)
    d.backward()
    torch.testing.assert_close(head_grad, -head.weight.grad)   # descending the loss: D up
    torch.testing.assert_close(feature_grad, coeff * features.grad)  # reversed: D down


@pytest.mark.parametrize("reversal", [None, 0.7])
def test_cdan_e_weights_and_the_gradient_through_them(reversal):
    """Values: 1 + e^(−H) per sample, each domain's summing to 1. Gradient: none with the
    weights as constants; with `reversal` λ, minus λ times the gradient of the weights' own
    formula (its normalising sums held constant), as the authors' hook on the entropy gives."""
    torch.manual_seed(0)
    logits = (3 * torch.randn(10, 4, dtype=torch.float64)).requires_grad_()
    loss_per_sample = torch.rand(10, dtype=torch.float64)
    weights = conditioning_weights(logits, 6, reversal)
    p = torch.softmax(logits, 1)
    plain = 1 + torch.exp((p * torch.log(p)).sum(1))
    sums = torch.cat([plain[:6].sum().expand(6), plain[6:].sum().expand(4)]).detach()
    torch.testing.assert_close(weights, (plain / sums).detach())
    torch.testing.assert_close(weights[:6].sum().item(), 1.0)
    if reversal is None:
        assert not weights.requires_grad
        return
    (got,) = torch.autograd.grad((weights * loss_per_sample).sum(), logits)
    (formula,) = torch.autograd.grad((plain / sums * loss_per_sample).sum(), logits)
    torch.testing.assert_close(got, -reversal * formula)


def test_the_multilinear_map_is_exact_at_any_size_without_a_threshold():
    exact = MultilinearMap(500, 10, randomize_above=None)
    assert not exact.randomized and exact.out_features == 5000
    assert MultilinearMap(500, 10).randomized
