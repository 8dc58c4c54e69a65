"""MCD's three steps each update exactly the parameters they name."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import compose_config
from transferlab.data.domain import as_input
from transferlab.experiment import build
from transferlab.methods.base import optimize


@pytest.fixture(params=[0, 1, 2, 3, 4])
def mcd(request):
    torch.manual_seed(request.param)  # the networks' initialisation
    cfg = compose_config("data=tiny", "device=cpu", "method=mcd")
    pair, method = build(cfg, torch.device("cpu"))
    view = pair.training_view(target_labels=False)
    method.stages(view)
    xs = as_input(view.source.images[:16], pair.channels)
    xt = as_input(view.target.images[:16], pair.channels)
    return method, xs, view.source.labels[:16], xt


def changed_parts(method, step) -> set[str]:
    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    step()
    parts = {"network.encoder": "G", "network.head": "F1", "head2": "F2"}
    return {part for n, p in method.named_parameters() if not torch.equal(p, before[n])
            for prefix, part in parts.items() if n.startswith(prefix + ".")}


def test_step_a_trains_generator_and_both_classifiers(mcd):
    method, xs, ys, _ = mcd
    assert changed_parts(method, lambda: method.step_source(xs, ys)) == {"G", "F1", "F2"}


def test_step_b_trains_only_the_classifiers(mcd):
    method, xs, ys, xt = mcd
    assert changed_parts(method, lambda: method.step_classifiers(xs, ys, xt)) == {"F1", "F2"}


def test_step_c_trains_only_the_generator(mcd):
    method, _, _, xt = mcd
    assert changed_parts(method, lambda: method.step_generator(xt)) == {"G"}


def test_step_b_raises_and_step_c_lowers_the_discrepancy(mcd):
    """Against a control that trains F1 and F2 on source only: (B) leaves the heads further
    apart on target than the control does, and (C) then brings them closer."""
    method, xs, ys, xt = mcd

    @torch.no_grad()
    def discrepancy(m) -> float:  # in eval mode: dropout's noise would blur a small change
        m.eval()
        value = m._discrepancy(m.network.features(xt)).item()
        m.train()
        return value

    for _ in range(3):
        method.step_source(xs, ys)
    control = copy.deepcopy(method)  # its optimizers hold the copy's parameters
    for _ in range(30):
        method.step_classifiers(xs, ys, xt)
        with torch.no_grad():
            features = control.network.features(xs)
        optimize(control._f_optimizer, control._source_loss(features, ys))
    raised = discrepancy(method)
    assert raised > discrepancy(control)
    for _ in range(10):
        method.step_generator(xt)
    assert discrepancy(method) < raised
