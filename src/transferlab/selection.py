"""Choosing a model without target labels, and how well each validator chooses.

The candidates are every evaluation of every completed run below a folder: run folders
(their results.json and target_val predictions) or collected records (`transferlab.records`).
Per group (data pair × method, and all methods of a pair pooled): the candidate each validator
scores best, in its direction, and the target test accuracy there, beside the oracle's (the
best target test accuracy of any candidate), with each validator's Spearman and weighted
Spearman correlation with target accuracy over the group's candidates.

Besides the validators the runs measured, two that compare the candidates, from their stored
target_val predictions (no labels):
- `ensv` (EnsV; Hu et al., "Towards reliable model selection for unsupervised domain
  adaptation", NeurIPS 2024 D&B): the ensemble of all candidates of the data pair (every
  method) averages their class probabilities; a candidate scores its agreement with the
  ensemble's predicted classes. Higher is better.
- the negative-transfer guard: where the pair has source-only runs, whether the chosen adapted
  candidate is likely *worse* than source-only: it agrees less with the ensemble than
  source-only's final models do. Beside the verdict: the change in source_val_acc and how far
  the predicted class shares moved (total variation), both label-free too.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import rankdata, spearmanr

from transferlab.errors import UserError
from transferlab.records import read_predictions
from transferlab.rules import REPORTS
from transferlab.summarize import Run, directions, group_runs, load_runs

# What a choice is judged by: the target test split's accuracy, read only for that.
JUDGE = "target_acc"
BASELINE = "source_val_acc"
ENSV = "ensv"
SOURCE_ONLY = "source_only"
ALL_METHODS = "all methods"


@dataclass(frozen=True)
class Point:
    """One evaluation of one run: a candidate."""

    run: str                 # the run's folder (or record), relative to the root
    label: str               # the run's folder and what tells its config apart
    step: int
    metrics: dict[str, float]
    data: str = "?"
    method: str = "?"
    predictions: Callable[[], np.ndarray | None] = field(default=lambda: None, repr=False,
                                                         compare=False)


@dataclass(frozen=True)
class Validator:
    name: str
    higher_is_better: bool
    labels: str | None       # whose labels it reads: None, "source" or "target"


@dataclass(frozen=True)
class Verdict:
    """How one validator chooses within one group."""

    validator: Validator
    chosen: Point | None
    points: int              # evaluations that measured it
    spearman: float
    weighted_spearman: float


@dataclass(frozen=True)
class Guard:
    """Whether a chosen adapted candidate is likely worse than source-only, label-free."""

    chosen: Point
    source_only: list[Point]  # the final evaluation of each source-only run of the pair
    ensv: float               # the chosen candidate's agreement with the ensemble
    source_only_ensv: float   # source-only's, mean over its runs
    source_val_change: float  # chosen − source-only mean, in source_val_acc
    shares_moved: float       # total variation between their predicted class shares

    @property
    def likely_worse(self) -> bool:
        return self.ensv < self.source_only_ensv

    def line(self, by: str) -> str:
        verdict = ("likely WORSE than source-only" if self.likely_worse
                   else "likely not worse than source-only")
        return (f"guard: {by}'s choice ({self.chosen.method}, `{self.chosen.label}`, step "
                f"{self.chosen.step}) is {verdict}: it agrees with the ensemble of all "
                f"candidates on {self.ensv:.3f} of target_val, source-only's final models on "
                f"{self.source_only_ensv:.3f}; source_val_acc {self.source_val_change:+.4f}; "
                f"predicted class shares moved {self.shares_moved:.3f} (total variation)")


@dataclass(frozen=True)
class GroupSelection:
    data: str
    method: str              # or ALL_METHODS: every method of the pair pooled
    runs: int
    points: list[Point]
    oracle: Point
    verdicts: dict[str, Verdict]


def _finite(point: Point, name: str) -> bool:
    value = point.metrics.get(name)
    return isinstance(value, int | float) and math.isfinite(value)


def best_point(points: Sequence[Point], name: str, higher_is_better: bool) -> Point | None:
    """The point where `name` is best in its direction; ties go to the first in `points`
    (runs in folder order, then steps in order). None if no point measured it."""
    best = None
    for p in points:
        if not _finite(p, name):
            continue
        if best is None or (p.metrics[name] > best.metrics[name] if higher_is_better
                            else p.metrics[name] < best.metrics[name]):
            best = p
    return best


def spearman(scores: Sequence[float], accuracies: Sequence[float]) -> float:
    """Spearman's rank correlation; NaN when it is undefined (fewer than two points, or a
    constant input)."""
    if len(scores) < 2 or np.ptp(scores) == 0 or np.ptp(accuracies) == 0:
        return math.nan
    return float(spearmanr(scores, accuracies).statistic)


def weighted_ranks(values: Sequence[float], weights: np.ndarray) -> np.ndarray:
    """Ranks in which each point counts its weight: the total weight of the values below it
    plus its own, ties sharing their group's weight as ordinary ranks share positions."""
    _, group, counts = np.unique(rankdata(values), return_inverse=True, return_counts=True)
    group_weight = np.bincount(group, weights)
    below = np.cumsum(group_weight) - group_weight
    return (below + (counts + 1) / 2 * group_weight / counts)[group]


def weighted_pearson(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> float:
    mx, my = weights @ x / weights.sum(), weights @ y / weights.sum()
    dx, dy = x - mx, y - my
    denominator = math.sqrt((weights @ dx**2) * (weights @ dy**2))
    return math.nan if denominator == 0 else float(weights @ (dx * dy) / denominator)


def weighted_spearman(scores: Sequence[float], accuracies: Sequence[float],
                      power: float = 2.0) -> float:
    """The weighted Spearman correlation of Musgrave et al. (2022, "Benchmarking validation
    methods for unsupervised domain adaptation"), as their benchmark computes it: each point
    weighted by (its score's dense rank / the highest dense rank)^power, then the weighted
    Pearson correlation of the *weighted* ranks of the scores and of the accuracies, so that
    the candidates a validator ranks best count most. `scores` oriented so higher is better."""
    if len(scores) < 2 or np.ptp(scores) == 0 or np.ptp(accuracies) == 0:
        return math.nan
    dense = rankdata(scores, method="dense")
    weights = (dense / dense.max()) ** power
    return weighted_pearson(weighted_ranks(scores, weights),
                            weighted_ranks(accuracies, weights), weights)


def ensemble_agreement(probabilities: Sequence[np.ndarray]) -> list[float]:
    """EnsV's score of each candidate: the fraction of samples on which its predicted class is
    the ensemble's, the ensemble being the mean of all candidates' class probabilities."""
    ensemble = np.mean(probabilities, axis=0).argmax(1)
    return [float((p.argmax(1) == ensemble).mean()) for p in probabilities]


def class_shares(probabilities: np.ndarray) -> np.ndarray:
    return np.bincount(probabilities.argmax(1), minlength=probabilities.shape[1]) / len(
        probabilities)


def add_ensv(points: Sequence[Point]) -> bool:
    """Score every candidate of each data pair by `ensv` (into its metrics); False when some
    candidate of a pair has no stored predictions (nothing is scored for that pair)."""
    complete = True
    for data in dict.fromkeys(p.data for p in points):
        pair = [p for p in points if p.data == data]
        probabilities = [p.predictions() for p in pair]
        if any(q is None for q in probabilities) or len({q.shape for q in probabilities}) > 1:
            complete = False
            continue
        for point, score in zip(pair, ensemble_agreement(probabilities), strict=True):
            point.metrics[ENSV] = score
    return complete


def guard(points: Sequence[Point], chosen: Point | None) -> Guard | None:
    """The negative-transfer guard for `chosen` among the candidates of its data pair (see the
    module docstring); None when it does not apply (no source-only run, or a source-only
    choice, or no ensv)."""
    if chosen is None or chosen.method == SOURCE_ONLY or not _finite(chosen, ENSV):
        return None
    finals: dict[str, Point] = {}
    for p in points:
        if (p.data == chosen.data and p.method == SOURCE_ONLY
                and (p.run not in finals or p.step > finals[p.run].step)):
            finals[p.run] = p
    if not finals:
        return None
    sources = list(finals.values())

    def mean(name: str) -> float:
        return float(np.mean([p.metrics.get(name, math.nan) for p in sources]))

    chosen_shares = class_shares(chosen.predictions())
    source_shares = np.mean([class_shares(p.predictions()) for p in sources], axis=0)
    return Guard(chosen, sources, chosen.metrics[ENSV], mean(ENSV),
                 chosen.metrics.get(BASELINE, math.nan) - mean(BASELINE),
                 float(np.abs(chosen_shares - source_shares).sum() / 2))


def evaluation_points(runs: Sequence[Run], root: Path) -> list[Point]:
    """Every evaluation of every completed run, runs in folder order."""
    varies = {id(r): g.varies for g in group_runs(runs) for r in g.runs}
    points = []
    for run in runs:
        if run.status != "completed":
            continue
        name = str(run.path.relative_to(root))
        label = " ".join(x for x in (name, varies[id(run)], f"seed={run.seed}") if x)
        stored = _predictions_of(run)
        for entry in run.history:
            metrics = {k: float(v) for k, v in entry.items()
                       if isinstance(v, int | float) and k not in ("step", "time_s")}
            step = int(entry["step"])
            points.append(Point(name, label, step, metrics, run.choices.get("data", "?"),
                                run.choices.get("method", "?"),
                                lambda stored=stored, step=step: stored().get(step)))
    return points


def _predictions_of(run: Run) -> Callable[[], dict[int, np.ndarray]]:
    """The run's stored predictions by step, read once when first asked for."""
    cache: list[dict[int, np.ndarray]] = []

    def get() -> dict[int, np.ndarray]:
        if not cache:
            cache.append(read_predictions(run.predictions) if run.predictions else {})
        return cache[0]

    return get


def measured_validators(runs: Sequence[Run], points: Sequence[Point]) -> list[Validator]:
    """Every metric of the candidates but the two reports, in the order the runs list them."""
    higher = directions(runs)
    labels: dict[str, str | None] = {}
    for run in runs:
        for name, described in run.evaluators.items():
            labels.setdefault(name, described.get("labels"))
    names = dict.fromkeys(m for p in points for m in p.metrics if m not in REPORTS)
    return [Validator(n, higher.get(n, True), labels.get(n)) for n in names]


def judge(points: Sequence[Point], validator: Validator) -> Verdict:
    scored = [p for p in points if _finite(p, validator.name) and _finite(p, JUDGE)]
    sign = 1.0 if validator.higher_is_better else -1.0
    scores = [sign * p.metrics[validator.name] for p in scored]
    accuracies = [p.metrics[JUDGE] for p in scored]
    return Verdict(validator, best_point(scored, validator.name, validator.higher_is_better),
                   len(scored), spearman(scores, accuracies),
                   weighted_spearman(scores, accuracies))


def candidates(root: Path) -> tuple[list[Run], list[Point], list[Validator]]:
    """The runs below `root`, their candidates (with `ensv` where every candidate of a pair
    has predictions) and the validators they measured."""
    runs = load_runs(root)
    points = evaluation_points(runs, root)
    if not points:
        raise UserError(f"no completed run with an evaluation history below {root}")
    if not any(_finite(p, JUDGE) for p in points):
        raise UserError(f"no run below {root} measured {JUDGE}")
    add_ensv(points)
    return runs, points, measured_validators(runs, points)


def groups_of(runs: Sequence[Run], points: Sequence[Point],
              validators: Sequence[Validator]) -> list[GroupSelection]:
    """Per data pair: each method's group, then all methods pooled."""
    groups = []
    keys = sorted({(p.data, p.method) for p in points})
    for data in dict.fromkeys(d for d, _ in keys):
        methods = [m for d, m in keys if d == data]
        for method in [*methods, *([ALL_METHODS] if len(methods) > 1 else [])]:
            group = [p for p in points if p.data == data and method in (ALL_METHODS, p.method)]
            oracle = best_point(group, JUDGE, True)
            if oracle is not None:
                groups.append(GroupSelection(data, method, len({p.run for p in group}), group,
                                             oracle, {v.name: judge(group, v)
                                                      for v in validators}))
    return groups


def select(root: Path, by: str, out: Path | None = None, markdown: Path | None = None,
           draw: bool = True) -> list[GroupSelection]:
    """Judge every validator measured below `root` and write selection.md (to `markdown`,
    default `out`/selection.md), selection.csv and, with `draw`, selection_<name>.png into
    `out` (default `root`). `by` is the validator whose choices selection.md shows first,
    with the guard's verdict on its pooled choice of each pair."""
    runs, points, validators = candidates(root)
    names = [v.name for v in validators]
    if by not in names:
        raise UserError(f"--by {by} was not measured by the runs below {root}; valid: "
                        f"{', '.join(names)}")
    if next(v for v in validators if v.name == by).labels == "target":
        print(f"warning: {by} reads target labels: its choice is a reference, not a "
              "label-free selection", file=sys.stderr)
    if not all(_finite(p, ENSV) for p in points):
        print("note: ensv is left out for pairs where some run has no stored target_val "
              "predictions", file=sys.stderr)
    groups = groups_of(runs, points, validators)
    out = out or root
    out.mkdir(parents=True, exist_ok=True)
    markdown = markdown or out / "selection.md"
    plots = draw_plots(out, markdown, validators, groups) if draw else {}
    write_csv(out / "selection.csv", groups)
    write_markdown(markdown, root, by, validators, groups, plots, len(runs))
    print(markdown.read_text().split("\n## How well")[0])
    print(f"wrote {markdown}, {out / 'selection.csv'}"
          + (f" and {len(plots)} plots in {out}" if plots else ""))
    return groups


def pooled_guards(groups: Sequence[GroupSelection], by: str) -> dict[str, str]:
    """The guard's line on `by`'s pooled choice of each pair that has source-only runs beside
    adapted ones."""
    lines = {}
    for g in groups:
        if g.method != ALL_METHODS or by not in g.verdicts:
            continue
        chosen = g.verdicts[by].chosen
        if chosen is None or not any(p.method == SOURCE_ONLY for p in g.points):
            continue
        verdict = guard(g.points, chosen)
        if verdict:
            lines[g.data] = verdict.line(by)
        elif chosen.method == SOURCE_ONLY:
            lines[g.data] = (f"guard: {by}'s choice is a source-only model (`{chosen.label}`, "
                             f"step {chosen.step}): no adaptation to guard against")
    return lines


def sweep_verdicts(root: Path, by: str) -> list[str]:
    """One line per pair of a finished sweep: the guard's verdict on `by`'s choice, where the
    sweep has source-only runs and adapted ones; [] otherwise."""
    try:
        runs, points, validators = candidates(root)
    except UserError:
        return []
    if by not in {v.name for v in validators}:
        return []
    groups = groups_of(runs, points, validators)
    return [f"{data}: {line}" for data, line in pooled_guards(groups, by).items()]


def draw_plots(out: Path, markdown: Path, validators: Sequence[Validator],
               groups: Sequence[GroupSelection]) -> dict[str, str]:
    plots = {}
    for v in validators:
        path = out / f"selection_{v.name}.png"
        skipped = plot(path, v, groups)
        if skipped:
            print(f"{path.name} skipped: {skipped}", file=sys.stderr)
            break
        plots[v.name] = os.path.relpath(path, markdown.parent)
    return plots


def _acc(point: Point | None) -> str:
    return "—" if point is None else f"{point.metrics[JUDGE]:.4f}"


def _number(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.3f}"


def _where(point: Point | None) -> str:
    return "—" if point is None else f"`{point.label}`, step {point.step}"


def _better(v: Validator) -> str:
    return "higher" if v.higher_is_better else "lower"


def write_csv(path: Path, groups: Sequence[GroupSelection]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["data", "method", "validator", "higher_is_better", "labels", "points",
                         "spearman", "weighted_spearman", "chosen_run", "chosen_step",
                         "chosen_score", "chosen_target_acc", "oracle_run", "oracle_step",
                         "oracle_target_acc"])
        for g in groups:
            for name, v in g.verdicts.items():
                c = v.chosen
                writer.writerow([g.data, g.method, name, v.validator.higher_is_better,
                                 v.validator.labels or "", v.points,
                                 "" if math.isnan(v.spearman) else v.spearman,
                                 "" if math.isnan(v.weighted_spearman) else v.weighted_spearman,
                                 c.run if c else "", c.step if c else "",
                                 c.metrics[name] if c else "", c.metrics[JUDGE] if c else "",
                                 g.oracle.run, g.oracle.step, g.oracle.metrics[JUDGE]])


def write_markdown(path: Path, root: Path, by: str, validators: Sequence[Validator],
                   groups: Sequence[GroupSelection], plots: dict[str, str], runs: int) -> None:
    by_validator = next(v for v in validators if v.name == by)
    lines = [
        f"# Choosing without target labels: `{root}`", "",
        f"{runs} runs below `{root}`; per data pair × method, every evaluation step of every "
        f"completed run is a candidate. Each choice is judged by `{JUDGE}`, the target *test* "
        "accuracy, which nothing but this judgement reads. The oracle is the candidate with the "
        f"best `{JUDGE}`: what selecting on target test labels would give. Ties go to the "
        "first run (folder order), then the earliest step.", "",
        f"## Chosen by `{by}` ({_better(by_validator)} is better)", "",
        f"| data | method | runs | chosen | {by} | target acc | chosen by {BASELINE} "
        "| oracle |", "|---|---|---|---|---|---|---|---|"]
    for g in groups:
        mine, baseline = g.verdicts[by].chosen, g.verdicts.get(BASELINE)
        base = baseline.chosen if baseline else None
        lines.append(
            f"| {g.data} | {g.method} | {g.runs} | {_where(mine)} | "
            f"{'—' if mine is None else f'{mine.metrics[by]:.4f}'} | {_acc(mine)} | "
            f"{_acc(base)} ({_where(base)}) | {_acc(g.oracle)} ({_where(g.oracle)}) |")
    guards = pooled_guards(groups, by)
    if guards:
        lines += ["", "Negative-transfer guard (label-free; see `transferlab.selection`):", ""]
        lines += [f"- {data}: {line}" for data, line in guards.items()]
    lines += [
        "", "## How well each validator chooses", "",
        "Per group, over all runs × evaluation steps: the target accuracy at the candidate each "
        "validator selects, its gap to the oracle, and the Spearman and weighted Spearman "
        "correlation between the validator's score (signed so that higher is better) and "
        f"`{JUDGE}`. Weighted Spearman (Musgrave et al., 2022) weights each candidate by "
        "(dense rank of its score / highest rank)², so it measures how well the validator "
        "orders the candidates it ranks near the top. A validator that reads target labels "
        "(`labels: target`) is a reference for the study, not a label-free choice.", ""]
    for g in groups:
        lines += [f"### {g.data} · {g.method} ({g.runs} runs, {len(g.points)} candidates; "
                  f"oracle {_acc(g.oracle)})", "",
                  "| validator | better | labels | selected target acc | vs oracle | "
                  "Spearman | weighted Spearman | selected |", "|---|---|---|---|---|---|---|---|"]
        for name, v in g.verdicts.items():
            gap = ("—" if v.chosen is None else
                   f"{v.chosen.metrics[JUDGE] - g.oracle.metrics[JUDGE]:+.4f}")
            lines.append(f"| {name} | {_better(v.validator)} | {v.validator.labels or '—'} | "
                         f"{_acc(v.chosen)} | {gap} | {_number(v.spearman)} | "
                         f"{_number(v.weighted_spearman)} | {_where(v.chosen)} |")
        lines.append("")
    if plots:
        lines += ["## Scores against target accuracy", "",
                  "Every candidate; stars: each group's selection.", ""]
        lines += [f"![{name}]({link})" for name, link in plots.items()]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def plot(path: Path, validator: Validator, groups: Sequence[GroupSelection]) -> str | None:
    """Score against target accuracy, one colour per data pair × method; returns why no plot
    was drawn, or None."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed: pip install 'transferlab[sweep]'"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for g in groups:
        if g.method == ALL_METHODS:
            continue
        v = g.verdicts[validator.name]
        shown = [p for p in g.points if _finite(p, validator.name) and _finite(p, JUDGE)]
        if not shown:
            continue
        dots = ax.plot([p.metrics[validator.name] for p in shown],
                       [p.metrics[JUDGE] for p in shown], "o", markersize=3, alpha=0.6,
                       label=f"{g.data} · {g.method}  ρ={_number(v.spearman)}, "
                             f"ρw={_number(v.weighted_spearman)}")
        if v.chosen:
            ax.plot([v.chosen.metrics[validator.name]], [v.chosen.metrics[JUDGE]], "*",
                    markersize=14, color=dots[0].get_color(), markeredgecolor="black")
    ax.set_xlabel(f"{validator.name} ({_better(validator)} is better)")
    ax.set_ylabel(f"{JUDGE} (target test accuracy)")
    ax.set_title(f"{validator.name}: every run × evaluation step; stars: its choice", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
