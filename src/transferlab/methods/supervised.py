"""The two baselines: train on labelled source only (the lower bound of adaptation) or on
labelled target (the oracle upper bound, which uses labels UDA never has)."""

from __future__ import annotations

from typing import Any, ClassVar

from transferlab.data.domain import TrainingView
from transferlab.methods.base import DomainName, Method, Stage, supervised_stage
from transferlab.rules import Rule


class Supervised(Method):
    limits: ClassVar = {"train_on": Rule(str, choices=("source", "target"))}

    def __init__(self, train_on: DomainName = "source", **common: Any) -> None:
        super().__init__(**common)
        self.train_on = train_on
        self.uses_target_labels = train_on == "target"

    def stages(self, view: TrainingView) -> list[Stage]:
        split = view.source if self.train_on == "source" else view.target
        return [supervised_stage(f"train-{self.train_on}", self.network,
                                 self.optimizer(self.network), split, self.steps, reusable=True)]
