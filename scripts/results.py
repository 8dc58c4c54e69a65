"""Write docs/RESULTS.md from `make reproduce`'s runs: ours beside the published numbers.

    python scripts/results.py multirun/reproduce [--bench docs/bench.json] [--out docs]

Each experiment's runs are below `<root>/<experiment>/`. Pairs whose runs are absent (their data
is not on the machine) get rows marked "not yet measured here" rather than a guess.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

from transferlab.summarize import Group, Run, group_runs, load_runs, mean_std

METHODS = ("source_only", "dann", "dann+mcc", "adda", "dan", "coral", "cdan", "mdd", "iwerm",
           "iwdan", "mcc", "mcd", "vada", "dirtt", "finetune", "target_only")
# Target-domain test accuracy as published: DANN paper (Ganin & Lempitsky 2015, Table 1) for
# MNIST→MNIST-M, and for VADA and DIRT-T the DIRT-T paper (Shu et al. 2018, Table 2, without
# instance normalisation); ADDA paper (Tzeng et al. 2017, Table 2) for the others. The papers of
# DAN, Deep CORAL, CDAN, MDD, MCD and MCC report no MNIST→MNIST-M result and instance
# weighting has no single paper, so their rows show "—".
PUBLISHED = {
    "mnist_mnistm": {"source_only": 0.5225, "dann": 0.7666, "vada": 0.957, "dirtt": 0.989,
                     "target_only": 0.9596},
    "mnist_usps": {"source_only": 0.752, "adda": 0.894},
    "usps_mnist": {"source_only": 0.57, "adda": 0.901},
    "svhn_mnist": {"source_only": 0.601, "adda": 0.760},
}
TITLES = {"mnist_mnistm": "MNIST → MNIST-M", "mnist_usps": "MNIST → USPS",
          "usps_mnist": "USPS → MNIST", "svhn_mnist": "SVHN → MNIST"}
MISSING = {"mnist_usps": "USPS", "usps_mnist": "USPS", "svhn_mnist": "SVHN"}
COMMAND = ("python -m transferlab -m experiment={exp} "
           "method=source_only,target_only,dann,adda,finetune,dan,coral,cdan,mdd,iwerm,iwdan,"
           "mcc,mcd,vada,dirtt seed=0,1,2")
STACKED = "method.regularizers."


def row_name(group: Group) -> str:
    """The method with its stacked regularisers (`dann+mcc`)."""
    regularizers = dict.fromkeys(k[len(STACKED):].split(".")[0] for k in group.config
                                 if k.startswith(STACKED))
    return "+".join([group.choices["method"], *regularizers])


def varies(group: Group) -> str:
    """The keys that tell the group from others of its method, but its regularisers'."""
    return " ".join(f"{k}={v}" for k, v in group.differing.items() if not k.startswith(STACKED))


def reused_first_stage(run: Run) -> bool:
    events = json.loads((run.path / "results.json").read_text()).get("stage_cache", [])
    return isinstance(events, list) and any(e.get("action") == "reused" for e in events)


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def experiment_section(exp: str, runs: list[Run]) -> list[str]:
    lines = [f"## {TITLES[exp]}", ""]
    published = PUBLISHED[exp]
    if not runs:
        lines += ["Not yet measured here: `make reproduce` found no runs of this experiment "
                  f"(it needs the {MISSING.get(exp, 'data')} files under `data.root`, in "
                  f"torchvision's layout). To measure, run `{COMMAND.format(exp=exp)}`.", "",
                  "| method | target acc (ours) | target acc (published) |", "|---|---|---|"]
        lines += [f"| {m} | not yet measured here | {published.get(m, '—')} |" for m in METHODS]
        return [*lines, ""]
    order = {m: i for i, m in enumerate(METHODS)}
    groups = sorted(group_runs(runs), key=lambda g: (order.get(row_name(g), 99), varies(g)))
    lines += [f"Command: `{COMMAND.format(exp=exp)}` (3 seeds; mean ± sample std). Rows with "
              "overrides were run with those added.", "",
              "| method | target acc (ours) | target acc (published) | source acc (ours) | "
              "source val acc | seeds | wall time per run (s) |",
              "|---|---|---|---|---|---|---|"]
    for group in groups:
        method = row_name(group)
        done = group.completed
        walls = ", ".join(f"{r.wall_time_s:.0f}{'*' if reused_first_stage(r) else ''}"
                          for r in done)
        failed = f" ({len(group.failed)} failed)" if group.failed else ""
        name = f"{method} ({varies(group)})" if varies(group) else method
        lines.append(f"| {name} | {mean_std(*group.stats('target_acc'))} | "
                     f"{published.get(method, '—')} | "
                     f"{mean_std(*group.stats('source_acc'))} | "
                     f"{mean_std(*group.stats('source_val_acc'))} | "
                     f"{len(done)}{failed} | {walls} |")
    if any(reused_first_stage(r) for g in groups for r in g.completed):
        lines += ["", "\\* reused a first stage stored by an earlier run with identical inputs "
                  "(`stage_cache` in its results.json; `src/transferlab/stage_cache.py`): its "
                  "wall time excludes that stage."]
    return [*lines, ""]


def plot_curves(exp: str, runs: list[Run], out: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for group in group_runs(runs):
        histories = []
        for run in group.completed:
            record = json.loads((run.path / "results.json").read_text())
            histories.append({h["step"]: h["target_acc"] for h in record["history"]})
        steps = sorted(set.intersection(*(set(h) for h in histories))) if histories else []
        if not steps:
            continue
        means = [statistics.fmean(h[s] for h in histories) for s in steps]
        label = " ".join(filter(None, [row_name(group), varies(group)]))
        ax.plot(steps, means, marker="o", ms=3, label=label)
    for method, value in PUBLISHED[exp].items():
        ax.axhline(value, ls=":", lw=0.8, color="grey")
        ax.text(0.01, value, f"paper: {method} {value}", fontsize=7, color="grey",
                va="bottom", transform=ax.get_yaxis_transform())
    ax.set(xlabel="step", ylabel="target test accuracy (mean of seeds)",
           title=f"{TITLES[exp]}: target accuracy during training", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    name = f"curves_{exp}.png"
    fig.savefig(out / name, dpi=120)
    plt.close(fig)
    return name


def speed_section(bench: dict) -> list[str]:
    parts = bench["parts"]
    load = ", ".join(f"{x:.2f}" for x in bench["load_avg_1_5_15_before"])
    command = bench.get("command", "python scripts/bench.py --json docs/bench.json")
    lines = ["## Speed", "", f"Command: `{command}` "
             f"(device {bench['device']}, {bench['cpu_threads']} torch threads on "
             f"{bench['cpu_cores']} cores, batches of {bench['batch']}, torch {bench['torch']}, "
             f"glibc {bench['glibc'] or '—'}). Each figure is measured in a fresh process and is "
             f"the median of {bench['rounds']} interleaved rounds of {bench['steps']} steps; page "
             "faults are the minor faults of the timed steps (`getrusage`), per step; CPU s/s "
             "is the process's CPU time per second of them (below the thread count when other "
             "processes shared the cores). Load "
             f"average (1, 5, 15 min) before: {load}.", "",
             "| what | malloc tuning | images/s | minor page faults / step | CPU s/s | "
             "images/s per round |", "|---|---|---|---|---|---|"]

    def row(what: str, malloc: str, m: dict) -> str:
        rounds = ", ".join(map(str, m["img_s_rounds"]))
        return (f"| {what} | {malloc} | {m['img_s']} | {m['minflt_per_step']:g} | "
                f"{m['cpu_busy']} | {rounds} |")

    whats = {"a": "(a) DANN update alone, on batches already in memory (the bound)"}
    whats.update({key: f"(b) transferlab training loop, {key[2:]} storage"
                  for key in parts if key.startswith("b:")})
    whats.update({key: f"(c) same update, torchvision per-sample `DataLoader`, {key[2:]} workers"
                  for key in parts if key.startswith("c:")})
    lines += [row(what, malloc, parts[key][malloc]) for key, what in whats.items()
              for malloc in ("on", "off") if malloc in parts[key]]
    b_over_a = "; ".join(f"{storage} storage: {r['on']} with malloc tuning, {r['off']} without"
                         for storage, r in bench["b_over_a"].items())
    gains = ", ".join(f"({key[0]}){key[1:].replace(':', ' ')} ×{g}"
                      for key, g in bench["malloc_tuning_gain"].items())
    lines += ["", f"b/a = {b_over_a} (goal ≥ 0.9 with it); b/c = {bench['b_over_c']} (goal ≥ "
              "1.5, against the fastest DataLoader setting). Malloc tuning on / off: "
              f"{gains}.", ""]
    if "time_to_0.7666_s" in bench:
        lines += [f"DANN with the default config, as `python -m transferlab` in a fresh process, "
                  f"reached the paper's 0.7666 on MNIST-M test after "
                  f"{bench['time_to_0.7666_s']:.0f} s of training (step "
                  f"{bench['time_to_0.7666_step']}, evaluating every 500 steps; goal < 300 s); "
                  f"the whole 10,000-step run took {bench['dann_full_run_s']:.0f} s including "
                  f"data loading and ended at {bench['dann_final_target_acc']:.4f}. It trained "
                  f"at {bench['dann_train_img_s']} images/s (from its TensorBoard event times, "
                  "evaluations left out).", ""]
    return lines


ANALYZED = {"source_only": "source-only", "dann": "DANN"}


def analysis_section(folder: Path, out: Path) -> list[str]:
    """From `make analyze-figures` (its copies in docs/analysis/): the proxy A-distances,
    per-class target accuracy, t-SNE and confusion matrices of a source-only and a DANN run."""
    found = {m: json.loads((folder / f"{m}.json").read_text())
             for m in ANALYZED if (folder / f"{m}.json").exists()}
    if not found:
        return []
    link = Path(os.path.relpath(folder, out)).as_posix()  # from RESULTS.md to the figures
    n = next(iter(found.values()))["samples_per_domain"]
    lines = ["## Seeing adaptation: MNIST → MNIST-M", "",
             "Command: `make analyze-figures` (with `TRANSFERLAB_DATA` set): a source-only and a "
             "DANN run of 10,000 steps with the default config (seed 0), then `python -m "
             f"transferlab.analyze` on both (N = {n:,} test images per domain), copied to "
             f"`{folder}/`. Proxy A-distance: 2(1 − 2ε), ε the held-out error of a linear "
             "SVM telling source from target (README, section Seeing adaptation). analyze's "
             "wall time grows with the machine's load; its CPU time (all its threads) does "
             "not.", "",
             "| run | target acc | proxy A-distance, features | proxy A-distance, pixels | "
             "analyze: wall / CPU time (s) |", "|---|---|---|---|---|"]
    lines += [f"| {ANALYZED[m]} | {a['target_acc']:.4f} | {a['proxy_a_distance']:.3f} | "
              f"{a['proxy_a_distance_pixels']:.3f} | {a['time_s']['total']:.0f} / "
              f"{a['cpu_s']:.0f} |" for m, a in found.items()]
    if len(found) == len(ANALYZED):
        before, after = (found[m]["proxy_a_distance"] for m in ANALYZED)
        verdict = ("falls" if after < before else "does not fall")
        lines += ["", f"The proxy A-distance of the encoder's features {verdict} with adaptation "
                  f"({before:.3f} → {after:.3f}); the DANN paper (Ganin et al., JMLR 2016, "
                  "fig. 3) reports it lower for DANN's representation than for a standard "
                  "network's, on its sentiment-analysis data."]
    classes = list(next(iter(found.values()))["per_class_target_acc"])
    lines += ["", "Per-class target (MNIST-M test) accuracy:", "",
              "| class | " + " | ".join(ANALYZED[m] for m in found) + " |",
              "|---|" + "---|" * len(found)]
    lines += [f"| {c} | " + " | ".join(f"{a['per_class_target_acc'][c]:.3f}"
                                      for a in found.values()) + " |" for c in classes]
    lines += ["", f"![t-SNE of source and target features, source-only above, DANN below]"
              f"({link}/tsne_mnist_mnistm.png)", ""]
    lines += [f"![{ANALYZED[m]} confusion matrix]({link}/confusion_{m}.png)" for m in found]
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--bench", type=Path, default=Path("docs/bench.json"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--analysis", type=Path, default=Path("docs/analysis"),
                        help="`make analyze-figures`' summaries and figures, if present")
    parser.add_argument("--notes", type=Path, default=Path("docs/RESULTS_NOTES.md"),
                        help="hand-written discussion appended verbatim, if present")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    lines = ["# Results", "",
             "Generated by `make reproduce` (`scripts/results.py`) from the runs it made; "
             "every number below comes from those runs' `results.json`.", "",
             f"Hardware: {hardware()}; CPU only.", ""]
    for exp in PUBLISHED:
        # `<exp>/` holds the sweep of `make reproduce`; `<exp>-<name>/` extra sweeps (variants)
        runs = [run for d in sorted(args.root.glob(f"{exp}*")) if d.name == exp
                or d.name.startswith(f"{exp}-") for run in load_runs(d)]
        lines += experiment_section(exp, runs)
        if runs and (name := plot_curves(exp, runs, args.out)):
            lines += [f"![target accuracy curves]({name})", ""]
    lines += analysis_section(args.analysis, args.out)
    if args.bench.exists():
        lines += speed_section(json.loads(args.bench.read_text()))
    if args.notes.exists():
        lines += [args.notes.read_text().strip(), ""]
    (args.out / "RESULTS.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
