"""What every method shares: the `Method` interface, `Stage`, and the supervised step.

A method is an `nn.Module` holding all its networks (so one state dict checkpoints it) that
declares its training as a list of `Stage`s built from a `TrainingView` (training splits only,
target labels masked unless the method declares `uses_target_labels`). The training loop
knows nothing else about it: it draws the batches each stage asks for, calls `stage.update`,
anneals the learning rate, evaluates `outputs` per domain, and logs what `update` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from transferlab.data.domain import Split, TrainingView
from transferlab.errors import UserError
from transferlab.nn import Classifier
from transferlab.schedules import annealed_lr

if TYPE_CHECKING:  # regularizers import config, which imports this module through evaluation
    from transferlab.methods.regularizers import Regularizer

Batch = dict[str, tuple[Tensor, Tensor]]  # stream name → (float images, labels)
# (batch, progress in [0,1)) → scalars to log (tensors or numbers); None logs nothing.
Update = Callable[[Batch, float], Mapping[str, Tensor | float] | None]
OptimizerFactory = Callable[..., Optimizer]
DomainName = Literal["source", "target"]


@dataclass(frozen=True)
class Reuse:
    """Marks a stage whose result the loop may store and reuse in a later run (a pretraining
    stage): `modules` are everything the stage changes besides its optimizers, `settings`
    what else its update depends on (its kind and hyperparameters). Stages of different
    methods with equal settings must train and predict alike; the loop's fingerprint covers
    the rest (data, the starting state of the modules and optimizers, steps, seed, the loop's
    settings, the code). See `transferlab.stage_cache`."""

    modules: Mapping[str, nn.Module]
    settings: Mapping[str, Any]


@dataclass
class Stage:
    """A phase of training. `data` names the splits to stream batches from, all taken from the
    `TrainingView`; `on_start` runs once when the stage begins (not again when a run resumes
    inside it); `reuse`, if set, lets the loop cache the stage's result."""

    name: str
    steps: int
    update: Update
    data: dict[str, Split]
    optimizers: list[Optimizer]
    anneal_lr: bool = True
    on_start: Callable[[], None] | None = None
    reuse: Reuse | None = None


def optimize(optimizers: Optimizer | Sequence[Optimizer], loss: Tensor) -> None:
    """One gradient step of `loss` for one optimizer, or for several that share it (each
    steps its own parameters, in order)."""
    optimizers = [optimizers] if isinstance(optimizers, Optimizer) else list(optimizers)
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()


def supervised_stage(name: str, network: Classifier, optimizer: Optimizer, split: Split,
                     steps: int, reusable: bool = False) -> Stage:
    """Cross-entropy on a labelled split: source-only, target-only, and the pretraining and
    fine-tuning stages of ADDA and fine-tune all use this one step. `reusable`: one run's
    result serves the others (source-only's training is ADDA's and fine-tune's pretraining)."""

    def update(batch: Batch, progress: float) -> dict[str, Tensor]:
        x, y = batch["labelled"]
        loss = F.cross_entropy(network(x), y)
        optimize(optimizer, loss)
        return {"loss/classification": loss}

    reuse = Reuse({"network": network}, {"update": "supervised"}) if reusable else None
    return Stage(name, steps, update, {"labelled": split}, [optimizer], reuse=reuse)


class Method(nn.Module):
    """Base class. Subclasses take their own hyperparameters as keyword arguments (from
    `conf/method/<name>.yaml`) and pass the common ones on to this constructor.

    `lr_mult` maps parameter-name prefixes of the method (e.g. "discriminator",
    "network.head") to learning-rate multipliers; the backbone's own (e.g. 0.1 for pretrained
    layers) come first, the method's override them, and the longest matching prefix wins.
    """

    # Methods that train on target labels by design (the oracle, few-shot fine-tuning) set
    # this; everything else sees target labels as -1. Recorded in results.json.
    uses_target_labels: ClassVar[bool] = False
    # Methods that train in one joint stage set this, and end their update with `joint_step`,
    # which adds the stacked `method.regularizers` (see methods/regularizers.py).
    takes_regularizers: ClassVar[bool] = False
    # What a method needs of the digit backbones (dann_mnist, lenet) to run, as overrides:
    # studies (method=ALL) and the tests that run every method add them.
    backbone_overrides: ClassVar[tuple[str, ...]] = ()

    def __init__(self, network: Classifier, optimizer: OptimizerFactory, steps: int,
                 seed: int = 0, lr_alpha: float = 10.0, lr_beta: float = 0.75,
                 lr_mult: Mapping[str, float] | None = None,
                 regularizers: Mapping[str, Regularizer] | None = None) -> None:
        super().__init__()
        if regularizers and not self.takes_regularizers:
            raise UserError(f"method.regularizers={', '.join(regularizers)}: "
                            f"{type(self).__name__} trains in stages of its own, and "
                            "regularizers stack only on methods that train in one joint stage")
        self.regularizers = dict(regularizers or {})
        self.network = network
        self.make_optimizer = optimizer
        self.steps = steps
        self.seed = seed
        self.lr_alpha, self.lr_beta = lr_alpha, lr_beta
        self.lr_mult = {**{f"network.{k}": v for k, v in network.lr_mult.items()},
                        **(lr_mult or {})}

    @property
    def num_classes(self) -> int:
        return self.network.num_classes

    def lr_factor(self, progress: float) -> float:
        return annealed_lr(progress, self.lr_alpha, self.lr_beta)

    def optimizer(self, *modules: nn.Module, factory: OptimizerFactory | None = None
                  ) -> Optimizer:
        """An optimizer (the configured one, or `factory`) over the parameters of `modules`,
        one parameter group per learning-rate multiplier (see `lr_mult`)."""
        names = {id(p): n for n, p in self.named_parameters()}
        groups: dict[float, list[Tensor]] = {}
        for module in modules:
            for p in module.parameters():
                groups.setdefault(self._multiplier(names[id(p)]), []).append(p)
        optimizer = (factory or self.make_optimizer)(
            [{"params": ps, "lr_mult": mult} for mult, ps in groups.items()])
        for group in optimizer.param_groups:
            group["lr"] *= group["lr_mult"]
        return optimizer

    def _multiplier(self, name: str) -> float:
        matches = [p for p in self.lr_mult if name == p or name.startswith(p + ".")]
        return self.lr_mult[max(matches, key=len)] if matches else 1.0

    def stages(self, view: TrainingView) -> list[Stage]:
        raise NotImplementedError

    def joint_stage(self, name: str, view: TrainingView, update: Update) -> list[Stage]:
        """The one stage of a method that trains everything it holds (network, discriminators,
        extra heads) with one optimizer on source and target batches: `self._optimizer`."""
        self._optimizer = self.optimizer(self)
        data = {"source": view.source, "target": view.target}
        return [Stage(name, self.steps, update, data, [self._optimizer])]

    def joint_step(self, loss: Tensor, scalars: dict[str, Tensor | float],
                   target_logits: Tensor | Callable[[], Tensor],
                   optimizer: Optimizer | None = None) -> None:
        """The joint stage's optimizer step (`self._optimizer`, or `optimizer`) on `loss` plus
        the stacked regularizers' terms on the target batch's logits; `target_logits` may be a
        function computing them, called only when a regularizer is stacked."""
        if self.regularizers:
            logits = target_logits() if callable(target_logits) else target_logits
            loss = self.regularized(loss, logits, scalars)
        optimize(optimizer or self._optimizer, loss)

    def regularized(self, loss: Tensor, target_logits: Tensor,
                    scalars: dict[str, Tensor | float]) -> Tensor:
        """`loss` plus each configured regulariser's weighted term on the target batch's
        logits; each term is added to `scalars` as `regularizer/<name>`."""
        for name, regularizer in self.regularizers.items():
            term = regularizer(target_logits)
            scalars[f"regularizer/{name}"] = term
            loss = loss + regularizer.weight * term
        return loss

    def outputs(self, x: Tensor, domain: DomainName) -> tuple[Tensor, Tensor]:
        """Features and class logits for images of `domain`; methods with a separate target
        network (ADDA) or several classifiers (MCD) override this."""
        features = self.network.features(x)
        return features, self.network.head(features)

    def predict(self, x: Tensor, domain: DomainName) -> Tensor:
        return self.outputs(x, domain)[1]

    def results(self) -> dict[str, Any]:
        """Method-specific facts for results.json (e.g. which target samples were used)."""
        return {}
