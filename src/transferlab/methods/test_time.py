"""What the test-time adaptation methods share (AdaBN, TENT): a source model trained as
source-only trains it (the same stored stage, reused from any source-only run alike), then a
stage on target batches alone that changes only the batch-norm layers. Both need a backbone
with batch norm. Source images are still classified by the source model as it was (its
statistics and weights), kept aside when adaptation starts; target images by the adapted one.
"""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar

from torch import Tensor

from transferlab.data.domain import Split, TrainingView
from transferlab.errors import UserError
from transferlab.methods.base import DomainName, Method, Stage, supervised_stage
from transferlab.nn.norms import batch_norm_layers
from transferlab.rules import Rule


class TestTimeAdaptation(Method):
    """Base: `source_steps` of source training, then `epochs` passes over the target in
    batches of `batch_size` through `adaptation_stage`."""

    limits: ClassVar = {"source_steps": Rule(int, min=0), "epochs": Rule(float, min=0),
                        "batch_size": Rule(int, min=1)}
    backbone_overrides: ClassVar[tuple[str, ...]] = ("backbone.batch_norm=true",)

    def __init__(self, source_steps: int, batch_size: int, epochs: float = 1.0,
                 **common: Any) -> None:
        super().__init__(**common)
        if not batch_norm_layers(self.network):
            name = type(self).__name__
            raise UserError(f"method={name.lower()} adapts batch-norm layers, and this backbone "
                            "has none: use one with batch norm, e.g. backbone=dirtt_small, "
                            "backbone=resnet50, or backbone.batch_norm=true (dann_mnist, lenet)")
        self.source_steps, self.batch_size, self.epochs = source_steps, batch_size, epochs
        self.source_network = copy.deepcopy(self.network).requires_grad_(False)

    def stages(self, view: TrainingView) -> list[Stage]:
        source = supervised_stage("source", self.network, self.optimizer(self.network),
                                  view.source, self.source_steps, reusable=True)
        steps = math.ceil(self.epochs * len(view.target) / self.batch_size)
        return [source, self.adaptation_stage(view.target, steps)]

    def adaptation_stage(self, target: Split, steps: int) -> Stage:
        raise NotImplementedError

    def keep_source(self) -> None:
        """When adaptation starts: the source model as it is, for source images."""
        self.source_network.load_state_dict(self.network.state_dict())

    def train(self, mode: bool = True) -> TestTimeAdaptation:
        super().train(mode)
        self.source_network.eval()
        return self

    def outputs(self, x: Tensor, domain: DomainName) -> tuple[Tensor, Tensor]:
        network = self.source_network if domain == "source" else self.network
        features = network.features(x)
        return features, network.head(features)
