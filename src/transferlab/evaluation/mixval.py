"""MixVal (Hu et al., "Mixed samples as probes for unsupervised model selection in domain
adaptation", NeurIPS 2023): probe a model with mixups of target images and check that it
predicts what its own pseudo-labels say the mixture should be.

Each target image gets the model's predicted class as its pseudo-label. Images are cut into
consecutive chunks of `chunk` images and, within a chunk, image i is mixed with the image at
the mirrored position, x = λ·x_i + (1 − λ)·x_j with λ = 0.55, so x_i dominates. A probe is
passed when the model predicts x_i's pseudo-label for the mixture.
- intra-cluster probes: the images sorted by pseudo-label first, so that mirrored partners
  mostly share it; scored on the pairs that do (is the cluster solid between its members?);
- inter-cluster probes: the images in their own order (a random sample of the target domain),
  scored on the pairs whose pseudo-labels differ (does the decision boundary fall between
  clusters, on the side of the dominant image?).
The ICE score of each kind is the fraction of its probes passed; `both` averages the two, as
the paper's combined criterion does. Higher is better.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import ClassVar, Literal

import torch
from torch import Tensor

from transferlab.evaluation.base import Evaluator, Outputs, SplitName
from transferlab.rules import Rule

Kind = Literal["intra", "inter", "both"]


def mirrored_partners(count: int, chunk: int) -> Tensor:
    """Each position's partner: the mirrored position within its chunk of `chunk`."""
    index = torch.arange(count)
    start = index // chunk * chunk
    end = torch.clamp(start + chunk, max=count)
    return start + end - 1 - index


def ice_score(pseudo: Tensor, order: Tensor, logits_of: Callable[[Tensor, Tensor], Tensor],
              same: bool, chunk: int) -> float:
    """The fraction of probes passed: images taken in `order`, each mixed with its mirrored
    partner in its chunk of `chunk`, scored on the pairs whose pseudo-labels are equal
    (`same`) or differ; `logits_of(a, b)` is the model's logits for the mixtures of rows a
    with rows b. NaN when there is no such pair."""
    a = order
    b = order[mirrored_partners(len(order), chunk)]
    chosen = (pseudo[a] == pseudo[b]) == same
    if not chosen.any():
        return math.nan
    a, b = a[chosen], b[chosen]
    predicted = logits_of(a, b).argmax(1)
    return (predicted == pseudo[a]).double().mean().item()


class MixVal(Evaluator):
    """MixVal's ICE score on target_val, read without labels: `probes` "intra", "inter" or
    "both" (their mean); `mix` the dominant image's weight (the paper's 0.55); `chunk` the
    mixing chunk (the authors' batch of 128)."""

    reads: tuple[SplitName, ...] = ("target_val",)
    probes = True
    # The dominant image weighs more than its partner (mix = 1: the image itself).
    limits: ClassVar = {"kind": Rule(str, choices=("intra", "inter", "both")),
                        "mix": Rule(float, min=0.5, max=1.0), "chunk": Rule(int, min=1)}

    def __init__(self, kind: Kind = "both", mix: float = 0.55, chunk: int = 128) -> None:
        if kind not in ("intra", "inter", "both"):
            raise ValueError(f"kind={kind!r}; valid: intra, inter, both")
        self.kind, self.mix, self.chunk = kind, mix, chunk

    def __call__(self, outputs: Mapping[SplitName, Outputs]) -> float:
        out = outputs["target_val"]
        assert out.probe is not None
        probe = out.probe
        pseudo = out.logits.argmax(1).cpu()

        def logits_of(a: Tensor, b: Tensor) -> Tensor:
            def mixtures(rows: slice) -> Tensor:
                return (self.mix * probe.images(a[rows]).float()
                        + (1 - self.mix) * probe.images(b[rows]).float())

            return probe.logits(len(a), mixtures)

        scores = []
        if self.kind in ("intra", "both"):
            order = torch.sort(pseudo, stable=True).indices
            scores.append(ice_score(pseudo, order, logits_of, True, self.chunk))
        if self.kind in ("inter", "both"):
            order = torch.arange(len(pseudo))
            scores.append(ice_score(pseudo, order, logits_of, False, self.chunk))
        defined = [s for s in scores if not math.isnan(s)]
        return sum(defined) / len(defined) if defined else math.nan
