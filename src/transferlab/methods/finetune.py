"""Fine-tune (model-based transfer): pretrain on labelled source, then tune on a few labelled
target samples per class, drawn with the run's seed from the target *train* split."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from transferlab.data.domain import TrainingView
from transferlab.errors import UserError
from transferlab.methods.base import Method, Stage, supervised_stage
from transferlab.rules import Rule


def few_shot_indices(labels: Tensor, shots: int, num_classes: int, seed: int) -> Tensor:
    """`shots` random indices per class, sorted; fails if a class has fewer samples."""
    g = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    chosen = []
    for c in range(num_classes):
        members = (labels == c).nonzero().squeeze(1)
        if len(members) < shots:
            raise UserError(f"method.shots={shots} but class {c} has only {len(members)} "
                            "target train samples")
        chosen.append(members[torch.randperm(len(members), generator=g)[:shots]])
    return torch.cat(chosen).sort().values


class FineTune(Method):
    uses_target_labels = True
    limits: ClassVar = {"shots": Rule(int, min=1), "pretrain_steps": Rule(int, min=0),
                        "finetune_steps": Rule(int, min=0), "backbone_lr": Rule(float, min=0),
                        "head_lr": Rule(float, min=0)}

    def __init__(self, shots: int, pretrain_steps: int, finetune_steps: int,
                 backbone_lr: float, head_lr: float, **common: Any) -> None:
        super().__init__(**common)
        self.shots = shots
        self.pretrain_steps, self.finetune_steps = pretrain_steps, finetune_steps
        self.backbone_lr, self.head_lr = backbone_lr, head_lr
        self.shot_indices = torch.empty(0, dtype=torch.long)

    def stages(self, view: TrainingView) -> list[Stage]:
        self.shot_indices = few_shot_indices(view.target.labels, self.shots, self.num_classes,
                                             self.seed)
        pretrain = supervised_stage("pretrain", self.network, self.optimizer(self.network),
                                    view.source, self.pretrain_steps, reusable=True)
        tune_optimizer = self.make_optimizer([
            {"params": self.network.encoder.parameters(), "lr": self.backbone_lr},
            {"params": self.network.head.parameters(), "lr": self.head_lr},
        ])
        shots = view.target.subset(self.shot_indices.to(view.target.labels.device))
        finetune = supervised_stage("finetune", self.network, tune_optimizer, shots,
                                    self.finetune_steps)
        return [pretrain, finetune]

    def results(self) -> dict[str, Any]:
        return {"shots_per_class": self.shots, "shot_indices": self.shot_indices.tolist()}
