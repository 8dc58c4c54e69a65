"""See what adaptation did to trained runs:

    python -m transferlab.analyze RUN_DIR [RUN_DIR ...] [data.<key>=<value> ...]
        [--samples N] [--out DIR]

writes into each run folder (or --out) analysis.json (proxy A-distances on features and
pixels, per-class target accuracy), tsne.png, confusion.png, confusion.csv and TensorBoard
projector files under tb/; with several runs also tsne_side_by_side.png. The measures are
those of `transferlab.analysis`. Needs `pip install 'transferlab[analysis]'`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transferlab.errors import UserError, user_errors_exit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m transferlab.analyze",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR|data...",
                        help="run folders, then optional data=<pair> / data.<key>=<value> "
                             "overrides (Hydra syntax) applied to every run")
    parser.add_argument("--samples", "-n", type=int, default=2000,
                        help="test images per domain for the distances, t-SNE and projector")
    parser.add_argument("--out", type=Path, help="write here instead of into the run folders")
    parser.add_argument("--seed", type=int, default=0, help="for the samples, split and t-SNE")
    parser.add_argument("--checkpoint", default="last", help="last (default) or best")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, ...")
    parser.add_argument("--allow-live", action="store_true",
                        help="analyse a run still training, from its latest checkpoint")
    args = parser.parse_args(argv)
    overrides = [a for a in args.runs if "=" in a]
    runs = [Path(a) for a in args.runs if "=" not in a]
    with user_errors_exit():
        if args.samples < 2:
            raise UserError(f"--samples={args.samples} is invalid: must be an integer >= 2")
        from transferlab.api import analyze_runs

        results, side_by_side = analyze_runs(runs, args.out, args.samples, args.seed,
                                             overrides, args.checkpoint, args.device,
                                             args.allow_live)
    for r in results:
        s = r.summary
        print(f"{r.run_dir}: proxy A-distance {s['proxy_a_distance']:.3f} (pixels "
              f"{s['proxy_a_distance_pixels']:.3f}), target acc {s['target_acc']:.4f}, "
              f"{s['time_s']['total']:.1f} s → {r.folder}")
    if side_by_side:
        print(f"side by side: {side_by_side}")


if __name__ == "__main__":
    main()
