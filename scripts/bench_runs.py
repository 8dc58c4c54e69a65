"""What a user waits for around the training step, measured in one run on an idle machine:

    TRANSFERLAB_DATA=../shared/data python scripts/bench_runs.py --json docs/bench_runs.json

- start-up: `python -m transferlab --help`, a refused bad value (`trainer.steps=-5`), and the
  time from the process's start to the first training step of a DANN run on MNIST→MNIST-M with
  its caches warm (the run logs it: "step 1 done … after the process started"), each the
  median of `--repeats` fresh processes, wall and CPU seconds;
- evaluation's share of a default 10,000-step DANN run on MNIST→MNIST-M (an evaluation every
  2,000 steps): one evaluation with the default validators, the reports alone and each
  validator's part, against the time of a training step (wall seconds, all cores);
- images/s of DANN on MNIST→MNIST-M in memory, and on the same digits written as PNG folders
  (`data=folders` with no size setting: sized to the default backbone);
- `trainer.compile`: DANN's training step eager and compiled (inductor), steps/s.
Every figure is the process's own measure on this machine; ratios are the figures to compare
across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from transferlab.config import compose  # noqa: E402
from transferlab.evaluation.base import run_evaluation  # noqa: E402
from transferlab.experiment import build, build_evaluators, seed_everything  # noqa: E402
from transferlab.provenance import cpu_model  # noqa: E402
from transferlab.rules import REPORTS  # noqa: E402

DEFAULT_STEPS, DEFAULT_EVAL_EVERY, BATCH = 10_000, 2_000, 128  # 64 source + 64 target


def timed_process(args: list[str], repeats: int) -> dict[str, float]:
    """Median wall and CPU seconds of `python -m transferlab <args>` in fresh processes."""
    walls, cpus = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        before = os.times()
        subprocess.run([sys.executable, "-m", "transferlab", *args], capture_output=True,
                       cwd=tempfile.gettempdir())
        after = os.times()
        walls.append(time.perf_counter() - start)
        cpus.append(after.children_user + after.children_system
                    - before.children_user - before.children_system)
    return {"wall_s": round(statistics.median(walls), 2),
            "cpu_s": round(statistics.median(cpus), 2)}


def first_step(repeats: int) -> float:
    """Median seconds from a run's process start to its first training step."""
    ages = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            out = subprocess.run([sys.executable, "-m", "transferlab", "method=dann",
                                  "data=mnist_mnistm", "trainer.steps=2", "trainer.eval_every=2",
                                  "evaluation.validators=[]", "objective=source_acc",
                                  "trainer.progress_bar=false", f"hydra.run.dir={folder}"],
                                 capture_output=True, text=True).stdout
            found = re.search(r"step 1 done ([\d.]+) s after", out)
            if found:
                ages.append(float(found[1]))
    return round(statistics.median(ages), 2) if ages else float("nan")


def steps_per_second(overrides: list[str], steps: int, compiled: bool = False) -> float:
    """Training steps per second of the configured run's update, after a warm-up."""
    cfg = compose(["device=cpu", "trainer.progress_bar=false", *overrides,
                   *(["trainer.compile=true"] if compiled else [])])
    seed_everything(0, True)
    pair, method = build(cfg, torch.device("cpu"))
    from transferlab.data.domain import BatchStream, as_input

    (stage, *_) = method.stages(pair.training_view(False))
    streams = {n: BatchStream(s, cfg.trainer.batch_size, seed=k, augment=pair.augment)
               for k, (n, s) in enumerate(stage.data.items())}
    net = method.network

    def step(i: int) -> None:
        batch = {n: (as_input(x, net.in_channels, net.normalization), y)
                 for n, (x, y) in ((n, s.next()) for n, s in streams.items())}
        stage.update(batch, i / steps)

    for i in range(20 if compiled else 5):  # warm-up (compilation)
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps / (time.perf_counter() - start)


def evaluation_share(step_s: float) -> dict:
    """One default evaluation, its parts, and its share of a default DANN run."""
    cfg = compose(["device=cpu", "method=dann", "data=mnist_mnistm"])
    seed_everything(0, True)
    pair, method = build(cfg, torch.device("cpu"))
    evaluators = build_evaluators(cfg)

    def seconds(chosen: dict) -> float:  # wall time, as the steps are timed, on an idle machine
        run_evaluation(method, pair, chosen, cfg.trainer.eval_batch_size)  # warm
        start = time.perf_counter()
        run_evaluation(method, pair, chosen, cfg.trainer.eval_batch_size)
        return time.perf_counter() - start

    reports = {k: evaluators[k] for k in REPORTS}
    whole, alone = seconds(evaluators), seconds(reports)
    parts = {n: round(seconds({**reports, n: e}) - alone, 2)
             for n, e in evaluators.items() if n not in REPORTS}
    evaluations = DEFAULT_STEPS // DEFAULT_EVAL_EVERY
    training = DEFAULT_STEPS * step_s
    return {"evaluation_s": round(whole, 2), "reports_s": round(alone, 2),
            "validators_s": parts, "evaluations_per_default_run": evaluations,
            "share_of_default_run": round(evaluations * whole / (training
                                                                 + evaluations * whole), 4)}


def folder_pair(root: Path) -> list[str]:
    digits = Path(tempfile.mkdtemp(prefix="digit-folders-"))
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_digit_folders.py"),
                    str(digits), "--data-root", str(root)], check=True, capture_output=True)
    return ["data=folders", f"data.source.path={digits / 'mnist'}",
            f"data.target.path={digits / 'mnistm'}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    root = Path(os.environ.get("TRANSFERLAB_DATA", "data"))
    torch.set_num_threads(os.cpu_count() or 1)
    startup = {"help": timed_process(["--help"], args.repeats),
               "refused_bad_value": timed_process(["trainer.steps=-5"], args.repeats),
               "first_training_step_s": first_step(args.repeats)}
    mnistm = ["method=dann", "data=mnist_mnistm"]
    memory = steps_per_second(mnistm, args.steps)
    folders = steps_per_second(["method=dann", *folder_pair(root)], args.steps)
    eager, compiled = memory, steps_per_second(mnistm, args.steps, compiled=True)
    result = {
        "command": "python scripts/bench_runs.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version()},
        "startup": startup,
        "evaluation": evaluation_share(1 / memory),
        "images_per_s": {"mnist_mnistm": round(memory * BATCH),
                         "digit_folders": round(folders * BATCH),
                         "folders_over_memory": round(folders / memory, 3)},
        "compile": {"eager_steps_per_s": round(eager, 1),
                    "compiled_steps_per_s": round(compiled, 1),
                    "speed_up": round(compiled / eager, 3)},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
