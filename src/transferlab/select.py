"""Choose a run and an evaluation step without target labels, and see how well each validator
chooses: `python -m transferlab.select DIR --by <validator>`.

DIR holds run folders (a sweep) or collected run records (results/<study>). Writes
selection.md, selection.csv and one scatter plot per validator (selection_<name>.png) into
DIR (or --out); see `transferlab.selection` for what they say.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from transferlab.errors import UserError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="transferlab-select",
                                     description=__doc__.split("\n\n")[0])
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
        from transferlab.files import check_writable
        from transferlab.selection import select

        check_writable(args.out or args.dir, "the folder", "write the report elsewhere with "
                       "--out DIR")
        select(args.dir, args.by, args.out, args.markdown, draw=not args.no_plot)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
