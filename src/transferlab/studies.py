"""Studies that finish across days: a plan of runs, resumed where it stopped, collected into
committed records as each run ends.

    python -m transferlab.studies run studies/reproduce.yaml [--only experiment=mnist_usps]
        [--only method=dann] [--jobs 2] [--dry-run]
    python -m transferlab.studies status studies/selection.yaml

A plan (YAML) names its `results` folder (committed records, `transferlab.records`), the
`settings` (each a line of overrides fixing a pair and its protocol) and the `sweeps` run in
every setting (each a line in Hydra's sweep syntax, `method=dann,adda seed=0,1,2`;
`method=ALL` is every method of conf/method/), plus `extra` sweeps of one setting. Each job runs as
`python -m transferlab <overrides> hydra.run.dir=<runs>/<name>`, its folder named as Hydra
names a job by its overrides (`hydra.job.override_dirname`), so plans that share a job share
its folder and its run. A finished job is never rerun, an interrupted one resumes from its
checkpoint, and each finished job's record is collected into the plan's `results` folder at
once, so that stopping the study (Ctrl-C, the end of a session) loses at most the runs in
progress, which resume.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from transferlab.config import CONFIG_DIR, compose
from transferlab.errors import UserError, user_errors_exit
from transferlab.records import collect, record_name
from transferlab.run_folder import RESULTS, holder
from transferlab.sweeps import cpu_count

ALL = "ALL"  # method=ALL: every conf/method/*.yaml
# Overrides that say how a job runs, not what it trains: not part of its name (as in
# conf/config.yaml's hydra.job.config.override_dirname.exclude_keys).
OPERATIONAL = ("trainer.num_threads", "trainer.progress_bar", "trainer.log_every",
               "trainer.checkpoint_every", "data.root", "data.cache_dir")


@dataclass(frozen=True)
class Job:
    setting: str
    overrides: tuple[str, ...]
    name: str

    def value(self, key: str) -> str | None:
        return next((o.split("=", 1)[1] for o in self.overrides
                     if o.lstrip("+~").split("=", 1)[0] == key), None)


@dataclass(frozen=True)
class Plan:
    path: Path
    results: Path
    runs: Path
    predictions: bool
    jobs: list[Job]
    settings: dict[str, list[str]]  # each setting's own overrides
    spec: dict[str, Any]            # the plan as written (e.g. its `published` numbers)

    def record(self, job: Job) -> Path:
        """Where `collect` keeps the job's record (its name made safe for a file name)."""
        return self.results / f"{record_name(self.runs / job.name, self.runs)}.json"


def methods() -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / "method").glob("*.yaml"))


def expand(overrides: Sequence[str]) -> list[list[str]]:
    """The jobs of one sweep, each its list of overrides, as Hydra's basic sweeper makes them
    (its value formatting included: `2e-5` → `2e-05`). With `method=ALL`, each method also
    gets what it needs of the backbone (`Method.backbone_overrides`)."""
    every = f"method={ALL}" in overrides
    lines = [f"method={','.join(methods())}" if o == f"method={ALL}" else o for o in overrides]
    parsed = OverridesParser.create().parse_overrides(lines)
    jobs = BasicSweeper.split_arguments(parsed, None)[0]
    return [[*job, *backbone_overrides(job)] for job in jobs] if every else jobs


def backbone_overrides(job: Sequence[str]) -> list[str]:
    """What the job's method needs of the backbone, where the job's backbone has that key and
    the job does not set it (`backbone.batch_norm=true` for dann_mnist and lenet; the ResNets
    have batch norm already)."""
    method = next((o.split("=", 1)[1] for o in job if o.startswith("method=")), None)
    if method is None:
        return []
    from hydra.utils import get_class

    needed = getattr(get_class(_method_target(method)), "backbone_overrides", ())
    given = {o.split("=", 1)[0] for o in job}
    needed = [o for o in needed if o.split("=", 1)[0] not in given]
    if not needed:
        return []
    backbone = compose(list(job)).backbone
    return [o for o in needed if o.split("=", 1)[0].removeprefix("backbone.") in backbone]


def _method_target(choice: str) -> str:
    """A method YAML's `_target_`, looked up in the YAMLs it builds on (dirtt on vada)."""
    config = yaml.safe_load((Path(CONFIG_DIR) / "method" / f"{choice}.yaml").read_text())
    parents = [d for d in config.get("defaults", []) if d != "_self_"]
    return config.get("_target_") or _method_target(parents[0])


def job_name(overrides: Sequence[str]) -> str:
    """Hydra's `override_dirname` of a job: its override lines but the operational ones,
    sorted, joined by commas; a group's slash (`+method/regularizers=[mcc]`) becomes `_`, so
    that the name is one folder."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    lines = sorted(o.input_line for o in parsed if o.key_or_group not in OPERATIONAL)
    return ",".join(lines).replace("/", "_")


def load_plan(path: Path, runs: Path | None = None) -> Plan:
    try:
        spec: dict[str, Any] = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot read the plan {path} ({e})") from None
    for key in ("results", "settings", "sweeps"):
        if key not in spec:
            raise UserError(f"{path} has no `{key}`; a plan needs results, settings, sweeps")
    jobs: list[Job] = []
    settings: dict[str, list[str]] = {}
    try:
        for setting, fixed in spec["settings"].items():
            settings[setting] = expand(shlex.split(fixed))[0]
            for sweep in [*spec["sweeps"], *(spec.get("extra") or {}).get(setting, [])]:
                for overrides in expand([*shlex.split(fixed), *shlex.split(sweep)]):
                    jobs.append(Job(setting, tuple(overrides), job_name(overrides)))
    except (HydraException, ValueError, AttributeError) as e:
        raise UserError(f"{path}: {' '.join(str(e).split())}") from None
    unique = list({job.name: job for job in jobs}.values())
    root = path.resolve().parent.parent  # plans live in <repo>/studies/
    return Plan(path, root / spec["results"], runs or root / spec.get("runs", "multirun/studies"),
                bool(spec.get("predictions", False)), unique, settings, spec)


def selected(plan: Plan, only: Sequence[str]) -> list[Job]:
    """The plan's jobs whose overrides include every `key=value` of `only`."""
    wanted = [o.split("=", 1) for o in only]
    return [j for j in plan.jobs if all(j.value(k) == v for k, v in wanted)]


def record_of(plan: Plan, job: Job) -> dict[str, Any] | None:
    try:
        return json.loads((plan.runs / job.name / RESULTS).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def done(plan: Plan, job: Job) -> bool:
    record = record_of(plan, job)
    return record is not None and record.get("status") == "completed"


def estimate(plan: Plan, jobs: Sequence[Job]) -> dict[str, float | None]:
    """Seconds of one core each unfinished job is expected to take: the mean CPU time of the
    finished jobs of its setting and method, else of its method, else of all; None if no job
    has finished yet."""
    times: dict[tuple[str, str], list[float]] = {}
    for job in plan.jobs:
        record = record_of(plan, job)
        if record and record.get("status") == "completed" and record.get("cpu_time_s"):
            times.setdefault((job.setting, job.value("method") or ""), []).append(
                record["cpu_time_s"])

    def mean(values: list[float]) -> float | None:
        return statistics.fmean(values) if values else None

    by_method: dict[str, list[float]] = {}
    for (_, method), values in times.items():
        by_method.setdefault(method, []).extend(values)
    everything = [v for values in times.values() for v in values]
    return {j.name: (mean(times.get((j.setting, j.value("method") or ""), []))
                     or mean(by_method.get(j.value("method") or "", []))
                     or mean(everything)) for j in jobs}


def progress(plan: Plan, jobs: Sequence[Job], parallel: int) -> str:
    left = [j for j in jobs if not done(plan, j)]
    guess = estimate(plan, left)
    known = [v for v in guess.values() if v is not None]
    hours = sum(known) / max(parallel, 1) / 3600
    eta = (f"about {hours:.1f} h left at {parallel} job(s) at a time"
           + (f" ({len(left) - len(known)} without an estimate yet)"
              if len(known) < len(left) else "")) if known else "no estimate before a job ends"
    return (f"{plan.path.stem}: {len(jobs) - len(left)} of {len(jobs)} runs done, "
            f"{len(left)} left; {eta}")


def command(plan: Plan, job: Job, threads: int) -> list[str]:
    # Quoted: a job's folder name holds `=` and `,`, which Hydra's override grammar reads.
    return [sys.executable, "-m", "transferlab", *job.overrides,
            f'hydra.run.dir="{plan.runs / job.name}"', f"trainer.num_threads={threads}",
            "trainer.progress_bar=false"]


def run(plan: Plan, jobs: Sequence[Job], parallel: int, dry_run: bool = False,
        threads: int | None = None) -> int:
    """Run the unfinished `jobs`, `parallel` at a time, collecting each record as it ends;
    returns the number of jobs that failed. Each job gets `threads` torch threads (default:
    the cores shared between the `parallel` jobs). A stop signal (SIGINT, SIGTERM) starts no
    new job, is passed on to the running ones, and ends in `Stopped` once they have
    checkpointed."""
    left = [j for j in jobs if not done(plan, j)]
    print(progress(plan, jobs, parallel), flush=True)
    threads = threads or max(1, cpu_count() // max(parallel, 1))
    if not dry_run:  # runs that finished before (another plan's, an earlier session's)
        plan.runs.mkdir(parents=True, exist_ok=True)
        collect(plan.runs, plan.results, plan.predictions,
                only=[j.name for j in jobs if (plan.runs / j.name).is_dir()])
    if dry_run:
        for job in left:
            print(" ".join(command(plan, job, threads)))
        return 0
    running: dict[subprocess.Popen, Job] = {}
    failed, received = 0, []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def forward(signum: int, frame: Any) -> None:
        """Start no new job; each running one checkpoints and stops (and resumes next time)."""
        left.clear()
        received.append(signum)
        for process in running:
            process.send_signal(signum)

    for s in previous:
        signal.signal(s, forward)
    try:
        while left or running:
            while left and len(running) < parallel:
                job = left.pop(0)
                log = plan.runs / f"{job.name}.out"
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "w") as out:
                    running[subprocess.Popen(command(plan, job, threads), stdout=out,
                                             stderr=subprocess.STDOUT)] = job
            finished = _wait_any(running)
            job = running.pop(finished)
            outcome = ended(plan, job, finished.returncode)
            failed += outcome == "FAILED"
            collect(plan.runs, plan.results, plan.predictions, only=[job.name])
            print(f"{outcome}: {job.name}; " + progress(plan, jobs, parallel), flush=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise Stopped(received[0])
    return failed


class Stopped(Exception):
    """The study was stopped by a signal; its interrupted runs resume on the next `run`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def ended(plan: Plan, job: Job, returncode: int) -> str:
    """How a job's process ended: done, skipped (its folder is another process's, e.g. a second
    study's running the same job), stopped by a signal at a checkpoint (its run says
    `interrupted`; the next `run` resumes it), or FAILED."""
    if returncode == 0:
        return "done"
    if holder(plan.runs / job.name) is not None:
        return "skipped (running in another process)"
    interrupted = (record_of(plan, job) or {}).get("status") == "interrupted"
    return "stopped (resumes next time)" if interrupted else "FAILED"


def _wait_any(running: dict[subprocess.Popen, Job]) -> subprocess.Popen:
    while True:
        for process in running:
            if process.poll() is not None:
                return process
        time.sleep(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transferlab.studies",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("run", "status"))
    parser.add_argument("plan", type=Path, help="a plan, e.g. studies/reproduce.yaml")
    parser.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                        help="only the jobs with this override (repeatable), e.g. "
                             "--only experiment=mnist_usps --only method=dann")
    parser.add_argument("--jobs", type=int, default=min(2, cpu_count()),
                        help="runs at a time (each gets cores / jobs torch threads)")
    parser.add_argument("--threads", type=int, help="torch threads per run (default: cores / "
                        "jobs; with two studies side by side, cores / all their jobs)")
    parser.add_argument("--runs", type=Path, help="where the run folders go (default: the "
                        "plan's `runs`, multirun/studies)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    with user_errors_exit():
        for flag, value in (("--jobs", args.jobs), ("--threads", args.threads)):
            if value is not None and value < 1:
                raise UserError(f"{flag}={value} is invalid: must be an integer >= 1")
        plan = load_plan(args.plan, args.runs)
        jobs = selected(plan, args.only)
        if not jobs:
            raise UserError(f"no job of {args.plan} has {' and '.join(args.only)}")
        if args.action == "status":
            print(progress(plan, jobs, args.jobs))
            return 0
        try:
            failed = run(plan, jobs, args.jobs, args.dry_run, args.threads)
        except Stopped as stop:
            print(f"stopped by {stop}: rerun the same command to resume", file=sys.stderr)
            return 128 + stop.signum
    if failed:
        print(f"{failed} runs failed; their logs: {plan.runs}/<name>.out", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
