"""The config schema, checked once before a run starts, and the resolvers `conf/` uses.

Hydra composes the config; this module says which values are allowed. Top-level keys are
described by `Rule`s below; a method's own keys by its constructor's type hints plus its
`limits` class attribute, so that a new method states its constraints in its one file.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from transferlab.errors import UserError
from transferlab.evaluation.base import REPORTS
from transferlab.sweeps import threads_per_job

_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


@dataclass(frozen=True)
class Rule:
    """What one config value may be: its type, an optional range, optional choices."""

    kind: type
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False

    def allowed(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(map(str, self.choices))
        else:
            text = _KINDS[self.kind]
            if self.min is not None:
                text += f" >= {self.min}"
            if self.max is not None:
                text += f" <= {self.max}"
        return text + (" or null" if self.nullable else "")

    def check(self, key: str, value: Any) -> None:
        if value is None and self.nullable:
            return
        # bool is an int to Python, but `steps=true` is a mistake; ints are fine as floats.
        ok_type = isinstance(value, self.kind) and not (
            self.kind is not bool and isinstance(value, bool))
        ok_type = ok_type or (self.kind is float and isinstance(value, int)
                              and not isinstance(value, bool))
        ok = ok_type and (
            (self.choices is None or value in self.choices)
            and (self.min is None or value >= self.min)
            and (self.max is None or value <= self.max))
        if not ok:
            raise UserError(f"{key}={value!r} is invalid: must be {self.allowed()}")


# Keys that say where or how verbosely a run ran, not what it trained: runs that differ only in
# these (and the seed) are repeats of one experiment, and a checkpoint resumes across them.
# `objective` only picks the number handed to a sweeper, `keep_best` which evaluation best.pt
# keeps; `num_threads` follows the launcher. Where images are kept (memory or a mapped cache)
# and how many threads decode them do not change a single batch: those keys are operational too,
# as is `malloc_tuning`, which changes how fast the same steps run, not their results.
OPERATIONAL_KEYS = frozenset({
    "objective", "data.root", "data.cache_dir", "data.download", "trainer.progress_bar",
    "trainer.log_every", "trainer.checkpoint_every", "trainer.num_threads", "trainer.keep_best",
    "analysis.at_end", "analysis.samples",
    "trainer.stage_cache", "trainer.reuse_stages",  # a reused stage equals a trained one
    "data.in_memory", "data.in_memory_max_mb", "data.workers", "trainer.malloc_tuning",
})


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}"""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def what_is_trained(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened resolved config without OPERATIONAL_KEYS."""
    return {k: v for k, v in flatten(config).items() if k not in OPERATIONAL_KEYS}


def config_changes(then: dict[str, Any], now: dict[str, Any]) -> str:
    """How two resolved configs differ in what they train ("key: old → new", the first three
    keys), or "" when they train the same."""
    a, b = what_is_trained(then), what_is_trained(now)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)} → {b.get(k)}" for k in changed[:3])


SCHEMA: dict[str, Rule] = {
    "seed": Rule(int, min=0),
    "device": Rule(str),
    "data.root": Rule(str),
    "data.download": Rule(bool),
    "data.cache_dir": Rule(str, nullable=True),
    "data.source_val_size": Rule(float, min=0),  # below 1: a fraction of the train split
    "data.target_val_size": Rule(float, min=0),
    "data.split_seed": Rule(int, min=0),
    "data.image_size": Rule(int, min=8, nullable=True),
    "data.storage_size": Rule(int, min=1),
    "data.test_fraction": Rule(float, min=0, max=1),
    "trainer.steps": Rule(int, min=0),
    "trainer.batch_size": Rule(int, min=1),
    "trainer.eval_every": Rule(int, min=1),
    "trainer.eval_batch_size": Rule(int, min=1),
    "trainer.log_every": Rule(int, min=1),
    "trainer.checkpoint_every": Rule(int, min=0),
    "trainer.deterministic": Rule(bool),
    "trainer.progress_bar": Rule(bool),
    "trainer.precision": Rule(str, choices=("auto", "fp32", "bf16")),
    "trainer.num_threads": Rule(int, min=1, nullable=True),
    "trainer.reuse_stages": Rule(bool),
    "trainer.stage_cache": Rule(str, nullable=True),
    "trainer.malloc_tuning": Rule(bool),
    "trainer.flush_denormal": Rule(bool),
    "trainer.optimizer.lr": Rule(float, min=0),
    "trainer.lr_schedule.alpha": Rule(float, min=0),
    "trainer.lr_schedule.beta": Rule(float, min=0),
    "analysis.at_end": Rule(bool),
    "analysis.samples": Rule(int, min=2),
}


def validate(cfg: DictConfig) -> None:
    """Raise a one-line UserError naming the first bad value and what would be valid."""
    for key, rule in SCHEMA.items():
        if OmegaConf.select(cfg, key, default="<absent>") != "<absent>":
            rule.check(key, OmegaConf.select(cfg, key))
    defined = list(cfg.evaluation.evaluators)
    for name in cfg.evaluation.validators:
        Rule(str, choices=tuple(defined)).check("evaluation.validators", name)
    measured = tuple(dict.fromkeys([*REPORTS, *cfg.evaluation.validators]))
    Rule(str, choices=measured).check("objective", cfg.objective)
    Rule(str, choices=measured, nullable=True).check(
        "trainer.keep_best", OmegaConf.select(cfg, "trainer.keep_best", default=None))
    _check_arguments("method", cfg.method)
    for name, regularizer in (cfg.method.get("regularizers") or {}).items():
        _check_arguments(f"method.regularizers.{name}", regularizer)


def _check_arguments(prefix: str, node: DictConfig) -> None:
    """The keys of a `_target_` node against its class's type hints and `limits`."""
    target = get_class(node._target_)
    hints = typing.get_type_hints(target.__init__)
    limits: dict[str, Rule] = getattr(target, "limits", {})
    for name in inspect.signature(target).parameters:
        if name not in node:
            continue
        rule = limits.get(name) or (Rule(hints[name]) if hints.get(name) in _KINDS else None)
        if rule:
            rule.check(f"{prefix}.{name}", node[name])


def check_choices(overrides: list[str], config_dir: str) -> None:
    """One-line error for `group=choice` overrides naming a config that does not exist, before
    Hydra prints its multi-line report. Sweeps (`method=a,b`) are checked choice by choice, and
    lists (`+method/regularizers=[mcc,entropy]`) item by item. Hydra's own groups (`hydra/...`)
    also have configs from plugins, so they are left to Hydra."""
    root = Path(config_dir)
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        folder = root / key
        if not sep or key.startswith("hydra/") or not folder.is_dir() or value.startswith("{"):
            continue
        valid = sorted(p.stem for p in folder.glob("*.yaml"))
        for choice in filter(None, value.strip("[]").split(",")):
            if choice.strip() not in valid:
                raise UserError(f"{key}={choice.strip()} is not a valid choice; valid: "
                                f"{', '.join(valid)}")


def register_resolvers() -> None:
    """The resolvers conf/ uses; idempotent."""
    # `${min:500,${trainer.steps}}`: a stage length that shrinks with trainer.steps (smoke runs)
    # but is capped for full runs.
    if not OmegaConf.has_resolver("min"):
        OmegaConf.register_new_resolver("min", lambda *xs: min(xs))
    # `${threads_per_job:}`: torch threads for one job of a parallel sweep (see sweeps.py).
    if not OmegaConf.has_resolver("threads_per_job"):
        OmegaConf.register_new_resolver("threads_per_job", threads_per_job)
    # `${objective_direction:${objective}}`: "maximize" or "minimize", as the sweepers take it.
    if not OmegaConf.has_resolver("objective_direction"):
        OmegaConf.register_new_resolver("objective_direction", objective_direction)


def objective_direction(name: str, _root_: DictConfig) -> str:
    """The direction in which a sweeper optimises the evaluator `name`: its own, as its class
    declares it (accuracies maximise, `entropy` and `dev` minimise). A name that is no
    evaluator gets "maximize" here, because an error raised while Hydra resolves its sweeper
    would be a traceback; every job then stops on `validate`'s one-line error instead."""
    evaluators = _root_.evaluation.evaluators
    if name not in evaluators:
        return "maximize"
    return "maximize" if instantiate(evaluators[name]).higher_is_better else "minimize"
