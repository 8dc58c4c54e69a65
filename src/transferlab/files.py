"""Files that survive crashes and share folders safely: atomic writes, one lock per folder or
file, and the user's cache folder. Every module that writes a record, a checkpoint or a
cache writes it through here.

- `write_atomic`: through a temporary file beside the target, flushed and fsynced, then
  renamed over it, so a crash at any moment leaves the old file or the new one, never a torn
  one; a write that fails (a full disk) removes its temporary file and re-raises.
- `FileLock`: an `fcntl.flock` on a lock file, exclusive or shared, waiting or not, that
  records its holder ("PID HOST"). The kernel drops it when the process ends, however it
  ends, so it is never left stale.
- `cache_folder`: `$XDG_CACHE_HOME/transferlab/<kind>` (default `~/.cache/transferlab`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO

from transferlab.errors import UserError


class OutOfSpace(UserError):
    """A write failed because its filesystem is full (or the user's quota is)."""


# A failed write with less free space than this left is taken to have run out of space: some
# writers (torch.save's zip writer) report a short write as a RuntimeError, not as ENOSPC.
NEARLY_FULL = 1 << 20


def write_atomic(path: Path, write: Callable[[BinaryIO], None],
                 keep_previous: Path | None = None) -> None:
    """`write(file)` into a temporary file, then rename it over `path`; with `keep_previous`,
    the old `path` is kept there first (as a fallback should the new one be damaged). A write
    that fails leaves no temporary file; one that fails for want of space raises `OutOfSpace`
    naming the folder, the bytes it needs and the bytes free."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except Exception as error:
        full = out_of_space(error, tmp, path)
        tmp.unlink(missing_ok=True)
        if full:
            raise full from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def out_of_space(error: Exception, partial: Path, path: Path) -> OutOfSpace | None:
    """`error` as an OutOfSpace if writing `partial` (the unfinished copy of `path`) failed
    for want of space, else None."""
    written = partial.stat().st_size if partial.exists() else 0
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return None
    no_space = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    if not no_space and free >= NEARLY_FULL:
        return None
    needed = max(written, path.stat().st_size if path.exists() else 0)
    return OutOfSpace(f"out of space in {path.parent}: writing {path.name} needs about "
                      f"{needed:,} bytes and {free + written:,} are free; make room (or choose "
                      "another folder) and rerun the same command: it resumes from its last "
                      "checkpoint")


def commit(tmp: Path, path: Path) -> None:
    """Move a finished temporary file (one written by other means, e.g. through a memory map)
    over `path`, its bytes on disk first."""
    with open(tmp, "rb") as file:
        os.fsync(file.fileno())
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda file: file.write(text.encode()))


def write_json(path: Path, record: Any, indent: int | None = 2) -> None:
    """JSON, indented, or with `indent=None` as compact as JSON goes (committed records)."""
    separators = (",", ":") if indent is None else None
    write_text(path, json.dumps(record, indent=indent, separators=separators) + "\n")


def check_writable(folder: Path, what: str, instead: str) -> None:
    """One line, instead of a traceback after the work is done, when `folder` (or the nearest
    folder of it that exists) cannot be written: a read-only filesystem, no permission, a full
    disk. `what` names the folder for the user, `instead` says how to write elsewhere."""
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UserError(f"cannot write {what} {folder} ({e.strerror}: {existing}); "
                        f"{instead}") from None


def cache_folder(kind: str = "") -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "transferlab" / kind


class FileLock:
    """An flock on `path` (created if missing, never deleted: a process that opened it before
    a deletion would lock a file nobody else can see)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: IO[str] | None = None

    def acquire(self, wait: bool = True, patience_s: float = 0.5) -> None:
        """Take the lock exclusively and write this process into it. Without `wait`, raise
        BlockingIOError if another process holds it (after `patience_s`, the time a `holder`
        probe may hold it shared)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")  # noqa: SIM115 (held open while locked)
        try:
            if wait:
                fcntl.flock(file, fcntl.LOCK_EX)
            else:
                _lock_with_patience(file, patience_s)
        except BaseException:
            file.close()
            raise
        file.truncate(0)
        file.write(f"{os.getpid()} {socket.gethostname()}\n")
        file.flush()
        self.file = file

    def release(self) -> None:
        if self.file:
            self.file.close()  # closing the only descriptor drops the lock
            self.file = None

    def holder(self) -> str | None:
        """Who holds the lock ("PID HOST"), or None when nobody does: probed with a shared lock
        for an instant."""
        try:
            with open(self.path) as file:
                try:
                    fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return file.read().strip() or "?"
                fcntl.flock(file, fcntl.LOCK_UN)
                return None
        except OSError:  # no lock file, or a filesystem without locks
            return None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock_with_patience(file: IO[str], patience_s: float) -> None:
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
