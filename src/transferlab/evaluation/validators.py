"""Validators: numbers that estimate how good a model is on the target domain without target
labels, for choosing hyperparameters and checkpoints. Each reads only the validation splits
(source_val: held out of source train, labelled; target_val: held out of target train, read
without labels) and is built on the shared quantities in `transferlab.losses`.

- `iwv` (higher is better): source_val accuracy, importance-weighted to the target;
- `dev` (lower): the same weighting of the cross-entropy, with DEV's control variate;
- `entropy` (lower): mean entropy of the target_val predictions;
- `im` (higher): information maximisation, confident and diverse predictions;
- `snd` (higher): soft neighbourhood density of the predictions;
- `bnm` (higher): batch nuclear norm of the predictions.

`source_val_acc` and `target_val_acc` are `Accuracy` on those splits (`evaluation.base`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from transferlab.evaluation.base import Evaluator, Outputs, SplitName
from transferlab.evaluation.importance import source_density_ratios
from transferlab.losses.density_ratio import normalised_weights
from transferlab.losses.entropy import batch_nuclear_norm, entropy, information_maximization
from transferlab.rules import Rule


class TargetPredictions(Evaluator):
    """Base of the validators that read only the target_val predictions, without labels."""

    reads: tuple[SplitName, ...] = ("target_val",)

    def __call__(self, outputs: Mapping[SplitName, Outputs]) -> float:
        return float(self.score(outputs["target_val"].logits))

    def score(self, logits: Tensor) -> Tensor:
        raise NotImplementedError


class Entropy(TargetPredictions):
    """Mean entropy of the target predictions (Grandvalet & Bengio, NeurIPS 2004, as a
    criterion; Morerio et al., ICLR 2018, for choosing UDA models): confident predictions on
    target score low. Fooled by confident mistakes."""

    higher_is_better = False

    def score(self, logits: Tensor) -> Tensor:
        return entropy(logits).mean()


class InformationMaximization(TargetPredictions):
    """H(mean prediction) − mean H(prediction) (Gomes et al., NeurIPS 2010; Shi & Sha, ICML
    2012): high when each prediction is confident and the predictions use all classes."""

    def score(self, logits: Tensor) -> Tensor:
        return information_maximization(logits)[0]


class BatchNuclearNorm(TargetPredictions):
    """‖softmax(logits)‖_* / N (Cui et al., CVPR 2020): confident and diverse predictions."""

    def score(self, logits: Tensor) -> Tensor:
        return batch_nuclear_norm(logits)


def soft_neighbourhood_density(logits: Tensor, temperature: float = 0.05,
                               rows_per_block: int = 1024) -> Tensor:
    """SND (Saito et al., ICCV 2021): the mean over samples of the entropy of the softmax, at
    `temperature`, of the sample's cosine similarities to all other samples, computed on the
    softmax predictions. High when each prediction has many close neighbours, i.e. the target
    predictions form dense clusters. A sample is excluded from its own neighbourhood by giving
    it the lowest possible similarity, −1, as the authors' code does. Blocks of rows bound the
    memory of the N × N similarities."""
    p = F.normalize(F.softmax(logits.float(), dim=1), dim=1)
    total = torch.zeros((), device=logits.device)
    for start in range(0, len(p), rows_per_block):
        block = p[start : start + rows_per_block] @ p.t()
        rows = torch.arange(len(block), device=p.device)
        block[rows, rows + start] = -1.0
        total = total + entropy(block / temperature).sum()
    return total / max(len(p), 1)


class SoftNeighbourhoodDensity(TargetPredictions):
    """SND with the paper's temperature 0.05 on the softmax predictions."""

    limits: ClassVar = {"temperature": Rule(float, min=1e-6)}

    def __init__(self, temperature: float = 0.05) -> None:
        self.temperature = temperature

    def score(self, logits: Tensor) -> Tensor:
        return soft_neighbourhood_density(logits, self.temperature)


def dev_risk(losses: Tensor, weights: Tensor) -> Tensor:
    """Deep embedded validation's risk (You et al., ICML 2019, Alg. 1): with weighted losses
    L = w·ℓ, the control variate η = −Cov(L, w) / Var(w) gives mean(L) + η·mean(w) − η, which
    has the expectation of mean(L) (E[w] = 1 under the source) and a lower variance. η = 0 when
    the weights do not vary."""
    weighted = weights * losses
    variance = weights.var()
    if not variance > 0:
        return weighted.mean()
    covariance = ((weighted - weighted.mean()) * (weights - weights.mean())).sum() / (
        len(weights) - 1)
    eta = -covariance / variance
    return weighted.mean() + eta * weights.mean() - eta


class ImportanceWeighted(Evaluator):
    """Base of `iwv` and `dev`: labelled source_val predictions, weighted by p_t(x) / p_s(x)
    from a domain classifier on the features of source_val and target_val (cross-fitted over
    `folds` folds drawn with `seed`, see `evaluation.importance`)."""

    reads: tuple[SplitName, ...] = ("source_val", "target_val")
    labels = "source"
    uses_features = True
    limits: ClassVar = {"folds": Rule(int, min=2), "seed": Rule(int, min=0)}

    def __init__(self, folds: int = 5, seed: int = 0) -> None:
        self.folds, self.seed = folds, seed

    def __call__(self, outputs: Mapping[SplitName, Outputs]) -> float:
        source, target = outputs["source_val"], outputs["target_val"]
        # iwv and dev fit the same classifiers: the first of them in a pass fits, the other reuses
        ratios = source.cache.get(("density_ratios", self.folds, self.seed),
                                  lambda: source_density_ratios(source.features, target.features,
                                                                self.folds, self.seed))
        logits = source.logits.detach().to("cpu", torch.float64)
        return float(self.score(logits, source.labels.cpu(), ratios))

    def score(self, logits: Tensor, labels: Tensor, ratios: Tensor) -> Tensor:
        raise NotImplementedError


class ImportanceWeightedValidation(ImportanceWeighted):
    """IWV (Sugiyama et al., JMLR 2007): source_val accuracy with each sample weighted by its
    density ratio, an estimate of target accuracy; the weights are self-normalised (sum 1),
    so it stays an accuracy. With equal weights it is `source_val_acc`."""

    def score(self, logits: Tensor, labels: Tensor, ratios: Tensor) -> Tensor:
        correct = (logits.argmax(1) == labels).double()
        return (normalised_weights(ratios) * correct).mean()


class DeepEmbeddedValidation(ImportanceWeighted):
    """DEV (You et al., ICML 2019): the density-ratio-weighted source_val cross-entropy with
    its control variate (`dev_risk`), an estimate of the target risk; lower is better."""

    higher_is_better = False

    def score(self, logits: Tensor, labels: Tensor, ratios: Tensor) -> Tensor:
        return dev_risk(F.cross_entropy(logits, labels, reduction="none"), ratios)
