"""A run folder has one owner at a time, and a record (results.json) of how far its run got.

- One owner: `RunFolder` holds an exclusive `fcntl.flock` on `<folder>/run.lock` for the whole
  run. The kernel drops the lock when the process ends, however it ends (SIGKILL, the OOM
  killer), so it is never left stale; a second process on the folder stops at once, naming
  the process that holds it.
- A record from the start: once the run has passed its checks, results.json says
  `status: running` (config, choices, versions); it is rewritten at every evaluation with the
  history so far, and at the end with `completed`, `interrupted` or `failed`. A `running`
  record whose lock nobody holds belongs to a process that died: `status_of` calls it
  `incomplete`.
- Nothing finished is overwritten: a completed run is never trained or rewritten again (a rerun
  reports it; a rerun with another config is refused), and an invocation that stops before it
  starts (a refusal, a damaged checkpoint) leaves an existing results.json as it is; in a
  sweep, its error goes into that invocation's own `.hydra/refused.json`, for the sweep's
  report, and a later invocation that begins removes it.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from transferlab.errors import UserError, find_user_error
from transferlab.files import FileLock, write_atomic, write_json
from transferlab.rules import config_changes

if TYPE_CHECKING:
    from torch import Tensor

LOCK = "run.lock"
RESULTS = "results.json"
REFUSED = ".hydra/refused.json"  # a sweep job's refusal, for the report
PREDICTIONS = "target_val_predictions.npz"
# results.json's layout; readers refuse versions they do not know (transferlab.records)
RECORD_VERSION = 1

log = logging.getLogger(__name__)


class FolderInUse(UserError):
    pass


def write_predictions(folder: Path, predictions: Mapping[int, Tensor]) -> None:
    """Every evaluation's target_val class probabilities, for validators that compare the
    models of a sweep (`transferlab.select`): `steps` (E,) and `probabilities` (E, N, classes)
    float16 in a compressed .npz, written via a temporary file like results.json."""
    import numpy as np

    steps = sorted(predictions)
    write_atomic(folder / PREDICTIONS, lambda file: np.savez_compressed(
        file, steps=np.array(steps, dtype=np.int64),
        probabilities=np.stack([predictions[s].numpy() for s in steps])))


def read_record(folder: Path) -> dict[str, Any] | None:
    path = folder / RESULTS
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning(f"{path} is unreadable ({e}); the run starts a new record")
        return None


def holder(folder: Path) -> str | None:
    """Who holds the folder's lock ("PID HOST"), or None when nobody does."""
    return FileLock(folder / LOCK).holder()


def status_of(folder: Path, record: dict[str, Any]) -> str:
    """The record's status, `incomplete` for a `running` record that nobody is running."""
    status = record.get("status", "unknown")
    return "incomplete" if status == "running" and holder(folder) is None else status


def output_folder(arguments: Sequence[str]) -> Path:
    """The folder Hydra will create the run's (or sweep's) folder in, as far as the command line
    says before Hydra resolves it: the given `hydra.run.dir` (`hydra.sweep.dir` with -m) up to
    its first interpolation, or Hydra's default, `outputs` (`multirun`)."""
    multirun = "-m" in arguments or "--multirun" in arguments
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    given = [a.lstrip("+")[len(key):] for a in arguments if a.lstrip("+").startswith(key)]
    return Path(given[-1].split("${")[0].strip("'\"") if given
                else "multirun" if multirun else "outputs")


def check_free(folder: Path) -> None:
    """Refuse at once, before Hydra writes its files there, a run folder another process
    holds (a sweep's folder holds only jobs, which each check their own)."""
    owner = holder(folder)
    if owner is not None:
        raise FolderInUse(f"run folder {folder} is in use by {_describe(owner)}; wait for it to "
                          "end, or use another hydra.run.dir")


def _describe(owner: str) -> str:
    pid, _, host = owner.partition(" ")
    return f"process {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")


class RunLock:
    """The folder's `FileLock`, held exclusively until `release` or the process's end; a
    second process is refused at once, naming the holder."""

    def __init__(self, folder: Path) -> None:
        self.lock = FileLock(folder / LOCK)

    def acquire(self) -> None:
        try:
            self.lock.acquire(wait=False)
        except BlockingIOError:
            owner = self.lock.holder()
            raise FolderInUse(f"run folder {self.lock.path.parent} is in use by "
                              f"{_describe(owner) if owner else 'another process'}; wait for "
                              "it to end, or use another hydra.run.dir") from None
        except OSError as e:  # e.g. a network filesystem mounted without lock support
            log.warning(f"cannot lock {self.lock.path} ({e.strerror}); running without the "
                        "one-process-per-folder check")

    def release(self) -> None:
        self.lock.release()


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


class RunFolder:
    """One invocation's hold on a run folder: the lock, and the record in results.json.

    `base` is what every record of the run says (config, choices, seed, versions); `overrides`
    are this invocation's command-line overrides. Used as a context manager: entering takes the
    lock and reads the record an earlier invocation left; leaving with an exception records
    it (see `_record_failure`), then releases the lock.
    """

    def __init__(self, path: Path, base: dict[str, Any], overrides: Sequence[str] = (),
                 record_refusal: bool = False) -> None:
        self.path = path
        self.record_refusal = record_refusal  # in a sweep: for its report (REFUSED)
        self.base = base
        self.overrides = list(overrides)
        self.lock = RunLock(path)
        self.previous: dict[str, Any] | None = None  # the record found at the start
        self.record: dict[str, Any] | None = None    # this invocation's, once it has begun
        self.earlier: list[dict[str, Any]] = []      # earlier invocations of the same run
        self.start = time.time()
        self.cpu_start = time.process_time()

    def __enter__(self) -> RunFolder:
        self.lock.acquire()
        self.previous = read_record(self.path)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            if error is not None:
                self._record_failure(error)
        finally:
            self.lock.release()

    def _same_run(self, config: dict[str, Any]) -> bool:
        return not config_changes(config, self.base["config"])

    def _original_overrides(self) -> str:
        overrides = (self.previous or {}).get("overrides")
        if overrides is None:
            return "its original overrides"
        return f"its original overrides ({' '.join(overrides) or 'none'}, kept in " \
               f"{self.path / RESULTS})"

    def completed(self) -> dict[str, Any] | None:
        """The record of the completed run this folder holds, if any. Refuses (UserError) when
        this invocation asks for a different training: a finished run is never retrained."""
        if not self.previous or self.previous.get("status") != "completed":
            return None
        changes = config_changes(self.previous.get("config", {}), self.base["config"])
        if changes:
            raise UserError(f"{self.path} holds a completed run with a different config "
                            f"({changes}); it is kept as it is: rerun with "
                            f"{self._original_overrides()} to see it, or use a new "
                            "hydra.run.dir")
        return self.previous

    def check_resumable(self, checkpoint: Path, config: dict[str, Any]) -> None:
        """Refuse to resume a checkpoint made with a different training config."""
        changes = config_changes(config, self.base["config"])
        if changes:
            raise UserError(f"{checkpoint} was made with a different config ({changes}); to "
                            f"resume it, rerun with {self._original_overrides()}, or use a "
                            "new hydra.run.dir")

    def begin(self, history: list[dict[str, Any]], **facts: Any) -> None:
        """Take the folder over: from here on results.json is this invocation's record. An
        earlier record of the same training (resumed, or restarted) keeps its overrides and
        the wall times of its invocations."""
        same = self.previous is not None and self._same_run(self.previous.get("config", {}))
        self.earlier = list(self.previous.get("invocations", [])) if same else []
        overrides = self.previous.get("overrides", self.overrides) if same else self.overrides
        (self.path / REFUSED).unlink(missing_ok=True)  # an earlier refusal is history now
        self.record = {"record_version": RECORD_VERSION, "status": "running", **self.base,
                       "overrides": overrides,
                       "history": history, **facts}
        self.write()

    def update(self, **fields: Any) -> None:
        assert self.record is not None, "update() before begin()"
        self.record.update(fields)
        self.write()

    def write(self) -> None:
        assert self.record is not None
        this = {"started": _iso(self.start), "host": socket.gethostname(),
                "overrides": self.overrides, "wall_time_s": round(time.time() - self.start, 3),
                "cpu_time_s": round(time.process_time() - self.cpu_start, 3)}
        invocations = [*self.earlier, this]
        self.record.update(
            invocations=invocations,
            wall_time_s=round(sum(i["wall_time_s"] for i in invocations), 3),
            cpu_time_s=round(sum(i.get("cpu_time_s", 0.0) for i in invocations), 3))
        write_json(self.path / RESULTS, self.record)

    def _record_failure(self, error: BaseException) -> None:
        """A run that began records its end in results.json. One that did not (refused, a
        damaged checkpoint) leaves a folder's existing record as it was (in a sweep it writes
        its error into REFUSED for the report); in a new folder it writes results.json."""
        cause = find_user_error(error) or error
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        message = f"{type(cause).__name__}: {cause}"
        try:
            if self.record is not None:
                self.update(status=status, error=message)
            elif self.previous is not None:
                if self.record_refusal:
                    write_json(self.path / REFUSED, {
                        "status": "refused", "error": message, "overrides": self.overrides,
                        "time": _iso(time.time())})
            else:
                self.record = {"status": status, **self.base, "overrides": self.overrides,
                               "error": message}
                self.write()
        except OSError as e:  # a full or read-only disk: the console still has the error
            log.warning(f"cannot record the error in {self.path} ({e.strerror})")
