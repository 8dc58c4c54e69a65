"""Evaluators and the evaluation pass that feeds them.

An evaluator is a named number computed from the model's outputs (features and logits) on
some of the pair's splits: `source_test`, `target_test` (reports only), `source_val`,
`target_val` (held out from each domain's train split). It declares the splits it `reads`,
whose labels it uses (`labels`: None, "source" or "target"; a split of the other domain is
handed to it without labels) and whether higher is better. The evaluation pass computes each
split's outputs once, however many evaluators read it, and hands each evaluator only what it
declared, so a validator cannot read a test split or a label it did not ask for.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from transferlab.data.domain import DomainPair, Split, as_input
from transferlab.methods.base import DomainName, Method

SplitName = Literal["source_test", "target_test", "source_val", "target_val"]
SPLITS: tuple[SplitName, ...] = ("source_test", "target_test", "source_val", "target_val")
TEST_SPLITS = ("source_test", "target_test")
# Their TensorBoard tags; a validator's is val/<name>.
REPORT_TAGS = {"source_acc": "acc/source", "target_acc": "acc/target"}


def metric_tag(name: str) -> str:
    """The TensorBoard tag of an evaluator's value."""
    return REPORT_TAGS.get(name, f"val/{name}")


def domain_of(split: SplitName) -> DomainName:
    return "source" if split.startswith("source") else "target"


class Probe:
    """The model on new inputs made from one split's images, for evaluators that probe it
    (MixVal's mixed samples): `images(index)` gives the split's images at `index` as the
    evaluation pass sees them (uint8, centre-cropped where the pair augments), and
    `logits(count, inputs)` the model's class logits, in eval mode, for `count` new inputs
    that `inputs(rows)` makes a batch at a time (float images in the same 0-255 units, for the
    slice `rows` of the `count`), so that memory stays that of one batch."""

    def __init__(self, method: Method, pair: DomainPair, split: Split, domain: DomainName,
                 batch_size: int) -> None:
        self.method, self.pair, self.split = method, pair, split
        self.domain, self.batch_size = domain, batch_size

    def images(self, index: Tensor) -> Tensor:
        images, _ = self.split.take(index)
        return self.pair.augment.center(images) if self.pair.augment else images

    @torch.inference_mode()
    def logits(self, count: int, inputs: Callable[[slice], Tensor]) -> Tensor:
        network = self.method.network
        return torch.cat([self.method.predict(as_input(inputs(slice(i, i + self.batch_size)),
                                                       network.in_channels,
                                                       network.normalization),
                                              self.domain).float().cpu()
                          for i in range(0, count, self.batch_size)])


class PassCache:
    """What several evaluators of one evaluation pass derive alike from the same outputs
    (`iwv` and `dev`: the density ratios of source_val), computed by the first that asks and
    reused by the others; each pass starts with an empty one."""

    def __init__(self) -> None:
        self.values: dict[Hashable, Any] = {}

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        if key not in self.values:
            self.values[key] = compute()
        return self.values[key]


@dataclass(frozen=True)
class Outputs:
    """A split as the model sees it. `labels` is None unless the evaluator uses the labels
    of this split's domain; `features` is None unless it asked for features; `probe` is None
    unless it probes the model (`Evaluator.probes`); `cache` is the pass's `PassCache`."""

    logits: Tensor
    features: Tensor | None = None
    labels: Tensor | None = None
    probe: Probe | None = None
    cache: PassCache = field(default_factory=PassCache)


class Evaluator:
    """Base class: set `reads`, `labels`, `higher_is_better`, `uses_features`, `probes` and
    implement `__call__`."""

    reads: tuple[SplitName, ...] = ()
    labels: DomainName | None = None
    higher_is_better: bool = True
    uses_features: bool = False
    probes: bool = False  # runs the model on new inputs made from the splits it reads

    def __call__(self, outputs: Mapping[SplitName, Outputs]) -> float:
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        """What results.json records about the evaluator, for summaries and selection."""
        return {"reads": list(self.reads), "labels": self.labels,
                "higher_is_better": self.higher_is_better}


class Accuracy(Evaluator):
    """Top-1 accuracy on one split, with that split's labels."""

    def __init__(self, split: SplitName) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        self.reads = (split,)
        self.labels = domain_of(split)

    def __call__(self, outputs: Mapping[SplitName, Outputs]) -> float:
        out = outputs[self.reads[0]]
        return (out.logits.argmax(1) == out.labels).float().mean().item()


@torch.inference_mode()
def model_outputs(method: Method, pair: DomainPair, split: Split, domain: DomainName,
                  batch_size: int, features: bool) -> Outputs:
    logits, feats = [], []
    for images in pair.evaluation_batches(split, batch_size):
        x = as_input(images, method.network.in_channels, method.network.normalization)
        f, y = method.outputs(x, domain)
        logits.append(y.float())
        if features:
            feats.append(f.float().flatten(1))
    empty = torch.empty(0, method.num_classes, device=split.labels.device)
    return Outputs(torch.cat(logits) if logits else empty,
                   torch.cat(feats) if feats else None, split.labels)


@dataclass(frozen=True)
class Evaluation:
    """One evaluation pass: every evaluator's value, and the class logits of the splits the
    caller asked to keep (e.g. target_val's, which a run stores for comparing models)."""

    metrics: dict[str, float]
    logits: dict[SplitName, Tensor]


def evaluate(method: Method, pair: DomainPair, evaluators: Mapping[str, Evaluator],
             batch_size: int) -> dict[str, float]:
    """Every evaluator's value (see `run_evaluation`)."""
    return run_evaluation(method, pair, evaluators, batch_size).metrics


def run_evaluation(method: Method, pair: DomainPair, evaluators: Mapping[str, Evaluator],
                   batch_size: int, keep: Collection[SplitName] = ()) -> Evaluation:
    """Every evaluator's value, in fp32 and eval mode, the model's outputs on each split
    computed once; each evaluator is handed only the splits, labels, features and probes it
    declared. The logits of the splits in `keep` are returned too."""
    was_training = method.training
    method.eval()
    splits = pair.splits()
    wanted: dict[SplitName, bool] = dict.fromkeys(keep, False)
    for e in evaluators.values():
        for s in e.reads:
            wanted[s] = wanted.get(s, False) or e.uses_features
    computed = {s: model_outputs(method, pair, splits[s], domain_of(s), batch_size, features)
                for s, features in wanted.items()}
    metrics, cache = {}, PassCache()
    try:
        for name, e in evaluators.items():
            given = {s: Outputs(computed[s].logits,
                                computed[s].features if e.uses_features else None,
                                computed[s].labels if domain_of(s) == e.labels else None,
                                Probe(method, pair, splits[s], domain_of(s), batch_size)
                                if e.probes else None, cache)
                     for s in e.reads}
            metrics[name] = float(e(given))
    finally:
        method.train(was_training)
    return Evaluation(metrics, {s: computed[s].logits for s in keep})
