"""One wording for missing and broken raw files, shared by the loaders, so that every dataset
tells the user what it expected where, and the fix, in the same one line."""

from __future__ import annotations

from pathlib import Path

from transferlab.data.domain import DataContext
from transferlab.errors import DataError


def not_found(ctx: DataContext, dataset: str, expected: str, holder: str,
              download_error: BaseException | None = None) -> DataError:
    """`expected` names the file(s); `holder` is what the folder to pass as data.root holds."""
    if not ctx.download:
        fix = "pass data.download=true to fetch it"
    elif download_error is None:
        fix = "the download failed; copy the files there by hand"
    else:
        reason = (str(download_error).splitlines() or [type(download_error).__name__])[0]
        fix = f"the download failed ({reason}); copy the files there by hand"
    return DataError(f"{dataset} not found: expected {expected}; set data.root or "
                     f"TRANSFERLAB_DATA to the folder holding {holder}, or {fix}")


def unreadable(path: Path, dataset: str, problem: str) -> DataError:
    return DataError(f"cannot read {path}: {problem}; replace it with the original {dataset} "
                     "file (or delete it and pass data.download=true)")


def load_failed(ctx: DataContext, error: BaseException, dataset: str, path: Path,
                names: tuple[str, ...], problem: str) -> DataError:
    """Why a torchvision dataset failed on `path`, one of the files `names` under ctx.root:
    still missing (also after a failed download), or present but unreadable."""
    if not path.exists():
        return not_found(ctx, dataset, " and ".join(str(ctx.root / n) for n in names),
                         " and ".join(names), error if ctx.download else None)
    return unreadable(path, dataset, problem)
