"""A Hydra callback for tests: in the job's own process, send the job a signal right after the
update of one step, once (a marker file remembers it across requeues). Lets a test stop a job
that a launcher started (submitit's local executor) at a known step, through the real code
path: `+hydra.callbacks.stop._target_=signal_at_step.SignalAtStep ...`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback


class SignalAtStep(Callback):
    def __init__(self, step: int, signal: int, marker: str) -> None:
        self.step, self.signal, self.marker = step, signal, Path(marker)

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        import transferlab.train as train

        update = train.FiniteCheck.update

        def update_then_signal(check: Any, scalars: Any, step: int) -> None:
            update(check, scalars, step)
            if step == self.step and not self.marker.exists():
                self.marker.touch()
                os.kill(os.getpid(), self.signal)

        train.FiniteCheck.update = update_then_signal
