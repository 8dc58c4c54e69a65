"""TENT (Wang et al., "Tent: fully test-time adaptation by entropy minimization", ICLR 2021):
the source model adapted online to target batches by minimising the entropy of its
predictions, updating only the batch-norm layers' affine parameters (scale and shift), the
layers normalising each batch by its own statistics (training mode). `epochs` passes over
the target (1: each batch once, online, as the paper)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from transferlab.data.domain import Split
from transferlab.losses.entropy import entropy
from transferlab.methods.base import Batch, OptimizerFactory, Stage, optimize
from transferlab.methods.test_time import TestTimeAdaptation
from transferlab.nn.norms import batch_norm_layers


class TENT(TestTimeAdaptation):
    def __init__(self, adapt_optimizer: OptimizerFactory, **common: Any) -> None:
        super().__init__(**common)
        self.make_adapt_optimizer = adapt_optimizer

    def affine_parameters(self) -> list[Tensor]:
        return [p for layer in batch_norm_layers(self.network)
                for p in (layer.weight, layer.bias) if p is not None]

    def adaptation_stage(self, target: Split, steps: int) -> Stage:
        self._tent_optimizer = self.make_adapt_optimizer(self.affine_parameters())
        return Stage("tent", steps, self.adapt, {"target": target}, [self._tent_optimizer],
                     anneal_lr=False, on_start=self.keep_source)

    def adapt(self, batch: Batch, progress: float) -> dict[str, Tensor]:
        x, _ = batch["target"]
        loss = entropy(self.network(x)).mean()
        optimize(self._tent_optimizer, loss)  # holds the affine parameters alone
        return {"loss/target_entropy": loss}
