"""Taking one update of a method with plain SGD at rate 1, so that each parameter changes by
minus its gradient: the way the method tests compare an update against its equation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from helpers import compose_config
from transferlab.data.domain import DomainPair, as_input
from transferlab.experiment import build
from transferlab.methods.base import Method


def build_method(*overrides: str) -> tuple[DomainPair, Method]:
    """A method on the tiny pair, in float64 (exact comparisons), its stages built."""
    cfg = compose_config("data=tiny", "device=cpu", *overrides)
    torch.manual_seed(0)
    pair, method = build(cfg, torch.device("cpu"))
    method = method.double()
    method.stages(pair.training_view(method.uses_target_labels))
    return pair, method


def batches(pair: DomainPair, n: int = 12) -> dict[str, tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(0)
    view = pair.training_view(target_labels=False)

    def take(split):
        index = torch.randperm(len(split), generator=g)[:n]
        return as_input(split.images[index], pair.channels).double(), split.labels[index]

    return {"source": take(view.source), "target": take(view.target)}


def sgd_step(method: Method, update: Callable, batch: dict, seed: int = 7,
             optimizers: tuple[str, ...] = ("_optimizer",)) -> tuple[dict[str, Tensor], dict]:
    """Run `update` with the method's `optimizers` (attribute names) each replaced by SGD at
    rate 1 over the same parameters; return how each trained parameter changed and the logged
    scalars."""
    for name in optimizers:
        params = [p for g in getattr(method, name).param_groups for p in g["params"]]
        setattr(method, name, torch.optim.SGD(params, lr=1.0))
    trained = {n: p for n, p in method.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trained.items()}
    torch.manual_seed(seed)
    scalars = update(batch, 0.0)
    return {n: p.detach() - before[n] for n, p in trained.items()}, scalars


def expected_step(reference: Method, loss_fn: Callable[[], Tensor], seed: int = 7
                  ) -> dict[str, Tensor]:
    """Minus the gradient of `loss_fn()` for each parameter of `reference`."""
    torch.manual_seed(seed)
    loss_fn().backward()
    return {n: -p.grad if p.grad is not None else torch.zeros_like(p)
            for n, p in reference.named_parameters() if p.requires_grad}


def assert_same_steps(got: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name, delta in got.items():
        torch.testing.assert_close(delta, expected[name], msg=name)
