"""Result pages built from committed run records only: `python -m transferlab.pages docs`
(`make results-pages`).

A page keeps its prose by hand; each table sits between two markers that say how to build it,

    <!-- generated: table studies/reproduce.yaml mnist_usps usps_mnist -->
    ...
    <!-- end generated -->

and everything between them is rewritten from the plan's records in results/. Kinds:
- `table PLAN SETTING...`: one row per configuration of the plan, one column per setting,
  target test accuracy as mean ± sample std (ddof 1) over the seeds, with the count of seeds
  and, where fewer finished than the plan asks for, how many; the published number where the
  plan gives one (`published:` in the plan).
- `details PLAN SETTING`: per row the target, source and source-validation accuracy, the
  target accuracy of each seed, and the CPU time of a run.
- `selection PLAN`: the selection study (see `transferlab.selection`): per setting and over
  all settings, each label-free validator's choice, its gap to the oracle, Spearman and
  weighted Spearman, the guard's verdicts; the default objective by the plan's rule.
- `provenance PLAN`: how many records, their size, and the code versions and machines they
  ran on, so that rows from different code or machines say so.
- `analysis FILE...`: `transferlab.analyze` records (analysis.json) side by side;
  `bench FILE`: a `scripts/bench.py --json` record; `bench_runs FILE`: a
  `scripts/bench_runs.py --json` record.
A cell without records says so and gives the command that makes them.
`tests/test_pages.py` rebuilds every page and fails when a committed one differs.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferlab.errors import UserError, user_errors_exit
from transferlab.records import SUFFIX, read
from transferlab.studies import Job, Plan, load_plan

MARKER = re.compile(r"(<!-- generated: (.+?) -->\n)(.*?)(<!-- end generated -->)", re.S)
JUDGE = "target_acc"


@dataclass(frozen=True)
class Row:
    """One configuration of a plan in one setting: its jobs (one per seed) and records."""

    setting: str
    label: str
    jobs: list[Job]
    records: list[dict[str, Any]]

    def values(self, metric: str) -> list[float]:
        return [r["metrics"][metric] for r in self.records if metric in r.get("metrics", {})]


def rows_of(plan: Plan, setting: str) -> list[Row]:
    """The plan's configurations in `setting`, in plan order: jobs that differ only in seed
    are one row, labelled by the overrides that are not the setting's."""
    fixed = {o for o in plan.settings[setting]}
    grouped: dict[str, list[Job]] = {}
    for job in plan.jobs:
        if job.setting == setting:
            label = " ".join(o for o in job.overrides
                             if o not in fixed and not o.startswith("seed="))
            grouped.setdefault(label, []).append(job)
    return [Row(setting, label, jobs, _records(plan, jobs)) for label, jobs in grouped.items()]


def _records(plan: Plan, jobs: Sequence[Job]) -> list[dict[str, Any]]:
    found = []
    for job in jobs:
        path = plan.record(job)
        if path.exists():
            record = read(path)
            if record["status"] == "completed":
                found.append(record)
    return found


def mean_std(values: Sequence[float], asked: int, measured: bool = True) -> str:
    """`measured`: False where the row's records exist but none holds the metric."""
    if not values:
        return "not run yet" if measured else "not measured"
    std = f"{statistics.stdev(values):.4f}" if len(values) > 1 else "—"
    seeds = f"{len(values)} seeds" if len(values) > 1 else "1 seed"
    short = f", {len(values)} of {asked} asked" if len(values) < asked else ""
    return f"{statistics.fmean(values):.4f} ± {std} ({seeds}{short})"


def _command(plan: Plan, row: Row) -> str:
    only = " ".join(f"--only {o}" for o in (*plan.settings[row.setting], *shlex.split(
        row.label)) if "=" in o and "," not in o)
    return f"python -m transferlab.studies run {_relative(plan.path)} {only}".strip()


def _relative(path: Path) -> str:
    parts = path.parts
    return "/".join(parts[parts.index("studies"):]) if "studies" in parts else str(path)


def table(plan: Plan, settings: Sequence[str]) -> list[str]:
    published = plan.spec.get("published") or {}
    head = ["configuration", *settings, *(f"published ({s})" for s in settings
                                          if s in published)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_setting = {s: rows_of(plan, s) for s in settings}
    for index, row in enumerate(by_setting[settings[0]]):
        cells = [f"`{row.label}`" if row.label else "(defaults)"]
        for s in settings:
            r = by_setting[s][index]
            cells.append(mean_std(r.values(JUDGE), len(r.jobs)))
        for s in settings:
            if s in published:
                value = published[s].get(row.label)
                cells.append("—" if value is None else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    missing = [r for s in settings for r in by_setting[s] if len(r.records) < len(r.jobs)]
    if missing:
        lines += ["", f"Rows not complete yet ({len(missing)}): `python -m transferlab.studies "
                  f"run {_relative(plan.path)}` makes the missing runs (it resumes); one row: "
                  f"`{_command(plan, missing[0])}`."]
    return lines


def details(plan: Plan, setting: str) -> list[str]:
    head = ["configuration", "target acc", "source acc", "source val acc",
            "target acc per seed", "CPU time per run (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows_of(plan, setting):
        seeds = ", ".join(f"s{r['seed']} {r['metrics'][JUDGE]:.4f}" for r in row.records)
        cpu = [r["cpu_time_s"] for r in row.records]
        lines.append("| " + " | ".join([
            f"`{row.label}`" if row.label else "(defaults)",
            mean_std(row.values(JUDGE), len(row.jobs)),
            mean_std(row.values("source_acc"), len(row.jobs)),
            mean_std(row.values("source_val_acc"), len(row.jobs), not row.records),
            seeds or "—", f"{statistics.fmean(cpu):.0f}" if cpu else "—"]) + " |")
    return lines


def provenance(plan: Plan) -> list[str]:
    files = sorted(plan.results.glob("*"))
    records = [read(p) for p in files if p.suffix == ".json"]
    completed = [r for r in records if r["status"] == "completed"]
    size = sum(p.stat().st_size for p in files)
    codes: dict[str, int] = {}
    machines: dict[str, int] = {}
    for r in completed:
        code = r["code_version"][:12]
        codes[code] = codes.get(code, 0) + 1
        where = f"{r['machine']['device']}, {r['machine']['threads']} thread(s)"
        machines[where] = machines.get(where, 0) + 1
    lines = [f"{len(completed)} completed runs of {len(plan.jobs)} planned "
             f"({len(records) - len(completed)} not completed: failed or stopped, the study "
             "reruns them), "
             f"{size / 1e6:.2f} MB in `results/{plan.results.name}/`"
             f" ({sum(p.name.endswith(SUFFIX) for p in files)} with stored predictions).", "",
             "| code version (source hash) | runs |", "|---|---|"]
    lines += [f"| `{code}` | {n} |" for code, n in sorted(codes.items())]
    lines += ["", "| machine | runs |", "|---|---|"]
    lines += [f"| {machine} | {n} |" for machine, n in sorted(machines.items())]
    return lines


def analysis(*files: Path) -> list[str]:
    """`python -m transferlab.analyze` records (analysis.json) side by side."""
    found = [(Path(f).stem, json.loads(Path(f).read_text())) for f in files]
    lines = ["| run | target acc | proxy A-distance, features | proxy A-distance, pixels | "
             "analyze CPU time (s) |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['target_acc']:.4f} | {r['proxy_a_distance']:.3f} | "
              f"{r['proxy_a_distance_pixels']:.3f} | {r['cpu_s']:.0f} |" for name, r in found]
    classes = list(found[0][1]["per_class_target_acc"])
    lines += ["", "| class | " + " | ".join(n for n, _ in found) + " |",
              "|" + "---|" * (len(found) + 1)]
    lines += [f"| {c} | " + " | ".join(f"{r['per_class_target_acc'][c]:.3f}" for _, r in found)
              + " |" for c in classes]
    return lines


def bench(file: Path) -> list[str]:
    """A `scripts/bench.py --json` record: images per second of each part, median of rounds."""
    record = json.loads(Path(file).read_text())
    lines = [f"`{record['command']}` on {record['cpu_cores']} cores ({record['machine']}, "
             f"torch {record['torch']}):", "", "| part | malloc tuning | images/s (median) | "
             "rounds |", "|---|---|---|---|"]
    for part, by_tuning in record["parts"].items():
        for tuning, r in by_tuning.items():
            lines.append(f"| {part} | {tuning} | {r['img_s']} | "
                         f"{', '.join(map(str, r['img_s_rounds']))} |")
    return lines


def bench_runs(file: Path) -> list[str]:
    """A `scripts/bench_runs.py --json` record: start-up, evaluation's share, folders, compile."""
    r = json.loads(Path(file).read_text())
    start, ev, img, comp = r["startup"], r["evaluation"], r["images_per_s"], r["compile"]
    rows = [
        ("`python -m transferlab --help`", f"{start['help']['wall_s']} s wall, "
         f"{start['help']['cpu_s']} s CPU", "≤ 1.5 s"),
        ("a refused bad value (`trainer.steps=-5`)", f"{start['refused_bad_value']['wall_s']} s "
         f"wall, {start['refused_bad_value']['cpu_s']} s CPU", "≤ 1.5 s"),
        ("process start to the first training step (MNIST→MNIST-M, caches warm)",
         f"{start['first_training_step_s']} s", "≤ 3 s"),
        (f"one evaluation with the default validators (reports alone {ev['reports_s']} s)",
         f"{ev['evaluation_s']} s", ""),
        ("evaluation's share of a default 10,000-step DANN run "
         f"({ev['evaluations_per_default_run']} evaluations)",
         f"{100 * ev['share_of_default_run']:.1f}%", "≤ 5%"),
        ("DANN images/s: MNIST→MNIST-M in memory; the same digits as PNG folders",
         f"{img['mnist_mnistm']}; {img['digit_folders']} ({img['folders_over_memory']:.2f}×)",
         "folders ≥ 0.8×"),
        ("DANN steps/s: eager; `trainer.compile=true` (inductor)",
         f"{comp['eager_steps_per_s']}; {comp['compiled_steps_per_s']} "
         f"({comp['speed_up']:.2f}×)", ""),
    ]
    lines = [f"`{r['command']}` on {r['machine']['cpu']}, {r['machine']['cores']} cores, "
             f"torch {r['machine']['torch']}:", "", "| figure | measured | goal |",
             "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    parts = ", ".join(f"`{n}` {v:+.2f}" for n, v in ev["validators_s"].items())
    lines += ["", f"Each validator's part of an evaluation, in seconds beyond the reports': "
              f"{parts} (`iwv` and `dev` share one fit when both are measured)."]
    return lines


def selection(plan: Plan) -> list[str]:
    from transferlab.study_report import report

    return report(plan)


KINDS: dict[str, Callable[..., list[str]]] = {"table": table, "details": details,
                                               "provenance": provenance,
                                               "selection": selection, "analysis": analysis,
                                               "bench": bench, "bench_runs": bench_runs}


def build(spec: str, root: Path) -> list[str]:
    kind, plan_path, *args = shlex.split(spec)
    if kind not in KINDS:
        raise UserError(f"unknown generated block {kind!r}; valid: {', '.join(KINDS)}")
    if kind in ("analysis", "bench", "bench_runs"):  # records that are files of their own
        return KINDS[kind](*(root / a for a in (plan_path, *args)))
    plan = load_plan(root / plan_path)
    for setting in args:
        if setting not in plan.settings:
            raise UserError(f"{plan_path} has no setting {setting!r}; valid: "
                            f"{', '.join(plan.settings)}")
    if kind in ("table",):
        return KINDS[kind](plan, args)
    return KINDS[kind](plan, *args)


def render(text: str, root: Path) -> str:
    """`text` with every generated block rebuilt from the records."""
    def rebuilt(match: re.Match[str]) -> str:
        return match[1] + "\n".join(build(match[2], root)) + "\n" + match[4]

    return MARKER.sub(rebuilt, text)


def pages(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*.md")) if "<!-- generated: " in p.read_text()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transferlab.pages",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the docs folder, e.g. docs")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a page differs from its records")
    args = parser.parse_args(argv)
    root = args.folder.resolve().parent
    stale = []
    with user_errors_exit():
        for page in pages(args.folder):
            text = page.read_text()
            new = render(text, root)
            if new != text:
                stale.append(page)
                if not args.check:
                    page.write_text(new)
    verb = "differ from their records" if args.check else "rebuilt"
    print(f"{len(stale)} pages {verb}" + (f": {', '.join(map(str, stale))}" if stale else ""))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())

