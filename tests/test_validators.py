"""The validators on cases whose answers are known by hand, and the rule that nothing but the
two reports reads a test split."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers import compose_config
from transferlab.config import CONFIG_DIR
from transferlab.errors import UserError
from transferlab.evaluation import (
    BatchNuclearNorm,
    DeepEmbeddedValidation,
    Entropy,
    Evaluator,
    ImportanceWeightedValidation,
    InformationMaximization,
    Outputs,
    SoftNeighbourhoodDensity,
    evaluate,
)
from transferlab.evaluation.base import SPLITS, TEST_SPLITS, domain_of
from transferlab.evaluation.importance import source_density_ratios
from transferlab.evaluation.validators import dev_risk, soft_neighbourhood_density
from transferlab.experiment import build, build_evaluators
from transferlab.rules import REPORTS

BIG = 50.0  # a logit margin that makes softmax one-hot to float precision


def on_target(logits: torch.Tensor) -> dict[str, Outputs]:
    return {"target_val": Outputs(logits)}


def one_hot_logits(labels: list[int], classes: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(labels), classes).float() * BIG


def test_entropy_validator_is_zero_for_one_hot_and_log_c_for_uniform():
    assert Entropy()(on_target(one_hot_logits([0, 3, 1], 4))) == pytest.approx(0.0, abs=1e-6)
    assert Entropy()(on_target(torch.zeros(5, 7))) == pytest.approx(math.log(7))
    assert not Entropy.higher_is_better


def test_im_validator_is_marginal_minus_conditional_entropy_on_a_hand_case():
    # p1 = (0.5, 0.5), p2 = (0.9, 0.1): mean (0.7, 0.3), H(mean) = 0.6108643 (marginal);
    # conditional = (log 2 + H(0.9, 0.1)) / 2 = 0.5091151; IM = 0.1017492.
    logits = torch.tensor([[0.5, 0.5], [0.9, 0.1]]).log()
    assert InformationMaximization()(on_target(logits)) == pytest.approx(0.1017492, abs=1e-6)
    # Confident and balanced: log C; collapsed onto one class: 0.
    assert InformationMaximization()(on_target(one_hot_logits([0, 1, 2], 3))) == \
        pytest.approx(math.log(3), abs=1e-5)
    assert InformationMaximization()(on_target(one_hot_logits([2, 2], 3))) == \
        pytest.approx(0.0, abs=1e-5)
    assert InformationMaximization.higher_is_better


def test_bnm_validator_is_the_nuclear_norm_over_n():
    # Four one-hot rows on distinct classes: four orthonormal rows, nuclear norm 4, over N = 4.
    assert BatchNuclearNorm()(on_target(one_hot_logits([0, 1, 2, 3], 5))) == pytest.approx(1.0)
    assert BatchNuclearNorm()(on_target(one_hot_logits([1, 1, 1, 1], 5))) == pytest.approx(0.5)


def test_snd_on_hand_cases():
    # N identical predictions: every other sample is an equally close neighbour, the softmax
    # over them is uniform, entropy log(N - 1) for each sample.
    assert soft_neighbourhood_density(torch.zeros(6, 3)).item() == pytest.approx(math.log(5))
    # Two samples predict class 0, one class 1: the two see each other only (entropy 0); the
    # third is orthogonal to both (cosine 0 to each): uniform over two, log 2. Mean log 2 / 3.
    snd = soft_neighbourhood_density(one_hot_logits([0, 0, 1], 2)).item()
    assert snd == pytest.approx(math.log(2) / 3, abs=1e-6)
    # Rows computed in blocks give the same answer as all at once.
    logits = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(soft_neighbourhood_density(logits, rows_per_block=7),
                               soft_neighbourhood_density(logits))


def test_snd_is_higher_for_a_well_clustered_target_than_for_a_scrambled_one():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 10
    # Confident predictions in ten tight clusters, one per class ...
    clustered = 6.0 * F.one_hot(labels, 10).float() + 0.3 * torch.randn(200, 10, generator=g)
    # ... and predictions scattered over the simplex, no two alike.
    scrambled = 3.0 * torch.randn(200, 10, generator=g)
    validator = SoftNeighbourhoodDensity()
    assert validator(on_target(clustered)) > validator(on_target(scrambled)) + 0.5
    assert SoftNeighbourhoodDensity.higher_is_better


def test_importance_weights_match_the_true_density_ratio_of_a_1d_gaussian_shift():
    # Source N(0, 1), target N(1, 1): p_t(x) / p_s(x) = exp(x - 1/2). Through the validators'
    # own fitting code (cross-fitted logistic regression, different sample sizes).
    g = torch.Generator().manual_seed(0)
    source = torch.randn(5000, 1, generator=g)
    target = torch.randn(1000, 1, generator=g) + 1
    ratios = source_density_ratios(source, target, folds=5, seed=0)
    true = torch.exp(source.squeeze(1).double() - 0.5)
    central = (source.squeeze(1) > -1.5) & (source.squeeze(1) < 2.5)
    torch.testing.assert_close(ratios[central], true[central], rtol=0.15, atol=0.0)
    assert ratios.mean().item() == pytest.approx(1.0, abs=0.1)  # E_s[w] = 1


def test_dev_risk_follows_its_formula_on_a_hand_case():
    # ℓ = (1, 2, 3), w = (0.5, 1, 2.5): L = w·ℓ = (0.5, 2, 7.5), mean(L) = 10/3, mean(w) = 4/3,
    # Cov(L, w) = 23/6, Var(w) = 13/12, η = -46/13: DEV = 10/3 + η (4/3 - 1) = 28/13.
    losses = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    weights = torch.tensor([0.5, 1.0, 2.5], dtype=torch.float64)
    assert dev_risk(losses, weights).item() == pytest.approx(28 / 13)
    # Without weighting it is the plain mean loss.
    assert dev_risk(losses, torch.ones(3, dtype=torch.float64)).item() == pytest.approx(2.0)


def labelled_source_and_target(shift: float) -> dict[str, Outputs]:
    """400 source_val samples with labels, features and logits, and a target_val whose
    features are the source's shifted by `shift` (0: the same domain)."""
    g = torch.Generator().manual_seed(1)
    features = torch.randn(400, 8, generator=g)
    labels = torch.randint(0, 3, (400,), generator=g)
    logits = 2.0 * F.one_hot(labels, 3).float() + torch.randn(400, 3, generator=g)
    target_features = torch.randn(400, 8, generator=g) + shift
    return {"source_val": Outputs(logits, features, labels),
            "target_val": Outputs(torch.zeros(400, 3), target_features)}


def test_dev_and_iwv_equal_the_plain_validation_loss_and_accuracy_when_domains_are_the_same():
    outputs = labelled_source_and_target(shift=0.0)
    source = outputs["source_val"]
    loss = F.cross_entropy(source.logits, source.labels).item()
    accuracy = (source.logits.argmax(1) == source.labels).float().mean().item()
    assert DeepEmbeddedValidation()(outputs) == pytest.approx(loss, rel=0.02)
    assert ImportanceWeightedValidation()(outputs) == pytest.approx(accuracy, rel=0.02)
    # A shifted target moves the weights, and with them the estimate.
    shifted = labelled_source_and_target(shift=1.0)
    assert abs(DeepEmbeddedValidation()(shifted) - loss) > 0.02
    assert not DeepEmbeddedValidation.higher_is_better
    assert ImportanceWeightedValidation.higher_is_better


def test_iwv_and_dev_estimate_target_accuracy_and_loss_under_covariate_shift():
    # 1-D features; a prediction is right (cross-entropy log(1 + e^-2)) where x > 0 and wrong
    # (log(1 + e^2)) elsewhere. Source x ~ N(0, 1): accuracy 1/2. Target x ~ N(1.5, 1): its
    # accuracy would be Φ(1.5) = 0.9332 and its cross-entropy 0.9332·0.1269 + 0.0668·2.1269
    # = 0.2605, which the weighting should recover from the labelled source alone.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 1, generator=g)
    labels = (x.squeeze(1) <= 0).long()                # class 1 where the prediction is wrong
    logits = torch.tensor([2.0, 0.0]).expand(5000, 2)  # always predicts class 0
    outputs = {"source_val": Outputs(logits, x, labels),
               "target_val": Outputs(torch.zeros(2000, 2),
                                     torch.randn(2000, 1, generator=g) + 1.5)}
    assert ImportanceWeightedValidation()(outputs) == pytest.approx(0.9332, abs=0.03)
    assert DeepEmbeddedValidation()(outputs) == pytest.approx(0.2605, abs=0.03)
    assert F.cross_entropy(logits, labels).item() == pytest.approx(1.13, abs=0.03)  # unweighted


def test_iwv_and_dev_share_one_cross_fitted_domain_classifier_per_evaluation(monkeypatch):
    import transferlab.evaluation.importance as importance

    trained_on = []
    fit = importance.fit_domain_classifier

    def recording_fit(source, target, **kwargs):
        trained_on.append({int(i) for i in source[:, 0]})
        return fit(source, target, **kwargs)

    monkeypatch.setattr(importance, "fit_domain_classifier", recording_fit)
    outputs = labelled_source_and_target(shift=0.5)
    marked = outputs["source_val"].features.clone()
    marked[:, 0] = torch.arange(len(marked))  # column 0 names the sample
    outputs["source_val"] = Outputs(outputs["source_val"].logits, marked,
                                    outputs["source_val"].labels)
    ImportanceWeightedValidation(folds=3)(outputs)
    DeepEmbeddedValidation(folds=3)(outputs)
    assert len(trained_on) == 3  # one fit per fold, shared by both
    # Cross-fitting: each fit leaves out one fold; the folds cover every sample once.
    held_out = [set(range(400)) - seen for seen in trained_on]
    assert all(100 < len(h) < 170 for h in held_out)
    assert set().union(*held_out) == set(range(400)) and sum(map(len, held_out)) == 400
    DeepEmbeddedValidation(folds=3)(labelled_source_and_target(shift=0.5))  # new tensors
    assert len(trained_on) == 6


def configured_evaluators() -> dict[str, dict]:
    """Every evaluator of every config in conf/evaluation/, by name."""
    found = {}
    for path in sorted(Path(CONFIG_DIR, "evaluation").glob("*.yaml")):
        found.update(OmegaConf.to_container(OmegaConf.load(path).evaluators))
    return found


def test_no_validator_reads_a_test_split():
    configured = configured_evaluators()
    assert {"source_val_acc", "iwv", "dev", "entropy", "im", "snd", "bnm", "mixval",
            "target_val_acc"} <= set(configured)
    for name, node in configured.items():
        evaluator = instantiate(node)
        assert set(evaluator.reads) <= set(SPLITS), name
        if name not in REPORTS:
            assert not set(evaluator.reads) & set(TEST_SPLITS), f"{name} reads a test split"
        if evaluator.labels == "target" and name not in REPORTS:
            assert name == "target_val_acc"  # the one validator for studies only


def test_a_configured_validator_that_reads_a_test_split_is_refused():
    cfg = compose_config("data=tiny", "device=cpu", "evaluation.validators=[peek]",
                         "+evaluation.evaluators.peek={_target_: "
                         "transferlab.evaluation.Accuracy, split: target_test}")
    with pytest.raises(UserError, match=r"evaluation\.evaluators\.peek reads target_test"):
        build_evaluators(cfg)


class Recorder(Evaluator):
    """Declares what `inner` declares, records what it is handed, and lets `inner` answer."""

    def __init__(self, inner: Evaluator) -> None:
        self.inner, self.handed = inner, {}
        self.reads, self.labels = inner.reads, inner.labels
        self.uses_features, self.probes = inner.uses_features, inner.probes

    def __call__(self, outputs):
        self.handed = dict(outputs)
        return self.inner(outputs)


def test_evaluate_hands_every_configured_evaluator_only_what_it_declared():
    cfg = compose_config("data=tiny", "device=cpu")
    pair, method = build(cfg, torch.device("cpu"))
    recorders = {name: Recorder(e) for name, e in build_evaluators(cfg).items()}
    assert set(recorders) == {*REPORTS, *cfg.evaluation.validators}
    metrics = evaluate(method, pair, recorders, batch_size=64)
    assert all(math.isfinite(v) for v in metrics.values())
    for name, r in recorders.items():
        assert set(r.handed) == set(r.reads), name
        for split, out in r.handed.items():
            assert (out.labels is not None) == (domain_of(split) == r.labels), (name, split)
            assert (out.features is not None) == r.uses_features, (name, split)
            assert (out.probe is not None) == r.probes, (name, split)


def test_the_closed_form_parallel_fits_equal_autograd_fits_one_after_another():
    """The density ratios iwv and dev read: the closed-form gradient and folds side by side
    give the numbers autograd gives with the folds one after another."""
    import torch.nn.functional as F

    from transferlab.evaluation.importance import source_density_ratios
    from transferlab.losses.density_ratio import density_ratio

    g = torch.Generator().manual_seed(0)
    source = torch.relu(torch.randn(300, 16, generator=g))
    target = torch.relu(torch.randn(100, 16, generator=g) + 0.3)

    def autograd_fit(s, t):
        x = torch.cat([s, t]).double()
        y = torch.cat([torch.zeros(len(s)), torch.ones(len(t))]).double()
        mean, scale = x.mean(0), x.std(0).clamp_min(1e-6)
        z = (x - mean) / scale
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=100, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = (F.binary_cross_entropy_with_logits(z @ w + b, y)
                    + 0.5 / len(x) * w.square().sum())
            loss.backward()
            return loss

        opt.step(closure)
        return lambda rows: ((rows.double() - mean) / scale) @ w.detach() + b.detach()

    fold_of = torch.randperm(300, generator=torch.Generator().manual_seed(0)) % 5
    expected = torch.empty(300, dtype=torch.float64)
    for k in range(5):
        held = fold_of == k
        score = autograd_fit(source[~held], target)(source[held])
        logits = torch.stack([torch.zeros_like(score), score], 1)
        expected[held] = density_ratio(logits, int((~held).sum()), 100)
    torch.set_num_threads(2)
    torch.testing.assert_close(source_density_ratios(source, target, 5, 0), expected,
                               rtol=1e-9, atol=0)
