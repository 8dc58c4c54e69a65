"""The Hydra command: `python -m transferlab <overrides>`. Hydra glue and the exit policy only;
what a job does is `transferlab.experiment.run`."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from transferlab import stops, sweeps
from transferlab.config import CONFIG_DIR, check_choices, check_values, register_resolvers
from transferlab.errors import UserError, find_user_error
from transferlab.files import check_writable
from transferlab.overrides import check_keys
from transferlab.run_folder import check_free, output_folder
from transferlab.version import __version__

DEBUG_ENV = "TRANSFERLAB_DEBUG"
# Hydra's flags that show something and run nothing: no run folder is written.
SHOW_ONLY = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i",
             "--shell-completion", "-sc"}
log = logging.getLogger(__name__)
register_resolvers()


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    """One job. Returns the `objective` metric, which sweepers such as Optuna optimise."""
    hc = HydraConfig.get()
    choices = {g: hc.runtime.choices[g] for g in ("data", "backbone", "method")}
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        check_values(cfg)  # before torch is imported: a bad value is refused at once
        from transferlab.experiment import run

        return float(run(cfg, Path(hc.runtime.output_dir), choices, hc.overrides.task,
                         in_sweep=multirun)[cfg.objective])
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        if stops.requeues(signum):
            log.warning(f"{e}; submitit requeues the job")
            try:
                stops.hand_over(signum)  # exits here when the job is requeued
            except Exception as refusal:  # submitit's UncompletedJobError
                log.error(f"error: not requeued: {refusal}")
        # A sweep resumes as a whole: every job continues from its own checkpoint.
        again = (f"hydra.sweep.dir={hc.sweep.dir}" if multirun
                 else f"hydra.run.dir={hc.runtime.output_dir}")
        log.warning(f"\n{e or 'interrupted'}. To resume, rerun the same command with {again}")
        if multirun and stops.submitit_signal():
            return None  # one job of a submitit array: the others go on
        sys.exit(stops.exit_code(signum))
    except Exception as e:
        error = find_user_error(e)
        if os.environ.get(DEBUG_ENV) or (error is None and not multirun):
            raise
        if multirun:
            # run() recorded the failure in results.json. Re-raising would make Hydra's
            # sweepers stop after this batch (Optuna: after this trial); returning None lets
            # the other jobs run, Optuna marks the trial failed, and sweeps.SweepReport lists
            # the job at the end. Bugs keep their traceback, in the job's log.
            if error is None:
                log.exception("job failed")
            log.error(f"error: {hc.runtime.output_dir}: {sweeps.one_line(error or e)}")
            return None
        log.error(f"error: {error}")
        sys.exit(2)


def main() -> None:
    """Console script. `--debug` (or TRANSFERLAB_DEBUG=1) shows full tracebacks."""
    if "--version" in sys.argv:  # Hydra's own --version names Hydra's
        from importlib.metadata import version

        print(f"transferlab {__version__} (hydra-core {hydra.__version__}, "
              f"torch {version('torch')})")
        return
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
        os.environ[DEBUG_ENV] = "1"
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        check_choices(sys.argv[1:], CONFIG_DIR)
        check_keys(sys.argv[1:], CONFIG_DIR)
        if not any(a.split("=")[0] in SHOW_ONLY for a in sys.argv[1:]):
            folder = output_folder(sys.argv[1:])
            check_writable(folder, "the run folder", "choose a writable one with "
                           "hydra.run.dir=... (with -m: hydra.sweep.dir=...)")
            check_free(folder)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        try:
            hydra_main()
        finally:
            sys.stdout.flush()  # here, where a closed pipe can still be caught
    except BrokenPipeError:
        # `transferlab --help | head`: the reader has gone; end quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
