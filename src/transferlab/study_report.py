"""The selection study's tables (docs/SELECTION.md), from its committed records.

Per setting of the plan, the candidates are every evaluation of every run of the setting, all
methods pooled; each label-free validator (and `ensv`, from the stored predictions) chooses one,
judged by its target test accuracy against the oracle candidate and against the mean final
accuracy of the setting's source-only runs. The default objective is chosen by the rule the
plan states (`objective_rule`), written before the study ran:
- `selection_default`: over every validator that reads no target labels, the one whose worst
  setting gap to the oracle is smallest, among those never more than 1 point below
  source-only (if any is); ties by the mean gap.
- `objective_default`: the same rule over the validators a run computes on its own (a run
  returns its objective to Hydra's sweeper, so `ensv`, which needs all candidates, cannot be
  one).
The guard (see `transferlab.selection`) is judged on every validator's adapted choice: is it
right that the choice is, or is not, worse than source-only?
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from transferlab.selection import (
    ALL_METHODS,
    ENSV,
    JUDGE,
    SOURCE_ONLY,
    GroupSelection,
    Point,
    add_ensv,
    evaluation_points,
    groups_of,
    guard,
    measured_validators,
)
from transferlab.studies import Plan
from transferlab.summarize import Run, load_runs


@dataclass(frozen=True)
class Choice:
    """One validator's pooled choice in one setting."""

    setting: str
    validator: str
    accuracy: float        # target test accuracy of its choice
    gap: float             # choice − oracle
    shortfall: float       # choice − source-only's mean final accuracy (negative: worse)
    spearman: float
    weighted: float
    guard_says_worse: bool | None   # None: no guard (a source-only choice, or no ensv)


def setting_group(plan: Plan, setting: str) -> tuple[GroupSelection | None, float]:
    """The pooled group of `setting` (every method) and source-only's mean final target
    accuracy there (NaN without source-only records)."""
    names = {plan.record(j).name for j in plan.jobs if j.setting == setting}
    runs = [r for r in load_runs(plan.results) if f"{r.path.name}.json" in names
            and r.status == "completed"]
    if not runs:
        return None, math.nan
    points = evaluation_points(runs, plan.results)
    add_ensv(points)
    validators = [v for v in measured_validators(runs, points) if v.labels != "target"
                  or v.name == "target_val_acc"]
    groups = groups_of(runs, points, validators)
    pooled = next((g for g in groups if g.method == ALL_METHODS), groups[0] if groups else None)
    return pooled, _source_only_final(runs)


def _source_only_final(runs: Sequence[Run]) -> float:
    finals = [r.metrics[JUDGE] for r in runs
              if r.choices.get("method") == SOURCE_ONLY and JUDGE in r.metrics]
    return statistics.fmean(finals) if finals else math.nan


def choices(plan: Plan) -> list[Choice]:
    found = []
    for setting in plan.settings:
        group, source_only = setting_group(plan, setting)
        if group is None:
            continue
        for name, verdict in group.verdicts.items():
            chosen: Point | None = verdict.chosen
            if chosen is None:
                continue
            accuracy = chosen.metrics[JUDGE]
            warden = guard(group.points, chosen)
            found.append(Choice(setting, name, accuracy,
                                accuracy - group.oracle.metrics[JUDGE], accuracy - source_only,
                                verdict.spearman, verdict.weighted_spearman,
                                None if warden is None else warden.likely_worse))
    return found


def default_by_rule(found: Sequence[Choice], names: Sequence[str]) -> str | None:
    """The plan's rule over the validators `names` (see the module docstring)."""
    def worst(name: str, field: str) -> float:
        return min(getattr(c, field) for c in found if c.validator == name)

    candidates = [n for n in names if any(c.validator == n for c in found)]
    if not candidates:
        return None
    safe = [n for n in candidates if not worst(n, "shortfall") < -0.01] or candidates
    return min(safe, key=lambda n: (-worst(n, "gap"), -statistics.fmean(
        c.gap for c in found if c.validator == n)))


def _pts(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:+.1f}"


def _corr(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


def report(plan: Plan) -> list[str]:
    found = choices(plan)
    settings = [s for s in plan.settings if any(c.setting == s for c in found)]
    if not found:
        return ["No records yet: `python -m transferlab.studies run "
                f"studies/{plan.path.name}` makes them (it resumes where it stopped)."]
    names = list(dict.fromkeys(c.validator for c in found))
    lines = [f"Settings with records: {len(settings)} of {len(plan.settings)}. Gap: target "
             "accuracy of the validator's pooled choice minus the oracle candidate's, in "
             "points; vs source-only: minus the mean final accuracy of the setting's "
             "source-only runs.", "",
             "| validator | " + " | ".join(f"{s}: gap / vs source-only" for s in settings)
             + " | worst gap | worst vs source-only |",
             "|" + "---|" * (len(settings) + 3)]
    for name in names:
        mine = {c.setting: c for c in found if c.validator == name}
        cells = [f"{_pts(mine[s].gap)} / {_pts(mine[s].shortfall)}" if s in mine else "—"
                 for s in settings]
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {_pts(min(c.gap for c in mine.values()))}"
                     + f" | {_pts(min(c.shortfall for c in mine.values()))} |")
    lines += ["", *correlations(found, settings, names), "", *verdicts(plan, found, names)]
    return lines


def correlations(found: Sequence[Choice], settings: Sequence[str],
                 names: Sequence[str]) -> list[str]:
    lines = ["Spearman / weighted Spearman (Musgrave et al., 2022) of each validator's score "
             "with target accuracy over the setting's candidates:", "",
             "| validator | " + " | ".join(settings) + " |", "|" + "---|" * (len(settings) + 1)]
    for name in names:
        mine = {c.setting: c for c in found if c.validator == name}
        lines.append(f"| {name} | " + " | ".join(
            f"{_corr(mine[s].spearman)} / {_corr(mine[s].weighted)}" if s in mine else "—"
            for s in settings) + " |")
    return lines


def verdicts(plan: Plan, found: Sequence[Choice], names: Sequence[str]) -> list[str]:
    label_free = [n for n in names if n != "target_val_acc"]
    per_run = [n for n in label_free if n != ENSV]
    judged = [c for c in found if c.guard_says_worse is not None
              and c.validator in label_free and not math.isnan(c.shortfall)]
    right = sum(c.guard_says_worse == (c.shortfall < 0) for c in judged)
    complete = len({c.setting for c in found}) == len(plan.settings)
    state = "" if complete else " (provisional: not every setting has records yet)"
    return [f"By the plan's rule{state}: the default for `select --by` is "
            f"`{default_by_rule(found, label_free)}`; the default `objective` (a validator a "
            f"run computes alone) is `{default_by_rule(found, per_run)}`.", "",
            f"The negative-transfer guard on the label-free validators' adapted choices: right "
            f"{right} of {len(judged)} times (a verdict is right when it says \"likely worse\" "
            "exactly where the choice ends below source-only's mean final accuracy)."]
