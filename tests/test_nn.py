import math

import pytest
import torch

from transferlab.nn import DomainDiscriminator, GradientReversal, grad_reverse
from transferlab.nn.backbones import dann_mnist, lenet
from transferlab.schedules import annealed_lr, dann_lambda


@pytest.mark.parametrize("coeff", [0.0, 0.3, 1.0, 2.5])
def test_gradient_reversal_is_identity_forward_and_scaled_negation_backward(coeff):
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, dtype=torch.float64)
    y = GradientReversal()(x, coeff)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    # d/dx of sum(x * w) is w; reversal must give -coeff * w
    torch.testing.assert_close(x.grad, -coeff * w.expand(5, 7))


def test_gradient_reversal_matches_finite_differences_of_negated_loss():
    torch.manual_seed(0)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)

    def loss(z):
        return (z.sin() ** 2).sum()

    loss(grad_reverse(x, 0.5)).backward()
    eps = 1e-6
    numeric = torch.zeros_like(x)
    for i in range(x.numel()):
        d = torch.zeros(x.numel(), dtype=torch.float64)
        d[i] = eps
        d = d.view_as(x)
        numeric.view(-1)[i] = (loss(x + d) - loss(x - d)) / (2 * eps)
    torch.testing.assert_close(x.grad, -0.5 * numeric.detach())


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_dann_lambda_schedule_matches_formula(p):
    assert dann_lambda(p, gamma=10) == pytest.approx(2 / (1 + math.exp(-10 * p)) - 1)


def test_dann_lambda_known_values():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(0.5) == pytest.approx(0.986614298)
    assert dann_lambda(1.0) == pytest.approx(0.999909204)


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_annealed_lr_matches_formula(p):
    mu0 = 0.01
    assert mu0 * annealed_lr(p, 10, 0.75) == pytest.approx(mu0 / (1 + 10 * p) ** 0.75)


def test_annealed_lr_known_values():
    assert annealed_lr(0.0) == 1.0
    assert annealed_lr(0.5) == pytest.approx(6 ** -0.75)
    assert annealed_lr(1.0) == pytest.approx(11 ** -0.75)


def test_dann_mnist_is_the_paper_architecture():
    net = dann_mnist(in_channels=3, num_classes=10)
    convs = [m for m in net.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(32, (5, 5)), (48, (5, 5))]
    assert net.feature_dim == 48 * 4 * 4
    linears = [m for m in net.head if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [100, 100, 10]
    assert net(torch.zeros(2, 3, 28, 28)).shape == (2, 10)


def test_lenet_features_and_discriminator():
    net = lenet(in_channels=1, num_classes=10)
    assert net.feature_dim == 500
    d = DomainDiscriminator(net.feature_dim, (500, 500))
    assert d(net.encoder(torch.zeros(4, 1, 28, 28))).shape == (4, 2)
