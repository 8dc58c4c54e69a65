"""Evaluate a trained run on its own pair or another with the same classes:

    python -m transferlab.evaluate RUN_DIR [data=<pair>] [data.<key>=<value> ...] [--out DIR]

e.g. a model adapted MNIST→MNIST-M, tested on USPS: `... RUN_DIR data=mnist_usps`. Prints the
per-domain table and writes evaluate.json (the same `metrics` keys as results.json) into the
run folder, or into --out.
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--allow-live", action="store_true",
                        help="evaluate a run still training, from its latest checkpoint")
    args = parser.parse_args(argv)
    with user_errors_exit():
        written = evaluate_command(args.run_dir, args.overrides, args.out, args.checkpoint,
                                   args.device, args.allow_live)
    print(f"wrote {written}")


def evaluate_command(run_dir: Path, overrides: list[str], out: Path | None,
                     checkpoint: str, device: str, allow_live: bool = False) -> Path:
    from transferlab.api import evaluate_folder
    from transferlab.files import check_writable, write_json

    folder = out or run_dir
    if run_dir.is_dir():
        check_writable(folder, "the folder", "write evaluate.json elsewhere with --out DIR")
    record, table = evaluate_folder(run_dir, overrides, checkpoint, device, allow_live)
    print(table)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "evaluate.json"
    write_json(path, record)
    return path


if __name__ == "__main__":
    main()
