"""Summarise the runs below a directory: `python -m transferlab.summarize DIR`.

Reads every results.json below DIR, groups the runs that differ only by seed, prints a table
and writes summary.csv, summary.md and summary.png (target accuracy per group, with error bars)
into DIR. Standard deviations are sample standard deviations (ddof=1) over a group's seeds;
a group of one run has none ("—" in the tables, empty in the CSV, no error bar). Runs that did
not complete are counted in their group's `failed` column and listed with their error and last
evaluation; a job that was killed (its results.json still says `running`, but no process holds
its folder) is listed as `incomplete`.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferlab.errors import UserError, user_errors_exit
from transferlab.files import check_writable
from transferlab.records import SUFFIX
from transferlab.rules import OPERATIONAL_KEYS, REPORTS, flatten
from transferlab.run_folder import PREDICTIONS, RESULTS, status_of

CHOICES = ("method", "data", "backbone")

# Runs that differ only in these are repeats of one experiment: one row of the summary.
IGNORED = OPERATIONAL_KEYS | {"seed"}


@dataclass
class Run:
    path: Path                 # the run's folder
    status: str
    choices: dict[str, str]
    seed: Any
    config: dict[str, Any]
    metrics: dict[str, float]
    wall_time_s: float | None
    error: str
    precision: str = "fp32"    # of training; CPU-fp32 and GPU-bf16 runs are not one group
    history: list[dict[str, Any]] = field(default_factory=list)  # every evaluation's metrics
    evaluators: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → description
    predictions: Path | None = None  # its target_val predictions file, if it has one
    record: dict[str, Any] = field(default_factory=dict)  # the whole record


@dataclass
class Group:
    choices: dict[str, str]
    config: dict[str, Any]     # flattened, without IGNORED keys
    runs: list[Run] = field(default_factory=list)
    # The keys and values that tell this group from others with the same choices.
    differing: dict[str, Any] = field(default_factory=dict)

    @property
    def varies(self) -> str:
        return " ".join(f"{k}={_short(v, 6)}" for k, v in self.differing.items())

    @property
    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.status == "completed"]

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if r.status != "completed"]

    def stats(self, metric: str) -> tuple[float | None, float | None]:
        """Mean and sample std (ddof=1) over completed runs; None where undefined."""
        values = [r.metrics[metric] for r in self.completed if metric in r.metrics]
        if not values:
            return None, None
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)

    def wall_time(self) -> float | None:
        times = [r.wall_time_s for r in self.completed if r.wall_time_s is not None]
        return statistics.fmean(times) if times else None

    @property
    def label(self) -> str:
        """For the plot: the method, then each differing key by its last part."""
        return "\n".join([self.choices.get("method", "?"),
                          *(f"{k.rsplit('.', 1)[-1]}={_short(v, 3)}"
                            for k, v in self.differing.items())])


def _short(value: Any, digits: int) -> str:
    # Optuna's floats (16.915591613892417) would otherwise fill the table and the plot.
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def load_runs(root: Path) -> list[Run]:
    """The runs below `root`: run folders (their results.json) or, where there are none,
    collected records (`transferlab.records`: results/<study>/<name>.json)."""
    folders = sorted(root.rglob(RESULTS))
    if folders:
        return [_run(p, p.parent, _read(p), p.parent / PREDICTIONS) for p in folders]
    found = [(p, _read(p)) for p in sorted(root.rglob("*.json"))]
    return [_run(p, p.with_suffix(""), record, p.with_name(p.stem + SUFFIX))
            for p, record in found if "record_version" in record]


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return {"status": "unreadable", "error": f"{type(e).__name__}: {e}"}


def _run(path: Path, where: Path, record: dict[str, Any], predictions: Path) -> Run:
    status = status_of(path.parent, record) if path.name == RESULTS else record.get(
        "status", "unknown")
    return Run(path=where, status=status, choices=record.get("choices", {}),
               seed=record.get("seed"), config=record.get("config", {}),
               metrics=measured(record), wall_time_s=record.get("wall_time_s"),
               error=" ".join(str(record.get("error", "")).split()),
               precision=record.get("precision", {}).get("train", "fp32"),
               history=record.get("history", []), evaluators=record.get("evaluators", {}),
               predictions=predictions if predictions.exists() else None, record=record)


def measured(record: dict[str, Any]) -> dict[str, float]:
    """A run's metrics, and the numbers `analysis.at_end=true` added (proxy A-distances)."""
    analysis = record.get("analysis", {})
    return {**record.get("metrics", {}),
            **{k: v for k, v in analysis.items() if k.startswith("proxy_a_distance")}}


def metric_names(runs: Sequence[Run]) -> list[str]:
    """Every metric any run measured: the reports first, then in the order runs list them."""
    names = dict.fromkeys(REPORTS)
    for run in runs:
        names.update(dict.fromkeys(run.metrics))
    return list(names)


def shown_metrics(runs: Sequence[Run]) -> list[str]:
    """The table's columns: the reports, source_val_acc, and the runs' objectives."""
    measured = set(metric_names(runs))
    objectives = [r.config.get("objective") for r in runs]
    wanted = dict.fromkeys([*REPORTS, "source_val_acc", *filter(None, objectives)])
    return [m for m in wanted if m in measured]


def group_runs(runs: Sequence[Run]) -> list[Group]:
    groups: dict[str, Group] = {}
    for run in runs:
        config = {k: v for k, v in flatten(run.config).items() if k not in IGNORED}
        config["precision"] = run.precision
        key = json.dumps([run.choices, config], sort_keys=True, default=str)
        groups.setdefault(key, Group(run.choices, config)).runs.append(run)
    result = list(groups.values())
    # Name each group by the keys in which it differs from groups with the same choices, e.g.
    # `method.lambda_gamma=5` in a λ sweep; keys only one method has are implied by the method.
    absent = object()
    for group in result:
        same = [g for g in result if g.choices == group.choices]
        group.differing = {k: v for k, v in sorted(group.config.items())
                           if any(g.config.get(k, absent) != v for g in same)}
    return sorted(result, key=lambda g: ([g.choices.get(c, "") for c in CHOICES[::-1]],
                                         g.varies))


def mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.4f} ± {'—' if std is None else f'{std:.4f}'}"


def directions(runs: Sequence[Run]) -> dict[str, bool]:
    """Whether higher is better, per metric, as the runs' evaluators declare it (results.json
    `evaluators`); a metric no run describes counts as higher-is-better (an accuracy)."""
    found: dict[str, bool] = {}
    for run in runs:
        for name, described in run.evaluators.items():
            found.setdefault(name, bool(described.get("higher_is_better", True)))
    return found


def best_of_each_pair(groups: Sequence[Group], metric: str, higher: bool) -> set[int]:
    """The indices of the groups with the best mean of `metric` among the groups of the same
    data pair, in the metric's direction (ties: all of them)."""
    means = [g.stats(metric)[0] for g in groups]
    best: dict[str, float] = {}
    for g, mean in zip(groups, means, strict=True):
        if mean is not None:
            data = g.choices.get("data", "?")
            best[data] = (max if higher else min)(best.get(data, mean), mean)
    return {i for i, (g, mean) in enumerate(zip(groups, means, strict=True))
            if mean is not None and mean == best[g.choices.get("data", "?")]}


def table_rows(groups: Sequence[Group], metrics: Sequence[str],
               higher: dict[str, bool] | None = None) -> list[list[str]]:
    """One row per group; `*` marks each metric's best group per data pair (by `higher`)."""
    higher = higher or {}
    marked = {m: best_of_each_pair(groups, m, higher.get(m, True)) for m in metrics}
    rows = []
    for i, g in enumerate(groups):
        wall = g.wall_time()
        rows.append([g.choices.get("method", "?"), g.choices.get("data", "?"),
                     g.choices.get("backbone", "?"), g.varies or "", str(len(g.completed)),
                     str(len(g.failed)),
                     *(mean_std(*g.stats(m)) + (" *" if i in marked[m] and len(groups) > 1
                                                else "") for m in metrics),
                     "—" if wall is None else f"{wall:.1f}"])
    return rows


def header(metrics: Sequence[str], higher: dict[str, bool] | None = None) -> list[str]:
    higher = higher or {}
    return ["method", "data", "backbone", "varies", "seeds", "failed",
            *(f"{m.replace('_', ' ')} {'↑' if higher.get(m, True) else '↓'}" for m in metrics),
            "wall time (s)"]


NOTE = ("Mean ± sample standard deviation (ddof=1) over seeds; — where a group has one run. "
        "`seeds`: completed runs; `failed`: runs that did not complete; wall time: mean per "
        "run. ↑: higher is better, ↓: lower; * marks the best group of its data pair by that "
        "column. Select on a label-free column (the `objective`, e.g. `source val acc`); "
        "`target acc` uses target test labels, which UDA does not have.")


def format_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def failures(runs: Sequence[Run], root: Path) -> list[str]:
    """A line per run that did not complete: its status, error and last evaluation. A run
    killed without a word (SIGKILL, out of memory) is `incomplete`: its record still says
    `running` but no process holds its folder."""
    return [f"{r.path.relative_to(root)} ({r.choices.get('method', '?')}, seed {r.seed}): "
            f"{r.status}: {r.error or _silent(r.status)}{_last(r.history[-1] if r.history else {})}"
            for r in runs if r.status != "completed"]


def _silent(status: str) -> str:
    return {"incomplete": "the process ended without recording why (killed?)",
            "running": "still running"}.get(status, "no error recorded")


def _last(evaluation: dict[str, Any]) -> str:
    if "step" not in evaluation:
        return ""
    scores = ", ".join(f"{k} {v:.4f}" for k, v in evaluation.items()
                       if k not in ("step", "stage", "time_s") and isinstance(v, float))
    return f"; last evaluation at step {evaluation['step']}: {scores}"


def write_csv(path: Path, groups: Sequence[Group], root: Path,
              metrics: Sequence[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*CHOICES, "varies", "n", "n_failed",
                         *(f"{m}_{s}" for m in metrics for s in ("mean", "std")),
                         "wall_time_s_mean", "seeds", "runs"])
        for g in groups:
            stats = [g.stats(m) for m in metrics]
            writer.writerow([*(g.choices.get(c, "") for c in CHOICES), g.varies,
                             len(g.completed), len(g.failed),
                             *("" if v is None else v for pair in stats for v in pair),
                             "" if g.wall_time() is None else g.wall_time(),
                             " ".join(str(r.seed) for r in g.completed),
                             " ".join(str(r.path.relative_to(root)) for r in g.runs)])


def write_markdown(path: Path, head: Sequence[str], rows: Sequence[Sequence[str]],
                   failed: Sequence[str], root: Path) -> None:
    lines = [f"# Summary of {root}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", NOTE, ""]
    if failed:
        lines += ["## Failed runs", "", *(f"- {f}" for f in failed), ""]
    path.write_text("\n".join(lines))


def plot(path: Path, groups: Sequence[Group]) -> str | None:
    """Target accuracy per group, mean with sample-std error bars and each seed as a dot.
    Returns why no plot was drawn, or None."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed: pip install 'transferlab[sweep]'"
    matplotlib.use("Agg")  # files only; no display needed on a cluster
    import matplotlib.pyplot as plt

    shown = [g for g in groups if g.completed]
    if not shown:
        return "no completed runs"
    # Data and backbone go into the labels only when they differ between groups.
    extra = [c for c in ("data", "backbone") if len({g.choices.get(c) for g in shown}) > 1]
    labels = ["\n".join([g.label, *(g.choices.get(c, "?") for c in extra)]) for g in shown]
    crowded = len(shown) > 4 or max(len(line) for t in labels for line in t.split("\n")) > 16
    means = [g.stats("target_acc")[0] for g in shown]
    stds = [g.stats("target_acc")[1] or 0.0 for g in shown]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(shown) + 1.5), 4.0))
    x = range(len(shown))
    ax.bar(x, means, yerr=stds, capsize=4, color="#8fb3d9", edgecolor="#2b5d8c")
    for i, g in enumerate(shown):
        values = [r.metrics["target_acc"] for r in g.completed]
        ax.plot([i] * len(values), values, "o", color="#1d3c5a", markersize=3)
    ax.set_xticks(list(x), labels, rotation=40 if crowded else 0,
                  ha="right" if crowded else "center", fontsize=8)
    ax.set_ylabel("target accuracy")
    top = max(m + s for m, s in zip(means, stds, strict=True))
    ax.set_ylim(0, min(1.0, top * 1.15) if top > 0 else 1.0)
    ax.set_title("bars: mean ± sample std (ddof=1) over seeds; dots: seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def summarize(root: Path, draw: bool = True, out: Path | None = None) -> list[Group]:
    """Print the table and write summary.{csv,md,png} into `out` (default `root`); returns
    the groups."""
    out = out or root
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(root)
    groups = group_runs(runs)
    shown = shown_metrics(runs)
    higher = directions(runs)
    rows = table_rows(groups, shown, higher)
    failed = failures(runs, root)
    print(format_table(header(shown, higher), rows))
    print(f"\n{len(runs)} runs in {len(groups)} groups. {NOTE}")
    if failed:
        print(f"\n{len(failed)} runs did not complete:", *failed, sep="\n  ")
    write_csv(out / "summary.csv", groups, root, metric_names(runs))
    write_markdown(out / "summary.md", header(shown, higher), rows, failed, root)
    written = ["summary.csv", "summary.md"]
    if draw:
        skipped = plot(out / "summary.png", groups)
        if skipped:
            print(f"summary.png skipped: {skipped}", file=sys.stderr)
        else:
            written.append("summary.png")
    print(f"\nwrote {', '.join(written)} in {out}")
    return groups


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="transferlab-summarize", description=__doc__.split("\n\n")[1],
        epilog="Std: sample standard deviation (ddof=1).")
    parser.add_argument("dir", type=Path, help="a sweep directory (multirun/<date>/<time>) "
                        "or any folder with results.json files below it")
    parser.add_argument("--no-plot", action="store_true", help="skip summary.png")
    parser.add_argument("--out", type=Path, help="where to write summary.* (default: DIR)")
    args = parser.parse_args(argv)
    with user_errors_exit():
        if not args.dir.is_dir():
            raise UserError(f"{args.dir} is not a directory")
        if not load_runs(args.dir):
            raise UserError(f"no results.json or run record below {args.dir}")
        check_writable(args.out or args.dir, "the folder", "write the summary elsewhere with "
                       "--out DIR")
        summarize(args.dir, draw=not args.no_plot, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
