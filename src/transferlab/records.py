"""Run records: what a finished (or failed) run leaves for tables and studies, and `results/`,
the committed collection of them.

A run's record is its results.json (`transferlab.run_folder` writes it): a small versioned JSON
document with the group choices and overrides, the seed, the resolved config, the package
version and source hash (`code_version`), the data fingerprint, the machine, the status, the
final metrics, the history of every evaluation of every evaluator, and wall and CPU time.
`check` is its schema; `read` refuses a version it does not know, in one line.

    python -m transferlab.records collect SWEEP_DIR --into results/STUDY [--with-predictions]

copies the record of every finished or failed run below SWEEP_DIR into results/STUDY/, one
file per run named after the run's folder (Hydra's override dirname in studies), and with
`--with-predictions` its target_val predictions, quantised to 16 levels (`PREDICTION_LEVELS`)
and compressed: what a validator that compares models (`ensv`) needs, at a few KB per run.
Collecting again adds nothing twice: a record already there is kept unless the new one is a
later state of the same run (a failed run that has since completed).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.errors import UserError, user_errors_exit
from transferlab.files import write_atomic, write_json
from transferlab.run_folder import PREDICTIONS, RECORD_VERSION, RESULTS, status_of

FINISHED = ("completed", "failed", "interrupted")
# Keys every record of this version has, with their JSON types.
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "record_version": int, "status": str, "choices": dict, "seed": int, "config": dict,
    "overrides": list, "versions": dict, "history": list, "wall_time_s": (int, float),
}
# Keys a completed record adds.
COMPLETED: dict[str, type | tuple[type, ...]] = {
    "metrics": dict, "steps": int, "machine": dict, "code_version": str,
    "data_fingerprint": str, "cpu_time_s": (int, float), "evaluators": dict,
}
PREDICTION_LEVELS = 15  # probabilities stored as round(p · 15): 4 bits a class and image
SUFFIX = ".predictions.npz"


def check(record: Any, source: str) -> dict[str, Any]:
    """The record if it is one this version reads; else a one-line UserError naming `source`
    and what is wrong."""
    if not isinstance(record, dict):
        raise UserError(f"{source} is not a run record (a JSON object)")
    version = record.get("record_version")
    if version != RECORD_VERSION:
        raise UserError(f"{source}: record_version {version} is not one this transferlab "
                        f"reads ({RECORD_VERSION}); records without one predate run records")
    wanted = {**REQUIRED, **(COMPLETED if record.get("status") == "completed" else {})}
    for key, kind in wanted.items():
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
            raise UserError(f"{source}: `{key}` is missing or not "
                            f"{getattr(kind, '__name__', kind)}")
    return record


def read(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is unreadable ({e})") from None
    return check(record, str(path))


def record_name(run_dir: Path, sweep_dir: Path) -> str:
    """The file name (without suffix) of a run's record: its folder below the sweep, with path
    separators and characters that are awkward in file names replaced."""
    relative = run_dir.relative_to(sweep_dir).as_posix() if run_dir != sweep_dir else run_dir.name
    return re.sub(r"[^A-Za-z0-9_.,=+-]+", "_", relative.replace("/", "__")) or "run"


def finished_runs(sweep_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every run below `sweep_dir` whose record says it finished (completed, failed or
    interrupted, and no process holds it), with that record."""
    for path in sorted(sweep_dir.rglob(RESULTS)):
        try:
            record = check(json.loads(path.read_text()), str(path))
        except (OSError, json.JSONDecodeError, UserError):
            continue
        if status_of(path.parent, record) in FINISHED:
            yield path.parent, record


@dataclass
class Collected:
    added: list[str]
    updated: list[str]
    unchanged: list[str]


def collect(sweep_dir: Path, into: Path, with_predictions: bool = False,
            only: Collection[str] | None = None) -> Collected:
    """Copy the record of every finished run below `sweep_dir` (with `only`, of the runs in
    those folders of it) into `into` (see the module docstring)."""
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} is not a folder")
    into.mkdir(parents=True, exist_ok=True)
    done = Collected([], [], [])
    runs = (finished_runs(sweep_dir) if only is None else
            (found for name in only for found in finished_runs(sweep_dir / name)))
    for run_dir, record in runs:
        name = record_name(run_dir, sweep_dir)
        target = into / f"{name}.json"
        previous = read(target) if target.exists() else None
        if previous is not None and (previous == record or not _later(record, previous)):
            done.unchanged.append(name)
            continue
        write_json(target, record, indent=None)
        (done.updated if previous else done.added).append(name)
        if with_predictions and (run_dir / PREDICTIONS).exists():
            write_predictions(into / f"{name}{SUFFIX}", run_dir / PREDICTIONS)
    return done


def _later(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Whether `new` is a later state of the run `old` recorded: it completed where the old
    one did not, or it has more evaluations."""
    if old.get("status") == "completed":
        return False
    return new.get("status") == "completed" or len(new["history"]) > len(old["history"])


def write_predictions(path: Path, run_predictions: Path) -> None:
    """A run's target_val predictions, quantised: `steps` (E,), `classes` (C,) and `levels`,
    the probabilities as round(p · PREDICTION_LEVELS), two 4-bit levels a byte, (E, N, ⌈C/2⌉)
    uint8, the class of even index in the high half."""
    with np.load(run_predictions) as stored:
        steps, probabilities = stored["steps"], stored["probabilities"].astype(np.float32)
    levels = np.rint(probabilities * PREDICTION_LEVELS).astype(np.uint8)
    classes = levels.shape[-1]
    if classes % 2:
        levels = np.concatenate([levels, np.zeros_like(levels[..., :1])], axis=-1)
    packed = (levels[..., 0::2] << 4) | levels[..., 1::2]
    write_atomic(path, lambda file: np.savez_compressed(
        file, steps=steps, classes=np.array([classes]), levels=packed))


def read_predictions(path: Path) -> dict[int, np.ndarray]:
    """step → target_val class probabilities (N, classes), float32, from a run folder's
    predictions file or a collected (quantised) one."""
    with np.load(io.BytesIO(path.read_bytes())) as stored:
        if "levels" in stored:
            packed = stored["levels"]
            levels = np.empty((*packed.shape[:-1], 2 * packed.shape[-1]), dtype=np.uint8)
            levels[..., 0::2], levels[..., 1::2] = packed >> 4, packed & 0x0F
            classes = int(stored["classes"][0])
            values = levels[..., :classes].astype(np.float32) / PREDICTION_LEVELS
        else:
            values = stored["probabilities"].astype(np.float32)
        return {int(s): v for s, v in zip(stored["steps"], values, strict=True)}


def load(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every record in a results folder (records of `collect`), checked."""
    return [(p, read(p)) for p in sorted(folder.rglob("*.json"))]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m transferlab.records",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gather = commands.add_parser("collect", help="copy the records of a sweep into results/")
    gather.add_argument("sweep_dir", type=Path)
    gather.add_argument("--into", type=Path, required=True, help="e.g. results/<study>")
    gather.add_argument("--with-predictions", action="store_true",
                        help="also each run's target_val predictions (quantised, compressed)")
    args = parser.parse_args(argv)
    with user_errors_exit():
        done = collect(args.sweep_dir, args.into, args.with_predictions)
    print(f"{args.into}: {len(done.added)} added, {len(done.updated)} updated, "
          f"{len(done.unchanged)} already there")


if __name__ == "__main__":
    sys.exit(main())
