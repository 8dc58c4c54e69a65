"""AdaBN (Li et al., "Revisiting batch normalization for practical domain adaptation", ICLR
workshop 2017): the source model with every batch-norm layer's statistics re-estimated on the
target: running means and variances reset, then the cumulative average over the target batches
of `epochs` passes, the weights untouched. No gradient step, no target label."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from transferlab.data.domain import Split
from transferlab.methods.base import Batch, Stage
from transferlab.methods.test_time import TestTimeAdaptation
from transferlab.nn.norms import batch_norm_layers


class AdaBN(TestTimeAdaptation):
    def __init__(self, **common: Any) -> None:
        super().__init__(**common)
        # Set when the estimate starts (a buffer: a run resumed in the middle goes on with it).
        self.register_buffer("estimating", torch.tensor(False))

    def adaptation_stage(self, target: Split, steps: int) -> Stage:
        return Stage("adabn", steps, self.estimate, {"target": target}, [], anneal_lr=False,
                     on_start=self.reset_statistics)

    def reset_statistics(self) -> None:
        self.keep_source()
        for layer in batch_norm_layers(self.network):
            layer.reset_running_stats()
        self.estimating.fill_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> AdaBN:
        super().train(mode)
        if self.estimating:
            for layer in batch_norm_layers(self.network):
                layer.momentum = None  # the cumulative average of every batch seen
        return self

    @torch.no_grad()
    def estimate(self, batch: Batch, progress: float) -> dict[str, Tensor]:
        x, _ = batch["target"]
        self.network(x)  # in training mode: each batch-norm layer folds this batch in
        return {}
