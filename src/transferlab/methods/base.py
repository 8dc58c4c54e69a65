"""What every method shares: the `Method` interface, `Stage`, and the supervised step.

A method is an `nn.Module` holding all its networks (so one state dict checkpoints it) that
declares its training as a list of `Stage`s. The training loop knows nothing else about it:
it draws the batches each stage asks for, calls `stage.update`, anneals the learning rate,
evaluates `predict` per domain, and logs what `update` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from transferlab.data.domain import DomainPair, Split
from transferlab.nn import Classifier
from transferlab.schedules import annealed_lr

Batch = dict[str, tuple[Tensor, Tensor]]  # stream name → (float images, labels)
Update = Callable[[Batch, float], dict[str, Tensor]]  # (batch, progress in [0,1)) → to log
OptimizerFactory = Callable[..., Optimizer]
DomainName = Literal["source", "target"]


@dataclass
class Stage:
    """A phase of training. `data` names the splits to stream batches from (labels of the
    unlabelled target are masked to -1 before they get here); `on_start` runs once when the
    stage begins (not again when a run resumes inside it)."""

    name: str
    steps: int
    update: Update
    data: dict[str, Split]
    optimizers: list[Optimizer]
    anneal_lr: bool = True
    on_start: Callable[[], None] | None = None


def unlabelled(split: Split) -> Split:
    """The split with its labels replaced by -1, so adaptation code cannot read them."""
    return Split(split.images, torch.full_like(split.labels, -1))


def optimize(optimizer: Optimizer, loss: Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def supervised_stage(name: str, network: Classifier, optimizer: Optimizer, split: Split,
                     steps: int) -> Stage:
    """Cross-entropy on a labelled split: source-only, target-only, and the pretraining and
    fine-tuning stages of ADDA and fine-tune all use this one step."""

    def update(batch: Batch, progress: float) -> dict[str, Tensor]:
        x, y = batch["labelled"]
        loss = F.cross_entropy(network(x), y)
        optimize(optimizer, loss)
        return {"loss/classification": loss}

    return Stage(name, steps, update, {"labelled": split}, [optimizer])


class Method(nn.Module):
    """Base class. Subclasses take their own hyperparameters as keyword arguments (from
    `conf/method/<name>.yaml`) and pass the common ones on to this constructor."""

    def __init__(self, network: Classifier, optimizer: OptimizerFactory, steps: int,
                 seed: int = 0, lr_alpha: float = 10.0, lr_beta: float = 0.75) -> None:
        super().__init__()
        self.network = network
        self.make_optimizer = optimizer
        self.steps = steps
        self.seed = seed
        self.lr_alpha, self.lr_beta = lr_alpha, lr_beta

    def lr_factor(self, progress: float) -> float:
        return annealed_lr(progress, self.lr_alpha, self.lr_beta)

    def optimizer(self, params: Iterable[Tensor] | Iterable[dict]) -> Optimizer:
        return self.make_optimizer(params)

    def stages(self, pair: DomainPair) -> list[Stage]:
        raise NotImplementedError

    def predict(self, x: Tensor, domain: DomainName) -> Tensor:
        """Class logits for images of `domain`; adaptation methods with a separate target
        network override this."""
        return self.network(x)

    def results(self) -> dict[str, Any]:
        """Method-specific facts for results.json (e.g. which target samples were used)."""
        return {}
