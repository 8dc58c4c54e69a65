"""Errors caused by the user's input or environment, reported as one line without a traceback."""


class UserError(Exception):
    """A mistake the user can fix (bad config value, missing data); shown as one line."""


class DataError(UserError):
    """Data files are missing, truncated or corrupted."""
