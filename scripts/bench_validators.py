"""What the validators cost per evaluation, on a model trained for a while:

    python scripts/bench_validators.py data=mnist_mnistm method=dann trainer.steps=1000 \
        data.root=/work/shared/data trainer.num_threads=1 --json bench_validators.json

Arguments other than --json/--repeats/--folds are config overrides. Trains the configured
method for `trainer.steps` with only the two reports measured, then times, on the trained model,
evaluations with the reports alone and with the reports plus each validator, so each
validator's cost is its time beyond the reports' (the forward passes of the splits it adds,
plus its own computation); `iwv+dev` share one domain-classifier fit, timed for each of
`--folds`. Times are the process's CPU seconds (the fastest of `--repeats`): with one thread
that is the wall time of an idle machine, and it is not inflated by other jobs on a shared
one. Wall times are reported too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from transferlab.config import compose
from transferlab.evaluation import evaluate
from transferlab.experiment import build, build_evaluators, seed_everything
from transferlab.rules import REPORTS
from transferlab.train import TrainerConfig, fit


def timed(method, pair, evaluators, batch_size: int, repeats: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one evaluation, the fastest of `repeats`."""
    cpu, wall = [], []
    for _ in range(repeats):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        evaluate(method, pair, evaluators, batch_size)
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return min(cpu), min(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folds", type=int, nargs="+", default=[5],
                        help="cross-fitting folds of iwv+dev to time")
    args, overrides = parser.parse_known_args()
    cfg = compose(["device=cpu", "trainer.progress_bar=false", *overrides])
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    pair, method = build(cfg, torch.device(cfg.device))
    evaluators = build_evaluators(cfg)
    reports = {k: evaluators[k] for k in REPORTS}
    trainer = TrainerConfig(**{k: cfg.trainer[k] for k in TrainerConfig.__dataclass_fields__})
    trainer.eval_every = 10**9
    start = time.perf_counter()
    fit(method, pair, trainer, cfg.seed, lambda *_: None, reports)
    train_s = time.perf_counter() - start

    batch = cfg.trainer.eval_batch_size
    base = timed(method, pair, reports, batch, args.repeats)

    def extra(chosen: dict) -> dict[str, float]:
        cpu, wall = timed(method, pair, {**reports, **chosen}, batch, args.repeats)
        return {"cpu_s": round(cpu - base[0], 3), "wall_s": round(wall - base[1], 3)}

    names = [n for n in evaluators if n not in REPORTS]
    cost = {n: extra({n: evaluators[n]}) for n in names}
    for k in args.folds:
        pair_of = {n: type(evaluators[n])(folds=k) for n in ("iwv", "dev") if n in evaluators}
        cost[f"iwv+dev, {k} folds"] = extra(pair_of)
    total = timed(method, pair, evaluators, batch, args.repeats)
    result = {
        "overrides": overrides, "threads": torch.get_num_threads(),
        "sizes": {s: len(split) for s, split in pair.splits().items()},
        "train_wall_s": round(train_s, 1),
        "reports_only": {"cpu_s": round(base[0], 3), "wall_s": round(base[1], 3)},
        "all_validators_extra": {"cpu_s": round(total[0] - base[0], 3),
                                 "wall_s": round(total[1] - base[1], 3)},
        "per_validator_extra": cost,
        "metrics": evaluate(method, pair, evaluators, batch),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
