"""The annealing schedules of the DANN paper (JMLR 2016, section 5.2.2), as functions of the
training progress p in [0, 1]."""

from __future__ import annotations

import math


def dann_lambda(progress: float, gamma: float = 10.0, max_value: float = 1.0) -> float:
    """λ_p = 2 / (1 + exp(-γ p)) - 1: starts at 0 so the domain classifier's noisy early
    signal does not disturb the features, and rises to `max_value`."""
    return max_value * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0)


def annealed_lr(progress: float, alpha: float = 10.0, beta: float = 0.75) -> float:
    """The factor 1 / (1 + α p)^β by which μ_p = μ0 / (1 + α p)^β scales the base rate μ0."""
    return 1.0 / (1.0 + alpha * progress) ** beta
