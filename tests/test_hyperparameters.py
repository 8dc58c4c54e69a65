"""Every hyperparameter that shapes a method's loss or a validator's score bites: set to a value
other than its default and other than 1, it changes what training does (each stage's length,
and the weights, buffers and logged values after three updates of each stage, from the same
batches) or the validator's value. A method or validator that ignored a configured value, or
used 1 in its place, fails here.

The cases are read from conf/ (every number, flag and choice of a method's YAML, of the
stackable regularisers and of the evaluators), so a new method's keys are covered without
editing this file. Left out: what follows the trainer (`${trainer.*}` step budgets and batch
sizes), optimizer settings (torch's), lists of names or widths (tap names, architectures),
and the evaluators' `seed` (which folds, not how many).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from helpers import choices_of, compose_config, method_overrides
from transferlab.config import CONFIG_DIR, validate
from transferlab.data.domain import as_input
from transferlab.errors import UserError, find_user_error
from transferlab.evaluation.base import evaluate
from transferlab.experiment import build

CPU = torch.device("cpu")
# Where the rule below would land where the value has no effect on a few updates of an
# untrained model: CDAN's map is randomized above d_f · C, which the tiny pair's 768 · 10
# already exceeds; IWERM's clip bites only on density ratios above it (see PREPARED).
CHOSEN = {("cdan", "randomize_above"): 10**6, ("iwerm", "clip"): 6.6}
# Keys that act on batch-norm layers, which the default backbone has none of, and CDAN+E's
# option, which acts when entropy conditioning is on.
NEEDS = {"bn_statistics": ("backbone.batch_norm=true",),
         "entropy_gradient": ("method.entropy_conditioning=true",)}


def favour_target(method) -> None:
    """An untrained domain classifier gives density ratios of about 0.9, under any allowed
    clip (>= 1); shifted towards the target by e², they spread around 6.6."""
    last = [m for m in method.domain_classifier.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias.add_(torch.tensor([-1.0, 1.0]))


PREPARED = {("iwerm", "clip"): favour_target}


def perturbed(value: Any) -> Any:
    """A valid value other than `value` and other than 1."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return 2 if value != 2 else 3
    if value == 0:
        return 0.3
    if 0 < value < 1:  # rates, momenta, fractions: stay inside (0, 1)
        return (1 + value) / 2 if value >= 0.5 else value / 2
    return value * 1.7 + 0.3


def method_cases() -> list[tuple[str, tuple[str, ...], str, Any]]:
    """(method, the overrides it runs with, the key, the value to set it to)."""
    cases = []
    for name in choices_of("method"):
        base = tuple(method_overrides(name))
        cfg = compose_config(*base).method
        limits = getattr(get_class(cfg._target_), "limits", {})
        for key, value in OmegaConf.to_container(cfg, resolve=False).items():
            setting = (*base, *NEEDS.get(key, ()))
            rule = limits.get(key)
            if isinstance(value, str) and rule and rule.choices:
                cases += [(name, setting, key, c) for c in rule.choices if c != value]
            elif isinstance(value, (int, float)):
                cases.append((name, setting, key, CHOSEN.get((name, key), perturbed(value))))
            elif value is None and rule and rule.kind in (int, float):  # off by default
                cases.append((name, setting, key, perturbed(rule.kind(1))))
            elif isinstance(value, list) and value and all(type(v) is float for v in value):
                cases.append((name, setting, key, [perturbed(v) for v in value]))
    for file in sorted((Path(CONFIG_DIR) / "method" / "regularizers").glob("*.yaml")):
        base = ("method=dann", f"+method/regularizers=[{file.stem}]")
        for key, value in yaml.safe_load(file.read_text())[file.stem].items():
            if isinstance(value, (int, float)):
                cases.append(("dann", base, f"regularizers.{file.stem}.{key}", perturbed(value)))
    return cases


def batches(split, channels: int, n: int = 16, draw: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(draw))[:n]
    return as_input(split.images[index], channels), split.labels[index]


@functools.cache
def training_trace(overrides: tuple[str, ...], prepare: Callable | None = None
                   ) -> list[torch.Tensor] | None:
    """Each stage's length, then the logged values of three updates of it (at progress 0.1,
    0.5, 0.9) and the method's whole state after them; None where the overrides are refused
    (a value of 1 a key does not allow). `prepare` puts the fresh method where the value bites."""
    torch.manual_seed(0)
    try:
        pair, method = build(compose_config("data=tiny", "device=cpu", *overrides), CPU)
    except Exception as e:  # Hydra wraps the refusal
        if find_user_error(e) is None:
            raise
        return None
    if prepare:
        prepare(method)
    method.train()
    trace = []
    for stage in method.stages(pair.training_view(method.uses_target_labels)):
        trace.append(torch.tensor(float(stage.steps)))
        if stage.on_start:
            stage.on_start()
        for progress in (0.1, 0.5, 0.9):
            batch = {name: batches(split, pair.channels) for name, split in stage.data.items()}
            torch.manual_seed(1)
            logged = stage.update(batch, progress)
            trace += [torch.as_tensor(logged[k]).detach() for k in sorted(logged)]
    return trace + [t for t in method.state_dict().values() if isinstance(t, torch.Tensor)]


def differ(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) != len(b) or any(x.shape != y.shape or not torch.equal(x, y)
                                   for x, y in zip(a, b, strict=False))


@pytest.mark.parametrize("name,setting,key,value", method_cases(),
                         ids=lambda v: "" if isinstance(v, tuple) else str(v))
def test_a_method_hyperparameter_changes_training(name: str, setting: tuple[str, ...], key: str,
                                                  value: Any):
    prepare = PREPARED.get((name, key))
    configured = training_trace((*setting, f"method.{key}={value}"), prepare)
    assert configured is not None, f"method.{key}={value} refused"
    assert differ(configured, training_trace(setting, prepare)), f"{key}={value} ignored"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        as_one = training_trace((*setting, f"method.{key}=1"), prepare)
        assert as_one is None or differ(configured, as_one), f"{key}={value} used as 1"


def evaluator_cases() -> list[tuple[str, str, Any]]:
    evaluators = compose_config().evaluation.evaluators
    return [(name, key, perturbed(value))
            for name, spec in evaluators.items() for key, value in spec.items()
            if isinstance(value, (int, float)) and key != "seed"]


@functools.cache
def trained(updates: int) -> tuple:
    """Source-only on the tiny pair after `updates` updates."""
    torch.manual_seed(0)
    pair, method = build(compose_config("data=tiny", "device=cpu"), CPU)
    (stage,) = method.stages(pair.training_view(False))
    for step in range(updates):
        stage.update({"labelled": batches(stage.data["labelled"], pair.channels, 32, step)},
                     step / 150)
    return pair, method


def scores(name: str, key: str | None = None, value: Any = None) -> tuple[float, ...] | None:
    """The evaluator's values, `key` set to `value`, on a model early in training (noisy
    predictions, where MixVal's probes within a class can fail) and one later (several
    classes predicted on the target); None where the config refuses the value."""
    change = [f"evaluation.evaluators.{name}.{key}={value}"] if key else []
    cfg = compose_config("data=tiny", "device=cpu", f"evaluation.validators=[{name}]",
                         f"objective={name}", *change)
    try:
        validate(cfg)
    except UserError:
        return None
    evaluator = instantiate(cfg.evaluation.evaluators[name])
    values = []
    for updates in (3, 150):
        pair, method = trained(updates)
        values.append(evaluate(method, pair, {name: evaluator}, batch_size=64)[name])
    return tuple(values)


@pytest.mark.parametrize("name,key,value", evaluator_cases())
def test_a_validator_hyperparameter_changes_its_score(name: str, key: str, value: Any):
    configured = scores(name, key, value)
    assert configured is not None and configured != scores(name), f"{name}.{key} ignored"
    as_one = scores(name, key, 1)
    assert as_one is None or configured != as_one, f"{name}.{key} used as 1"
