"""Errors caused by the user's input or environment, reported as one line without a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """A mistake the user can fix (bad config value, missing data); shown as one line."""


class DataError(UserError):
    """Data files are missing, truncated or corrupted."""


class BrokenInstall(UserError):
    """torch or torchvision cannot be imported or do not match (see transferlab.install)."""


def find_user_error(error: BaseException) -> UserError | None:
    """The UserError behind `error`, also when a library (Hydra's instantiate) wrapped it; a
    broken torch install is one too (the user's environment, told in one line)."""
    from transferlab.install import diagnose

    seen: set[int] = set()
    broken = None
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        broken = diagnose(current) or broken  # the innermost cause says it best
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return BrokenInstall(broken) if broken else None


@contextmanager
def user_errors_exit() -> Iterator[None]:
    """For a command's main: a UserError (also wrapped, e.g. by Hydra's instantiate) ends the
    process with one line on stderr and exit status 2; anything else propagates."""
    try:
        yield
    except Exception as e:
        error = find_user_error(e)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
