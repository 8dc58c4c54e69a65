"""Command-line overrides that name no config key, caught before Hydra sees them.

Hydra answers `trainer.stpes=5` with a multi-line report that suggests `+trainer.stpes=5`, and
accepts that silently: the run then trains with the default. Here both are refused with one line
naming the closest key. `+key=value` adds a key the config does not set, which is legitimate
where the key is a parameter of the `_target_` it belongs to (`+method.lr_mult={...}` is a
`Method` argument) or a new entry of a collection of `_target_`s (`+evaluation.evaluators.x=...`).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.utils import get_object
from omegaconf import OmegaConf

from transferlab.config import composer
from transferlab.errors import UserError

Tree = dict[str, Any]


def check_keys(arguments: list[str], config_dir: str) -> None:
    """Raise a one-line UserError for the first override whose key the config lacks."""
    try:
        parsed = OverridesParser.create().parse_overrides(
            [a for a in arguments if "=" in a and not a.startswith("-")])
    except Exception:  # a syntax error: Hydra's own message names it
        return
    root = Path(config_dir)
    hydra_own = [o for o in parsed if o.key_or_group.split(".")[0].split("/")[0] == "hydra"]
    groups = [o for o in parsed if o not in hydra_own and (root / o.key_or_group).is_dir()]
    keys = [o for o in parsed if o not in hydra_own and o not in groups]
    if not keys:
        return
    try:
        trees = list(_composed(config_dir, groups))
    except Exception:  # an impossible combination of choices: Hydra reports it
        return
    for tree in trees:  # `trainer.optimizer._target_=...` decides which parameters exist
        for o in keys:
            if o.key_or_group.endswith("._target_") and not o.is_sweep_override():
                _set(tree, o.key_or_group, o.value())
    for o in keys:
        _check(o, trees)


def _composed(config_dir: str, groups: list[Override]) -> Iterator[Tree]:
    """The config for the first choice of every group override, and for each other choice of
    a swept group (`method=dann,adda`): a key is valid if any of them has it."""
    choices = [(o, list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()])
               for o in groups]

    def line(o: Override, value: Any) -> str:
        prefix = "~" if o.is_delete() else "++" if o.is_force_add() else "+" if o.is_add() else ""
        return f"{prefix}{o.key_or_group}" + ("" if value is None else f"={value}")

    first = [line(o, values[0]) for o, values in choices]
    variants = [first] + [[*first[:i], line(o, v), *first[i + 1:]]
                          for i, (o, values) in enumerate(choices) for v in values[1:]]
    with composer(config_dir) as compose:
        for overrides in variants:
            yield OmegaConf.to_container(compose(overrides), resolve=False)


def _check(override: Override, trees: list[Tree]) -> None:
    key = override.key_or_group
    present = any(_has(tree, key) for tree in trees)
    if override.is_add() and not override.is_force_add():
        if present:
            raise UserError(f"+{key}: {key} is already in the config; set it without the +")
        if any(_may_add(tree, key) for tree in trees):
            return
    elif present or (override.is_force_add() and any(_may_add(tree, key) for tree in trees)):
        return
    elif any(_may_add(tree, key) for tree in trees):
        raise UserError(f"{key} is not in the config, but its target takes it: add it with "
                        f"+{key}=...")
    # Suggest a sibling by its own name (trainer.stpes → trainer.steps), else name the
    # parent's keys (trainer.foo); never the key's own parent.
    parent, _, name = key.rpartition(".")
    candidates = sorted(c for c in _candidates(trees) if not key.startswith(c + "."))
    siblings = [c[len(parent) + 1:] for c in candidates
                if c.startswith(parent + ".") and "." not in c[len(parent) + 1:]] if parent \
        else [c for c in candidates if "." not in c]
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    where = f"{parent}." if parent else ""
    hint = (f"did you mean {where}{close[0]}?" if close else
            f"{parent or 'the config'} has {', '.join(siblings)}" if siblings
            else "`--cfg job` lists every key")
    raise UserError(f"{key} is not a config key; {hint}")


def _has(tree: Tree, key: str) -> bool:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _set(tree: Tree, key: str, value: Any) -> None:
    *parents, name = key.split(".")
    node: Any = tree
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node[name] = value


def _may_add(tree: Tree, key: str) -> bool:
    """Whether `+key` adds something the nearest existing node takes: a parameter of its
    `_target_`, or an entry of a collection of `_target_`s."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict):
            return False
        if part not in node:
            if "_target_" in node:
                accepted = _parameters(node["_target_"])
                return accepted is None or part in accepted or part.startswith("_")
            return bool(node) and all(isinstance(v, dict) and "_target_" in v
                                      for v in node.values())
        node = node[part]
    return False


def _parameters(target: str) -> set[str] | None:
    """The keyword arguments `target` takes, following `**kwargs` up a class's bases; None when
    it takes any (or cannot be imported here: instantiation will say why)."""
    try:
        obj = get_object(target)
    except Exception:
        return None
    functions = [c.__init__ for c in inspect.getmro(obj) if "__init__" in vars(c)] \
        if inspect.isclass(obj) else [obj]
    names: set[str] = set()
    for function in functions:
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):  # a builtin without a signature
            return None
        names |= {p.name for p in parameters
                  if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            return names
    return None


def _candidates(trees: list[Tree]) -> set[str]:
    """Every key of the configs, and every parameter their `_target_`s take."""
    found: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, dict):
            return
        if "_target_" in node:
            found.update(f"{prefix}{p}" for p in _parameters(node["_target_"]) or ())
        for key, value in node.items():
            found.add(f"{prefix}{key}")
            walk(value, f"{prefix}{key}.")

    for tree in trees:
        walk(tree, "")
    return found
