"""Evaluate a trained run on its own pair or another with the same classes:

    python -m transferlab.evaluate RUN_DIR [data=<pair>] [data.<key>=<value> ...] [--out DIR]

e.g. a model adapted MNIST→MNIST-M, tested on USPS: `... RUN_DIR data=mnist_usps`. Prints the
per-domain table and writes evaluate.json (the same `metrics` keys as results.json) into the
run folder, or into --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from transferlab.errors import user_errors_exit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m transferlab.evaluate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder (holds checkpoints/)")
    parser.add_argument("overrides", nargs="*", metavar="data...",
                        help="data=<pair> and data.<key>=<value> overrides (Hydra syntax)")
    parser.add_argument("--out", type=Path, help="folder for evaluate.json (default: RUN_DIR)")
    parser.add_argument("--checkpoint", default="last", help="last (default) or best")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, ...")
    args = parser.parse_args(argv)
    with user_errors_exit():
        written = evaluate_command(args.run_dir, args.overrides, args.out, args.checkpoint,
                                   args.device)
    print(f"wrote {written}")


def evaluate_command(run_dir: Path, overrides: list[str], out: Path | None,
                     checkpoint: str, device: str) -> Path:
    from transferlab.api import evaluate_run, load, run_pair
    from transferlab.cli import build_evaluators, results_table
    from transferlab.run_folder import write_json

    start = time.time()
    method = load(run_dir, checkpoint, device)
    pair = run_pair(method, overrides)
    evaluators = build_evaluators(method.config)
    metrics = evaluate_run(method, pair, evaluators)
    print(results_table(pair, evaluators, metrics))
    folder = out or run_dir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "evaluate.json"
    write_json(path, {
        "run": str(run_dir), "checkpoint": checkpoint, "step": method.step,
        "overrides": overrides, "domains": {"source": pair.source.name,
                                            "target": pair.target.name},
        "metrics": metrics, "evaluators": {n: e.describe() for n, e in evaluators.items()},
        "wall_time_s": round(time.time() - start, 3)})
    return path


if __name__ == "__main__":
    main()
