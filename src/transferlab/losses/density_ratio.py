"""Density ratios p_target(x) / p_source(x) from a domain classifier, shared by instance
weighting (the `iwerm` method) and the importance-weighted validators (`iwv`, `dev`).

A classifier trained to tell source (label 0) from target (label 1) gives, by Bayes' rule,
p_t(x) / p_s(x) = [p(target | x) / p(source | x)] · [n_source / n_target], where the second
factor undoes the classes' priors in its training data."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from transferlab.nn.discriminator import SOURCE, TARGET


def density_ratio(domain_logits: Tensor, n_source: int, n_target: int) -> Tensor:
    """p_t(x) / p_s(x) for each row of two-class domain logits (SOURCE, TARGET columns)."""
    log_odds = domain_logits[:, TARGET] - domain_logits[:, SOURCE]
    return torch.exp(log_odds + math.log(n_source / n_target))


def normalised_weights(ratio: Tensor, clip: float | None = None) -> Tensor:
    """Importance weights: the ratios clipped at `clip` (None: not clipped), then scaled to mean
    1, so that weighting changes which samples count, not the loss's overall scale."""
    w = ratio if clip is None else ratio.clamp(max=clip)
    return w / w.mean().clamp_min(1e-12)
