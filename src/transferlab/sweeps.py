"""Hydra sweeps: threads per parallel job and the end-of-sweep report.

Failure handling in a sweep is split in two. The task function (`cli.hydra_main`) catches a
job's exception, so that no sweeper or launcher aborts the remaining jobs, and `cli.run` has
already recorded it in the job's results.json. `SweepReport`, a Hydra callback, then lists the
failed jobs once the sweep ends and exits non-zero, so scripts and CI notice.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from transferlab.errors import UserError
from transferlab.run_folder import REFUSED, RESULTS, status_of


def cpu_count() -> int:
    """CPUs this process may run on (respects taskset and Slurm's affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_per_job() -> int | None:
    """torch threads for one job, from the launcher running it (`${threads_per_job:}`).

    Parallel jobs on one machine must share its cores: torch alone would start one thread per
    core in every job, and N jobs × all cores threads run slower than N jobs × cores/N.
    - a launcher with `cpus_per_task` (submitit): that many, the job's allocation;
    - a launcher with `n_jobs` (joblib): the cores divided by n_jobs (joblib's -1 = all cores);
    - otherwise (one job at a time, or no Hydra app): None, torch's default.
    """
    if not HydraConfig.initialized():
        return None
    launcher = HydraConfig.get().launcher
    cpus = OmegaConf.select(launcher, "cpus_per_task", default=None)
    if cpus:
        return int(cpus)
    n_jobs = OmegaConf.select(launcher, "n_jobs", default=None)
    if not n_jobs:
        return None
    cores = cpu_count()
    if n_jobs < 0:
        n_jobs = max(cores + 1 + n_jobs, 1)
    return max(cores // n_jobs, 1)


def one_line(error: BaseException | str) -> str:
    """An error as one line; for a wrapped exception (Hydra's instantiate), its root cause."""
    if isinstance(error, BaseException):
        while error.__cause__ is not None:
            error = error.__cause__
        # A UserError's message is written for the user; a bug needs its type.
        error = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
    return " ".join(error.split())


def _overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [str(o) for o in OmegaConf.to_container(OmegaConf.load(path))]


def sweep_jobs(sweep_dir: Path, since: float = 0.0) -> list[dict[str, Any]]:
    """Every job below `sweep_dir` that a run since `since` (a time.time()) wrote into.

    A job is a folder with results.json or Hydra's `.hydra/overrides.yaml`. Its status is its
    results.json's (a finished run reported again leaves it as it was), unless a refused.json
    is newer (a rerun that was refused; the run's record stays as it was); a folder with
    neither means the job died before `run` could record anything (e.g. a config error).
    """
    found = {p.parent for p in sweep_dir.rglob(RESULTS)}
    found |= {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    jobs = []
    for job_dir in sorted(found):
        results, refused = job_dir / RESULTS, job_dir / REFUSED
        markers = [p for p in (results, refused, job_dir / ".hydra" / "overrides.yaml")
                   if p.is_file()]
        if max(p.stat().st_mtime for p in markers) < since:
            continue
        records = [p for p in (results, refused) if p.is_file()]
        source = max(records, key=lambda p: p.stat().st_mtime) if records else None
        try:
            record = json.loads(source.read_text()) if source else {
                "status": "failed", "error": "no results.json: the job stopped before training"}
        except (OSError, json.JSONDecodeError) as e:
            record = {"status": "failed", "error": f"unreadable {source}: {e}"}
        jobs.append({"dir": job_dir, "overrides": _overrides(job_dir),
                     "status": status_of(job_dir, record),
                     "error": one_line(record.get("error", ""))})
    return jobs


def swept(jobs: list[dict[str, Any]]) -> dict[Path, str]:
    """Each job's overrides that are not the same in every job: what tells the jobs apart."""
    common = set.intersection(*(set(j["overrides"]) for j in jobs)) if jobs else set()
    return {j["dir"]: " ".join(o for o in j["overrides"] if o not in common) for j in jobs}


def print_verdicts(sweep_dir: Path, objective: str) -> None:
    """Where the sweep trained source-only runs beside adapted ones: the negative-transfer
    guard's verdict on the objective's choice, one line per data pair."""
    from transferlab.selection import sweep_verdicts

    for line in sweep_verdicts(sweep_dir, objective):
        print(line)


class SweepReport(Callback):
    """After a multirun: list the jobs that failed and exit with `fail_exit_code` if any did.

    Exit 1 by default because a sweep with failed jobs is incomplete: a script running
    `sweep && summarize && plot` should not publish a table silently missing runs. The jobs that
    finished keep their results either way; set `hydra.callbacks.sweep_report.fail_exit_code=0`
    for searches where some trials are expected to fail (diverging learning rates).
    """

    def __init__(self, fail_exit_code: int = 1) -> None:
        self.fail_exit_code = fail_exit_code
        self.start = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # mtime resolution: a second's slack so no job of this sweep is missed.
        self.start = time.time() - 1.0

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sweep_jobs(sweep_dir, self.start)
        failed = [j for j in jobs if j["status"] != "completed"]
        hint = f"summary: python -m transferlab.summarize {sweep_dir}"
        if not failed:
            print(f"sweep finished: {len(jobs)} jobs completed in {sweep_dir}\n{hint}")
            print_verdicts(sweep_dir, str(config.objective))
            return
        lines = [f"sweep finished: {len(failed)} of {len(jobs)} jobs failed in {sweep_dir}:"]
        labels = swept(jobs)
        for job in failed:
            name = job["dir"].relative_to(sweep_dir)
            lines.append(f"  {name} ({labels[job['dir']]}) {job['status']}: {job['error']}")
        print("\n".join([*lines, hint]), file=sys.stderr)
        if self.fail_exit_code:
            sys.exit(self.fail_exit_code)
