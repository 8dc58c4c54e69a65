"""Choose a run and an evaluation step without target labels, and measure how well each
validator chooses: `python -m transferlab.select DIR --by snd`.

Reads the evaluation history of every completed run below DIR (results.json). Per group (data
pair × method): the run and evaluation step where `--by` scores best, in its direction, and
the target test accuracy there, beside the oracle's choice (the best target test accuracy of
any run and step) and `source_val_acc`'s. For every validator the runs measured: the target
accuracy it selects, and its Spearman and weighted Spearman correlation (Musgrave et al., 2022)
with target accuracy over all runs × steps. Writes selection.md, selection.csv and one scatter
plot per validator (selection_<name>.png) into DIR (or --out).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata, spearmanr

from transferlab.errors import UserError
from transferlab.evaluation.base import REPORTS
from transferlab.summarize import Run, directions, group_runs, load_runs

# What a choice is judged by: the target test split's accuracy, read only for that.
JUDGE = "target_acc"
BASELINE = "source_val_acc"
ALL_METHODS = "all methods"


@dataclass(frozen=True)
class Point:
    """One evaluation of one run."""

    run: str                 # the run's folder, relative to DIR
    label: str               # the run's folder and what tells its config apart
    step: int
    metrics: dict[str, float]


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


def weighted_spearman(scores: Sequence[float], accuracies: Sequence[float],
                      power: float = 2.0) -> float:
    """The weighted Spearman correlation of Musgrave et al. (2022, "Benchmarking validation
    methods for unsupervised domain adaptation"): the Pearson correlation of the ranks of the
    scores and of the accuracies, each point weighted by (its score's dense rank / the highest
    dense rank)^power, so that the points a validator ranks best count most (power 2, as in
    their benchmark). `scores` must be oriented so that higher is better."""
    if len(scores) < 2 or np.ptp(scores) == 0 or np.ptp(accuracies) == 0:
        return math.nan
    dense = rankdata(scores, method="dense")
    weights = (dense / dense.max()) ** power
    weights = weights / weights.sum()
    x, y = rankdata(scores), rankdata(accuracies)
    dx, dy = x - weights @ x, y - weights @ y
    return float((weights @ (dx * dy)) / math.sqrt((weights @ dx**2) * (weights @ dy**2)))


def evaluation_points(runs: Sequence[Run], root: Path) -> list[Point]:
    """Every evaluation of every completed run, runs in folder order."""
    varies = {id(r): g.varies for g in group_runs(runs) for r in g.runs}
    points = []
    for run in runs:
        if run.status != "completed":
            continue
        name = str(run.path.relative_to(root))
        label = " ".join(x for x in (name, varies[id(run)], f"seed={run.seed}") if x)
        for entry in run.history:
            metrics = {k: float(v) for k, v in entry.items()
                       if isinstance(v, int | float) and k not in ("step", "time_s")}
            points.append(Point(name, label, int(entry["step"]), metrics))
    return points


def measured_validators(runs: Sequence[Run], points: Sequence[Point]) -> list[Validator]:
    """Every metric of the histories but the two reports, in the order the runs list them."""
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


def select(root: Path, by: str, out: Path | None = None, markdown: Path | None = None,
           draw: bool = True) -> list[GroupSelection]:
    """Judge every validator measured below `root` and write selection.md (to `markdown`,
    default `out`/selection.md), selection.csv and, with `draw`, selection_<name>.png into
    `out` (default `root`). `by` is the validator whose choices selection.md shows first."""
    runs = load_runs(root)
    points = evaluation_points(runs, root)
    if not points:
        raise UserError(f"no completed run with an evaluation history below {root}")
    if not any(_finite(p, JUDGE) for p in points):
        raise UserError(f"no run below {root} measured {JUDGE}")
    validators = measured_validators(runs, points)
    names = [v.name for v in validators]
    if by not in names:
        raise UserError(f"--by {by} was not measured by the runs below {root}; valid: "
                        f"{', '.join(names)}")
    if next(v for v in validators if v.name == by).labels == "target":
        print(f"warning: {by} reads target labels: its choice is a reference, not a "
              "label-free selection", file=sys.stderr)
    groups = []
    keys = sorted({(r.choices.get("data", "?"), r.choices.get("method", "?"))
                   for r in runs if r.status == "completed"})
    for data in dict.fromkeys(d for d, _ in keys):
        methods = [m for d, m in keys if d == data]
        for method in [*methods, *([ALL_METHODS] if len(methods) > 1 else [])]:
            chosen_runs = {str(r.path.relative_to(root)) for r in runs
                           if r.choices.get("data", "?") == data
                           and method in (ALL_METHODS, r.choices.get("method", "?"))}
            group_points = [p for p in points if p.run in chosen_runs]
            oracle = best_point(group_points, JUDGE, True)
            if oracle is None:
                continue
            groups.append(GroupSelection(data, method, len(chosen_runs), group_points, oracle,
                                         {v.name: judge(group_points, v) for v in validators}))
    out = out or root
    out.mkdir(parents=True, exist_ok=True)
    markdown = markdown or out / "selection.md"
    plots = {}
    if draw:
        for v in validators:
            path = out / f"selection_{v.name}.png"
            skipped = plot(path, v, groups)
            if skipped:
                print(f"{path.name} skipped: {skipped}", file=sys.stderr)
                break
            plots[v.name] = os.path.relpath(path, markdown.parent)
    write_csv(out / "selection.csv", groups)
    write_markdown(markdown, root, by, validators, groups, plots, len(runs))
    print(markdown.read_text().split("\n## How well")[0])
    print(f"wrote {markdown}, {out / 'selection.csv'}"
          + (f" and {len(plots)} plots in {out}" if plots else ""))
    return groups


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="transferlab-select",
                                     description=__doc__.split("\n\n")[1])
    parser.add_argument("dir", type=Path, help="a sweep directory or any folder with "
                        "results.json files below it")
    parser.add_argument("--by", required=True, help="the validator to choose by, e.g. snd")
    parser.add_argument("--out", type=Path, help="folder for selection.csv and the plots "
                        "(default: DIR)")
    parser.add_argument("--markdown", type=Path, help="where to write the report (default: "
                        "OUT/selection.md)")
    parser.add_argument("--no-plot", action="store_true", help="skip the scatter plots")
    args = parser.parse_args(argv)
    try:
        if not args.dir.is_dir():
            raise UserError(f"{args.dir} is not a directory")
        select(args.dir, args.by, args.out, args.markdown, draw=not args.no_plot)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
