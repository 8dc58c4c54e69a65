"""What one update of DAN, Deep CORAL, CDAN(+E), MDD and instance weighting does to the
parameters: the alignment term reaches the layers it should, with the right sign and size.

With SGD the first step moves every parameter by -lr · gradient, so the difference between an
update with the alignment term and one without it is -lr · (the alignment term's gradient),
which we compute independently from the shared loss functions and compare."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import compose_config
from transferlab.data.domain import as_input
from transferlab.errors import find_user_error
from transferlab.experiment import build, build_evaluators
from transferlab.losses.adversarial import domain_labels
from transferlab.losses.density_ratio import density_ratio, normalised_weights
from transferlab.losses.discrepancy import coral, multi_kernel_mmd
from transferlab.losses.entropy import entropy_weights
from transferlab.losses.margin import margin_disparity_discrepancy
from transferlab.methods.base import Method
from transferlab.methods.iwerm import IWERM
from transferlab.nn import Classifier
from transferlab.schedules import dann_lambda
from transferlab.train import TrainerConfig, fit

LR = 0.01  # conf/config.yaml's SGD rate; the first SGD step is exactly -LR · gradient
PROGRESS = 0.5  # far enough into training that annealed coefficients are well above 0


def build_method(name: str, *overrides: str):
    """The method in float64, so that parameter changes of two updates can be subtracted
    without float32 rounding of the parameters hiding the small term we look for."""
    cfg = compose_config("data=tiny", f"method={name}", "device=cpu", *overrides)
    torch.manual_seed(0)
    pair, method = build(cfg, torch.device("cpu"))
    method.double()
    view = pair.training_view(method.uses_target_labels)

    def first(split) -> tuple[torch.Tensor, torch.Tensor]:
        images = as_input(split.images[:16], pair.channels, method.network.normalization)
        return images.double(), split.labels[:16]

    return method, view, {"source": first(view.source), "target": first(view.target)}


def step(method: Method, view, batch, progress: float = PROGRESS) -> dict[str, torch.Tensor]:
    """Parameter changes made by one update of the method's last stage."""
    stage = method.stages(view)[-1]
    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    stage.update(batch, progress)
    return {n: p.detach() - before[n] for n, p in method.named_parameters()}


def gradients(loss: torch.Tensor, module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    named = [(n, p) for n, p in module.named_parameters()]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True,
                                retain_graph=True)
    return {f"{prefix}{n}": torch.zeros_like(p) if g is None else g
            for (n, p), g in zip(named, grads, strict=True)}


def assert_alignment_part(with_term: dict, without: dict, expected: dict) -> None:
    scale = max(v.abs().max().item() for v in expected.values())
    # A term lost in rounding would pass any comparison (float64 parameters of ~0.1 resolve
    # changes down to ~1e-17).
    assert scale > 1e-13
    for name, value in expected.items():
        torch.testing.assert_close(with_term[name] - without[name], value,
                                   atol=1e-4 * scale, rtol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")


def source_target(batch):
    (xs, ys), (xt, _) = batch["source"], batch["target"]
    return xs, ys, xt


@pytest.mark.parametrize("name,discrepancy,weight,gamma", [
    ("dan", functools.partial(multi_kernel_mmd, linear=True), 1.0, None),
    ("coral", coral, 1.0, None),
    # the ramp: at PROGRESS the term counts 2 · (2 / (1 + e^-1) - 1) = 0.924, not 2
    ("dan", functools.partial(multi_kernel_mmd, linear=True), 2.0, 2.0),
    ("coral", coral, 2.0, 2.0),
])
def test_feature_alignment_update_adds_the_discrepancy_gradient_of_each_layer(
        name, discrepancy, weight, gamma):
    method, view, batch = build_method(name, f"method.alignment_weight={weight}",
                                       f"method.alignment_gamma={gamma or 'null'}")
    off = copy.deepcopy(method)
    off.alignment_weight = 0.0
    reference = copy.deepcopy(method)

    xs, _, xt = source_target(batch)
    _, taps = reference.network.taps(torch.cat([xs, xt]), method.layers)
    n = len(xs)
    alignment = sum(discrepancy(a[:n].flatten(1), a[n:].flatten(1)) for a in taps.values())
    assert len(taps) == (2 if name == "dan" else 1)
    factor = weight if gamma is None else dann_lambda(PROGRESS, gamma, weight)
    expected = {k: -LR * factor * g
                for k, g in gradients(alignment, reference.network, "network.").items()}
    assert all(g.abs().max() > 0 for k, g in expected.items() if k.startswith("network.enc"))
    assert_alignment_part(step(method, view, batch), step(off, view, batch), expected)


def test_dan_quadratic_estimator_is_used_when_configured():
    method, view, batch = build_method("dan", "method.estimator=quadratic",
                                       "method.layers=[head.1]")
    off = copy.deepcopy(method)
    off.alignment_weight = 0.0
    reference = copy.deepcopy(method)
    xs, _, xt = source_target(batch)
    _, taps = reference.network.taps(torch.cat([xs, xt]), ["head.1"])
    mmd = multi_kernel_mmd(taps["head.1"][:16], taps["head.1"][16:], linear=False)
    expected = {k: -LR * g for k, g in gradients(mmd, reference.network, "network.").items()}
    assert_alignment_part(step(method, view, batch), step(off, view, batch), expected)


@pytest.mark.parametrize("entropy_conditioning", [False, True])
def test_cdan_update_reverses_the_conditional_discriminator_gradient_into_the_encoder(
        entropy_conditioning: bool):
    method, view, batch = build_method("cdan", f"method.entropy_conditioning="
                                       f"{str(entropy_conditioning).lower()}",
                                       "method.domain_dropout=0")
    assert method.multilinear.randomized  # 768 features x 10 classes > 4096
    with torch.no_grad():  # confident, varied predictions, so that entropy weights vary
        method.network.head[-1].weight.mul_(300)
    off = copy.deepcopy(method)
    off.lambda_max = 0.0
    reference = copy.deepcopy(method)

    xs, _, xt = source_target(batch)
    features = reference.network.features(torch.cat([xs, xt]))
    logits = reference.network.head(features)
    joint = reference.multilinear(features, F.softmax(logits, 1).detach())
    losses = F.cross_entropy(reference.adversarial.discriminator(joint),
                             domain_labels(len(xs), len(xt), xs.device), reduction="none")
    if entropy_conditioning:
        w = entropy_weights(logits)
        assert w.std() > 0.1 and abs(w[:16].sum() / w[16:].sum() - 1) > 0.02
        w = torch.cat([w[:16] / w[:16].sum(), w[16:] / w[16:].sum()])
        domain_loss = (losses * w).sum() / w.sum()
    else:
        domain_loss = losses.mean()
    lam = dann_lambda(PROGRESS, method.lambda_gamma, method.lambda_max)
    grads = gradients(domain_loss, reference.network, "network.")
    # The reversed gradient reaches the encoder; the head only conditions the discriminator.
    expected = {k: LR * lam * g for k, g in grads.items()}
    assert all(g.abs().max() == 0 for k, g in expected.items() if k.startswith("network.head"))
    with_term, without = step(method, view, batch), step(off, view, batch)
    assert_alignment_part(with_term, without, expected)
    # The discriminator itself descends its loss whatever λ is.
    for k, g in gradients(domain_loss, reference.adversarial, "adversarial.").items():
        torch.testing.assert_close(with_term[k], -LR * g)


def test_mdd_update_trains_the_adversarial_head_up_and_the_encoder_down_the_discrepancy():
    method, view, batch = build_method("mdd")
    off = copy.deepcopy(method)
    off.lambda_max = 0.0
    reference = copy.deepcopy(method)
    # A fresh adversarial head, not the main head's weights.
    assert not torch.equal(method.disparity.adversarial_head[0].weight,
                           method.network.head[0].weight)

    xs, _, xt = source_target(batch)
    features = reference.network.features(torch.cat([xs, xt]))
    logits = reference.network.head(features)
    adversarial = reference.disparity.adversarial_head(features)
    d = margin_disparity_discrepancy(logits[:16], logits[16:], adversarial[:16],
                                     adversarial[16:], margin=4.0)
    lam = dann_lambda(PROGRESS, method.lambda_gamma, method.lambda_max)
    # The features descend D (the encoder moves by -LR · λ · ∂D); the main head gets nothing
    # from D, which depends on it only through an argmax.
    expected = {k: -LR * lam * g for k, g in gradients(d, reference.network, "network.").items()}
    with_term, without = step(method, view, batch), step(off, view, batch)
    assert_alignment_part(with_term, without, expected)
    assert all(g.abs().max() == 0 for k, g in expected.items() if k.startswith("network.head"))
    # The adversarial head ascends D with the full gradient.
    for k, g in gradients(d, reference.disparity, "disparity.").items():
        torch.testing.assert_close(with_term[k], LR * g)


def test_iwerm_update_weights_source_loss_by_the_domain_classifier_density_ratio():
    method, view, batch = build_method("iwerm")
    with torch.no_grad():  # a domain classifier with opinions, so the weights vary
        for p in method.domain_classifier.parameters():
            p.mul_(20)
    reference = copy.deepcopy(method)

    xs, ys, xt = source_target(batch)
    features = reference.network.features(torch.cat([xs, xt]))
    domain_logits = reference.domain_classifier(features.detach())
    w = normalised_weights(density_ratio(domain_logits[:16], 16, 16), clip=method.clip)
    assert w.std() > 0.3
    losses = F.cross_entropy(reference.network.head(features[:16]), ys, reduction="none")
    expected = {k: -LR * g for k, g in
                gradients((losses * w.detach()).mean(), reference.network, "network.").items()}
    domain_loss = F.cross_entropy(domain_logits, domain_labels(16, 16, xs.device))
    expected |= {k: -LR * g for k, g in
                 gradients(domain_loss, reference.domain_classifier, "domain_classifier.").items()}
    changes = step(method, view, batch)
    for name, value in expected.items():
        torch.testing.assert_close(changes[name], value)
    unweighted = gradients(losses.mean(), reference.network, "network.")
    assert not torch.allclose(changes["network.head.0.weight"],
                              -LR * unweighted["network.head.0.weight"])


def test_iwerm_domain_classifier_recovers_the_density_ratio_of_a_1d_gaussian_shift():
    # Features = the 1-D input itself, a linear domain classifier: the update's own training
    # of the classifier should reach the true ratio N(1, 1) / N(0, 1) = exp(x - 1/2).
    network = Classifier(nn.Flatten(), num_classes=2, in_channels=1, image_size=1)
    method = IWERM(network=network, steps=1, clip=None, domain_hidden=(),
                   optimizer=functools.partial(torch.optim.SGD, lr=0.5, momentum=0.9))
    g = torch.Generator().manual_seed(0)
    optimizer = method.optimizer(method.network, method.domain_classifier)
    labels = torch.zeros(512, dtype=torch.long)
    for _ in range(300):
        xs = torch.randn(512, 1, 1, 1, generator=g)
        xt = torch.randn(512, 1, 1, 1, generator=g) + 1
        method.estimating_update(optimizer, {"source": (xs, labels), "target": (xt, labels)},
                                 weighted=True)
    grid = torch.linspace(-1, 2, 7).reshape(7, 1, 1, 1)
    with torch.no_grad():
        ratio = density_ratio(method.domain_classifier(method.network.features(grid)), 1, 1)
    torch.testing.assert_close(ratio, torch.exp(grid.flatten() - 0.5), rtol=0.15, atol=0.0)


def test_iwerm_estimate_first_freezes_the_estimate_then_trains_the_network_only():
    cfg = compose_config("data=tiny", "method=iwerm", "device=cpu", "trainer.steps=3",
                         "method.estimate_steps=3")
    pair, method = build(cfg, torch.device("cpu"))
    snapshots = {}

    def log(scalars: dict, step: int) -> None:
        if step == 3:
            snapshots["network"] = copy.deepcopy(method.network.state_dict())
            snapshots["domain"] = copy.deepcopy(method.domain_classifier.state_dict())

    trainer = TrainerConfig(batch_size=16, eval_every=1000, progress_bar=False, log_every=1)
    fit(method, pair, trainer, seed=0, log=log, evaluators=build_evaluators(cfg))
    assert method.weights_frozen
    for key, value in snapshots["domain"].items():
        assert torch.equal(value, method.domain_classifier.state_dict()[key])
    # The weights were read through the encoder as it was when estimation ended.
    frozen = method.weighting_encoder.state_dict()
    for key, value in frozen.items():
        assert torch.equal(value, snapshots["network"][f"encoder.{key}"])
    assert any(not torch.equal(v, snapshots["network"][k])
               for k, v in method.network.state_dict().items())


def test_cdan_randomized_map_is_fixed_and_checkpointed():
    method, view, batch = build_method("cdan")
    projection = method.multilinear.features_projection.clone()
    step(method, view, batch)
    assert torch.equal(method.multilinear.features_projection, projection)
    assert "multilinear.features_projection" in method.state_dict()
    assert method.multilinear.out_features == 1024


@pytest.mark.parametrize("name", ["dan", "coral", "cdan", "mdd", "iwerm"])
def test_alignment_methods_train_on_the_view_with_target_labels_masked(name: str):
    two_stages = ("method.estimate_steps=2",) if name == "iwerm" else ()
    method, view, _ = build_method(name, *two_stages)
    assert not method.uses_target_labels and (view.target.labels == -1).all()
    for stage in method.stages(view):
        assert all(split is view.source or split is view.target for split in stage.data.values())


@pytest.mark.parametrize("override,message", [
    ("method.layers=[fc9]", "method.layers=['fc9'] is invalid: must be a non-empty list of tap "
                            "names of this backbone: features, logits, encoder, "),
    ("method.bandwidths=[1.0,0]", "method.bandwidths=[1.0, 0] is invalid: must be a non-empty "
                                  "list of numbers > 0"),
])
def test_dan_bad_keys_are_user_errors_naming_the_key(override: str, message: str):
    with pytest.raises(Exception) as raised:
        build_method("dan", override)
    assert str(find_user_error(raised.value)).startswith(message)
