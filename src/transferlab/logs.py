"""The console and the job log show the same messages: the code logs them, and
conf/config.yaml's `hydra.job_logging` sends INFO to stdout and warnings and errors to stderr,
both as the bare message, and everything, with times, to `<run folder>/transferlab.log`."""

from __future__ import annotations

import logging


class BelowWarning(logging.Filter):
    """Lets debug and info records through: stdout's share, stderr takes the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING
