"""MCD's three steps each update exactly the parameters they name."""

from __future__ import annotations

import pytest
import torch

from helpers import compose_config
from transferlab.cli import build
from transferlab.data.domain import as_input


@pytest.fixture
def mcd():
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
    method, xs, ys, xt = mcd
    for _ in range(3):
        method.step_source(xs, ys)
    first = method.step_classifiers(xs, ys, xt)
    for _ in range(5):
        method.step_classifiers(xs, ys, xt)
    raised = method._discrepancy(method.network.features(xt)).item()
    assert raised > first.item()
    for _ in range(5):
        method.step_generator(xt)
    assert method._discrepancy(method.network.features(xt)).item() < raised


def test_the_classifiers_start_different_and_predict_together(mcd):
    method, _, _, xt = mcd
    assert not torch.equal(method.network.head[0].weight, method.head2[0].weight)
    features = method.network.features(xt)
    torch.testing.assert_close(method.predict(xt, "target"),
                               (method.network.head(features) + method.head2(features)) / 2)
