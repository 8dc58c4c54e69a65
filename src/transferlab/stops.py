"""Graceful stops: a signal asks the run to stop, the loop finishes its step and stops.

Ctrl-C (SIGINT), SIGTERM (`kill`, `docker stop`, Slurm's scancel, time limit and preemption)
and SIGUSR1 are caught for the whole run: the current step finishes, a checkpoint is saved,
results.json records `status: interrupted`, and the process exits with 128 + the signal's
number (130, 143, 138), the shell's convention for "ended by this signal". A second signal
while the first is being handled stops at once.

Inside a submitit job (the `slurm` and `slurm_local` launchers), submitit's own time-limit and
preemption signal (SIGUSR2, or `$SUBMITIT_PREEMPT_SIGNAL`) is caught the same way; once the
checkpoint is saved, submitit's handler takes over and requeues the job, which then resumes
from that checkpoint (see `hand_over`).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class Interrupted(KeyboardInterrupt):
    """The run stopped on a signal, after saving what it could."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum


class StopRequest:
    """The first stop signal received, if any; the loop checks it between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "nothing"


def submitit_signal() -> int | None:
    """The signal submitit sends before a time limit or a preemption, when this process is a
    submitit job; submitit reads the same variable (submitit.JobEnvironment.USR_SIG)."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


@contextmanager
def graceful_stops() -> Iterator[StopRequest]:
    """Catch the stop signals while the block runs; the previous handlers come back after."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # only the main thread may handle signals; a worker thread cannot
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if request:  # a second signal: the user (or the scheduler) wants out now
            raise Interrupted(f"stopped at once by a second {signal.Signals(signum).name}",
                              signum)
        request.signum = signum

    requeue = submitit_signal()
    wanted = dict.fromkeys([*STOP_SIGNALS, requeue] if requeue else STOP_SIGNALS)
    previous = {s: signal.signal(s, handler) for s in wanted}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def requeues(signum: int) -> bool:
    """Whether submitit requeues a job stopped by this signal."""
    return signum == submitit_signal()


def hand_over(signum: int) -> None:
    """Call submitit's own handler for its signal (restored when `graceful_stops` ended): it
    calls the launcher's `checkpoint` method (hydra-submitit-launcher resubmits the same job,
    which resumes from our checkpoint), requeues the job and exits; it raises when it will
    not requeue (the job timed out more than `max_num_timeout` times)."""
    handler = signal.getsignal(signum)
    if callable(handler):
        handler(signum, None)


def exit_code(signum: int) -> int:
    return 128 + signum
