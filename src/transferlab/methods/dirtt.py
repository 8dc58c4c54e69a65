"""DIRT-T: decision-boundary iterative refinement with a teacher (Shu et al., ICLR 2018).

Stage 1 is VADA (`transferlab.methods.vada`). Stage 2 refines the VADA model on target alone,
minimising

    λ_t · (conditional entropy(target) + VAT(target)) + β · KL(teacher(x) ‖ model(x))

so that the decision boundaries move away from dense target regions, while the KL term keeps
each refinement close to the previous model: a natural-gradient-like proximal step. As in the
official code, the teacher is the moving-average model, copied when stage 2 starts and again
every `teacher_every` refinement steps (the paper's θ_{n-1}); the optimizer (Adam, with its
state) carries on from stage 1.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import Tensor

from transferlab.data.domain import TrainingView
from transferlab.losses.entropy import entropy
from transferlab.losses.vat import kl_divergence
from transferlab.methods.base import Batch, Stage, optimize
from transferlab.methods.vada import VADA
from transferlab.rules import Rule


class DIRTT(VADA):
    takes_regularizers = False
    limits: ClassVar = {**VADA.limits, "vada_steps": Rule(int, min=0),
                        "refine_steps": Rule(int, min=0), "beta": Rule(float, min=0),
                        "teacher_every": Rule(int, min=1)}

    def __init__(self, vada_steps: int, refine_steps: int, beta: float = 1e-2,
                 teacher_every: int = 5000, **vada: Any) -> None:
        super().__init__(**vada)
        self.vada_steps, self.refine_steps = vada_steps, refine_steps
        self.beta, self.teacher_every = beta, teacher_every
        self.teacher = copy.deepcopy(self.network).requires_grad_(False)
        self.register_buffer("refined", torch.tensor(0))  # refinement steps taken

    def stages(self, view: TrainingView) -> list[Stage]:
        vada = self.vada_stage(view, self.vada_steps)
        refine = Stage("dirt-t", self.refine_steps, self.refine_update,
                       {"target": view.target}, [self._optimizer], anneal_lr=False,
                       on_start=self.update_teacher)
        return [vada, refine]

    def update_teacher(self) -> None:
        self.teacher.load_state_dict(self.average.state_dict())

    def train(self, mode: bool = True) -> DIRTT:
        super().train(mode)
        self.teacher.eval()  # the teacher predicts without dropout or noise, as at test time
        return self

    def refine_update(self, batch: Batch, progress: float) -> dict[str, Tensor]:
        x, _ = batch["target"]
        logits = self.network(x)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        divergence = kl_divergence(teacher_logits, logits).mean()
        target_entropy = entropy(logits).mean()
        target_vat = self.vat(x, logits)
        loss = self.lambda_t * (target_entropy + target_vat) + self.beta * divergence
        optimize(self._optimizer, loss)
        self.update_average()
        self.refined += 1
        if self.refined % self.teacher_every == 0:
            self.update_teacher()
        return {"loss/teacher_kl": divergence, "loss/target_entropy": target_entropy,
                "loss/target_vat": target_vat}
