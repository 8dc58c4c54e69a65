"""Importance weights for the source validation split: w(x) = p_target(x) / p_source(x),
estimated from a domain classifier on features, as the `iwv` and `dev` validators need them.

The classifier is an L2-regularised logistic regression on standardised features (source_val
labelled SOURCE, target_val TARGET), fit by full-batch L-BFGS: convex, so its answer depends on
the data only, not on an initialisation or a batch order. Its logit becomes a density ratio by
Bayes' rule (`transferlab.losses.density_ratio`, one formula, one place).

Cross-fitting: DEV (You et al., ICML 2019) estimates the weights of the validation samples with
a domain classifier that was not trained on them, so that the classifier's overfitting does not
inflate the weights of exactly the samples it is evaluated on. Here source_val is cut into
`folds` parts (by a fixed, seeded permutation); the weights of each part come from a classifier
fit on the other parts and all of target_val (target samples are never weighted, so they need
not be held out). The same weights serve IWV.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from transferlab.losses.density_ratio import density_ratio
from transferlab.nn.discriminator import TARGET


@dataclass(frozen=True)
class LogisticRegression:
    """A fitted linear domain classifier. Its score is the log-odds of TARGET; `logits(x)`
    gives the (N, 2) domain logits `density_ratio` expects (SOURCE column 0)."""

    mean: Tensor
    scale: Tensor
    weight: Tensor
    bias: Tensor

    def logits(self, x: Tensor) -> Tensor:
        score = ((x.double() - self.mean) / self.scale) @ self.weight + self.bias
        out = torch.zeros(len(x), 2, dtype=score.dtype)
        out[:, TARGET] = score
        return out


def fit_domain_classifier(source: Tensor, target: Tensor, l2: float | None = None,
                          max_iter: int = 100) -> LogisticRegression:
    """Logistic regression telling `source` rows (SOURCE) from `target` rows (TARGET), in float64
    on the CPU (deterministic on every device). `l2` is the penalty on the mean log-loss,
    (l2 / 2)‖w‖²; None gives 1 / N, which is scikit-learn's default (C = 1)."""
    x = torch.cat([source, target]).detach().to("cpu", torch.float64)
    is_target = torch.cat([torch.zeros(len(source)), torch.ones(len(target))]).double()
    mean, scale = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / scale
    penalty = 1.0 / len(x) if l2 is None else l2
    weight = torch.zeros(x.shape[1], dtype=torch.float64)
    bias = torch.zeros((), dtype=torch.float64)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter,
                                  line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        # The loss and its gradient in closed form, as autograd would compute them: the
        # mean log-loss's gradient is zᵀ(σ(s) − y) / N. Half the time of a backward pass.
        scores = z @ weight + bias
        residual = (torch.sigmoid(scores) - is_target) / len(z)
        weight.grad = residual @ z + penalty * weight
        bias.grad = residual.sum()
        return (F.binary_cross_entropy_with_logits(scores, is_target)
                + 0.5 * penalty * weight.square().sum())

    with torch.no_grad():
        optimizer.step(closure)
    return LogisticRegression(mean, scale, weight, bias)


@contextmanager
def one_thread() -> Iterator[None]:
    """The fits are a few hundred small matrix products each: waking torch's other threads for
    every one costs more than it saves, badly so on a busy machine (a tiny-pair evaluation:
    0.1 s on one thread, 5 s on two on an oversubscribed 2-core machine); the folds run side by
    side instead, one thread each."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def source_density_ratios(source: Tensor, target: Tensor, folds: int = 5,
                          seed: int = 0) -> Tensor:
    """p_t(x) / p_s(x) at every row of `source` (float64, CPU), each from a classifier fit
    without that row (`folds`-fold cross-fitting, the folds drawn with `seed`)."""
    folds = max(2, min(folds, len(source)))
    g = torch.Generator().manual_seed(seed)
    fold_of = torch.randperm(len(source), generator=g) % folds
    ratios = torch.empty(len(source), dtype=torch.float64)
    source = source.detach().cpu()
    workers = torch.get_num_threads()  # the folds side by side, one thread each

    def fold(k: int) -> None:
        held_out = fold_of == k
        fitted = fit_domain_classifier(source[~held_out], target)
        ratios[held_out] = density_ratio(fitted.logits(source[held_out]),
                                         int((~held_out).sum()), len(target))

    with one_thread(), ThreadPoolExecutor(max(1, min(workers, folds))) as pool:
        list(pool.map(fold, range(folds)))  # each fold writes its own rows
    return ratios
