"""The config: where it lives (`CONFIG_DIR`), composing it outside a Hydra app (`compose`),
the resolvers conf/ uses, and the checks a config passes before a run starts (`validate`).

Hydra composes the config; `transferlab.rules` says which values are allowed. Top-level keys
are described there; a method's own keys by its constructor's type hints plus its `limits`
class attribute, so that a new method states its constraints in its one file.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.utils import get_class, get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from transferlab.errors import UserError
from transferlab.rules import KINDS, PHOTO_SIZE, REPORTS, SCHEMA, Rule
from transferlab.sweeps import threads_per_job


def _config_dir() -> str:
    packaged = Path(__file__).parent / "conf"  # inside an installed wheel
    return str(packaged if packaged.is_dir() else Path(__file__).parents[2] / "conf")


CONFIG_DIR = _config_dir()


@contextmanager
def composer(config_dir: str = CONFIG_DIR) -> Iterator[Callable[[Sequence[str]], DictConfig]]:
    """A function composing the config as `python -m transferlab <overrides>` would, outside a
    running Hydra app (notebooks, commands after training, tests), for as many override lists
    as the block needs."""
    register_resolvers()
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        yield lambda overrides: hydra_compose("config", overrides=list(overrides))


def compose(overrides: Sequence[str] = (), config_dir: str = CONFIG_DIR) -> DictConfig:
    """The config of one list of overrides (see `composer`)."""
    with composer(config_dir) as compose_one:
        return compose_one(overrides)


def validate(cfg: DictConfig) -> None:
    """Raise a one-line UserError naming the first bad value and what would be valid."""
    check_values(cfg)
    _check_arguments("method", cfg.method)
    for name, regularizer in (cfg.method.get("regularizers") or {}).items():
        _check_arguments(f"method.regularizers.{name}", regularizer)
    for name in dict.fromkeys([*REPORTS, *cfg.evaluation.validators]):
        _check_arguments(f"evaluation.evaluators.{name}", cfg.evaluation.evaluators[name])


def check_values(cfg: DictConfig) -> None:
    """The part of `validate` that needs no code of the chosen classes (so no torch): the
    schema's keys and the evaluator names."""
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


def _check_arguments(prefix: str, node: DictConfig) -> None:
    """The keys of a `_target_` node against its class's type hints and `limits`."""
    target = get_class(node._target_)
    hints = typing.get_type_hints(target.__init__)
    limits: dict[str, Rule] = getattr(target, "limits", {})
    for name in inspect.signature(target).parameters:
        if name not in node:
            continue
        rule = limits.get(name) or (Rule(hints[name]) if hints.get(name) in KINDS else None)
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
    # `${input_size:}`: the image side the chosen backbone expects; `${storage_size_for:N}`: the
    # side image folders are stored at for N-pixel inputs (conf/data/folders.yaml).
    if not OmegaConf.has_resolver("input_size"):
        OmegaConf.register_new_resolver("input_size", backbone_input_size)
    if not OmegaConf.has_resolver("storage_size_for"):
        OmegaConf.register_new_resolver("storage_size_for", storage_size_for)


def backbone_input_size(_root_: DictConfig) -> int:
    """The side of the images the chosen backbone is made for: the default of its builder's
    `image_size` (28 for the digit CNNs, 224 for ResNets), or for a timm model its pretrained
    configuration's input size."""
    node = _root_.backbone
    target = get_object(node._target_)
    if node._target_.endswith(".timm_model"):
        try:
            import timm

            return int(timm.models.get_pretrained_cfg(node.name).input_size[-1])
        except (ImportError, AttributeError, RuntimeError):
            pass
    default = inspect.signature(target).parameters.get("image_size")
    return int(default.default) if default and isinstance(default.default, int) else 224


def storage_size_for(input_size: int) -> int:
    """Photos (inputs above PHOTO_SIZE) are stored at ImageNet's 256 for 224 and cropped at
    random; digit-sized inputs are stored at their size and not cropped."""
    return round(input_size * 256 / 224) if input_size > PHOTO_SIZE else input_size


def objective_direction(name: str, _root_: DictConfig) -> str:
    """The direction in which a sweeper optimises the evaluator `name`: its own, as its class
    declares it (accuracies maximise, `entropy` and `dev` minimise). A name that is no
    evaluator gets "maximize" here, because an error raised while Hydra resolves its sweeper
    would be a traceback; every job then stops on `validate`'s one-line error instead."""
    evaluators = _root_.evaluation.evaluators
    if name not in evaluators:
        return "maximize"
    return "maximize" if instantiate(evaluators[name]).higher_is_better else "minimize"
