"""Sweeps end to end: `python -m transferlab -m ...` with the real Hydra launcher and sweeper
plugins, failure reporting, the summary, and the HParams written by each run."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import TINY_FAST, run_cli
from helpers import run_in_process
from transferlab import summarize, sweeps
from transferlab.files import write_json

SWEEP = (*TINY_FAST, "trainer.steps=4")
METRICS = ("source_acc", "target_acc", "source_val_acc")


def records(sweep_dir: Path) -> dict[str, dict]:
    """Job folder name → its results.json."""
    return {p.parent.name: json.loads(p.read_text())
            for p in sorted(sweep_dir.glob("*/results.json"))}


@pytest.fixture(scope="module")
def method_seed_sweep(tmp_path_factory: pytest.TempPathFactory
                      ) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("sweep")
    out = root / "multirun"
    result = run_cli("-m", "method=source_only,dann", "seed=0,1", *SWEEP,
                     f"hydra.sweep.dir={out}", cwd=root)
    return out, result


def test_multirun_gives_each_job_its_results_and_tensorboard(method_seed_sweep):
    out, result = method_seed_sweep
    jobs = records(out)
    assert len(jobs) == 4
    assert {(r["choices"]["method"], r["seed"]) for r in jobs.values()} == {
        (m, s) for m in ("source_only", "dann") for s in (0, 1)}
    for name, record in jobs.items():
        assert record["status"] == "completed" and record["steps"] == 4
        assert list((out / name / "tb").glob("events.out.tfevents.*"))
    assert "4 jobs completed" in result.stdout


def test_summary_has_one_row_per_method_with_mean_and_sample_std(method_seed_sweep, capsys):
    out, _ = method_seed_sweep
    assert summarize.main([str(out)]) == 0
    printed = capsys.readouterr().out

    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert sorted(r["method"] for r in rows) == ["dann", "source_only"]
    jobs = records(out).values()
    for row in rows:
        runs = [r for r in jobs if r["choices"]["method"] == row["method"]]
        assert (row["n"], row["n_failed"], row["seeds"]) == ("2", "0", "0 1")
        for metric in METRICS:
            values = [r["metrics"][metric] for r in runs]
            assert float(row[f"{metric}_mean"]) == pytest.approx(statistics.mean(values))
            # sample std (ddof=1), as documented
            assert float(row[f"{metric}_std"]) == pytest.approx(statistics.stdev(values))
        target = [r["metrics"]["target_acc"] for r in runs]
        shown = f"{statistics.mean(target):.4f} ± {statistics.stdev(target):.4f}"
        assert shown in printed and shown in (out / "summary.md").read_text()
    assert (out / "summary.png").stat().st_size > 0


def test_joblib_launcher_splits_the_cores_between_parallel_jobs(tmp_path: Path):
    out = tmp_path / "multirun"
    result = run_cli("-m", "hydra/launcher=parallel", "seed=0,1", *SWEEP,
                     f"hydra.sweep.dir={out}", cwd=tmp_path)
    assert "Joblib.Parallel(n_jobs=2" in result.stdout  # the plugin ran the jobs
    jobs = records(out)
    assert sorted(r["seed"] for r in jobs.values()) == [0, 1]
    for record in jobs.values():
        assert record["status"] == "completed"
        assert record["config"]["trainer"]["num_threads"] == max(sweeps.cpu_count() // 2, 1)


def test_submitit_local_launcher_completes_a_two_job_sweep(tmp_path: Path):
    out = tmp_path / "multirun"
    run_cli("-m", "hydra/launcher=slurm_local", "seed=0,1", *SWEEP,
            f"hydra.sweep.dir={out}", cwd=tmp_path)
    assert (out / ".submitit").is_dir()  # the plugin ran the jobs
    jobs = records(out)
    assert sorted(r["seed"] for r in jobs.values()) == [0, 1]
    for record in jobs.values():
        assert record["status"] == "completed"
        assert record["config"]["trainer"]["num_threads"] == 1  # cpus_per_task


def test_failed_jobs_are_recorded_reported_and_do_not_stop_the_others(tmp_path: Path, capsys):
    """A bug (an unknown tiny style raises ValueError) and a user error (a validation split
    larger than the data): the fourth job still trains, the sweep exits 1 naming the three."""
    out = tmp_path / "multirun"
    result = run_cli("-m", "data.source.style=grey,bogus", "data.source_val_size=100,100000",
                     *SWEEP, f"hydra.sweep.dir={out}", cwd=tmp_path, check=False)
    assert result.returncode == 1, result.stderr
    jobs = records(out)
    status = {(r["config"]["data"]["source"]["style"], r["config"]["data"]["source_val_size"]):
              r["status"] for r in jobs.values()}
    assert status == {("grey", 100): "completed", ("grey", 100000): "failed",
                      ("bogus", 100): "failed", ("bogus", 100000): "failed"}
    assert "3 of 4 jobs failed" in result.stderr
    assert "data.source.style=bogus data.source_val_size=100)" in result.stderr
    assert "ValueError: unknown tiny style 'bogus'" in result.stderr
    bug_log = (out / next(n for n, r in jobs.items() if r["config"]["data"]["source"]["style"]
                          == "bogus") / "transferlab.log").read_text()
    assert "Traceback" in bug_log and "unknown tiny style 'bogus'" in bug_log  # in the job's log

    summarize.main([str(out), "--no-plot"])
    printed = capsys.readouterr().out
    assert "3 runs did not complete" in printed
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert sum(int(r["n_failed"]) for r in rows) == 3
    assert sum(int(r["n"]) for r in rows) == 1
    failed_section = (out / "summary.md").read_text().split("## Failed runs")[1]
    assert failed_section.count("\n- ") == 3 and "must be in [0, 600)" in failed_section


def test_a_failed_single_run_still_raises(tmp_path: Path):
    """Outside a sweep a bug keeps its traceback and exit 1; user errors stay exit 2."""
    result = run_cli("data.source.style=bogus", *SWEEP, f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert "unknown tiny style" in result.stderr
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "failed"


def test_optuna_sweeper_maximises_the_objective(tmp_path: Path):
    out = tmp_path / "multirun"
    # A grid over a learning rate of 0 (no training) and a useful one: two different scores.
    run_cli("-m", "hydra/sweeper=optuna_max", "hydra/sweeper/sampler=grid",
            "trainer.optimizer.lr=choice(0.0,0.05)", *TINY_FAST, "trainer.steps=8",
            f"hydra.sweep.dir={out}", cwd=tmp_path)
    scores = [r["metrics"][r["config"]["objective"]] for r in records(out).values()]
    assert len(set(scores)) == 2  # else minimising would pass too
    best = OmegaConf.load(out / "optimization_results.yaml")
    assert best.best_value == pytest.approx(max(scores))  # the default objective, maximised


def test_optuna_preset_minimises_a_lower_is_better_objective(tmp_path: Path):
    out = tmp_path / "multirun"
    run_cli("-m", "hydra/sweeper=optuna_max", "hydra/sweeper/sampler=grid", "objective=entropy",
            "trainer.optimizer.lr=choice(0.0,0.05)", *TINY_FAST, "trainer.steps=8",
            "evaluation.validators=[source_val_acc,entropy]", f"hydra.sweep.dir={out}",
            cwd=tmp_path)
    scores = [r["metrics"]["entropy"] for r in records(out).values()]
    assert len(set(scores)) == 2  # else maximising would pass too
    best = OmegaConf.load(out / "optimization_results.yaml")
    assert best.best_value == pytest.approx(min(scores))


def test_each_run_writes_hparams_into_its_own_tensorboard_folder(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    record = run_in_process(tmp_path / "run", "method=dann", "trainer.steps=2",
                            "method.lambda_gamma=7.5")
    tb = tmp_path / "run" / "tb"
    assert not [p for p in tb.iterdir() if p.is_dir()]  # no timestamped sub-run
    acc = EventAccumulator(str(tb))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["method"].string_value == "dann"
    assert hparams["method.lambda_gamma"].number_value == 7.5
    assert hparams["trainer.optimizer.lr"].number_value == pytest.approx(0.01)
    for metric in METRICS:
        [event] = acc.Scalars(f"hparams/{metric}")
        assert event.value == pytest.approx(record["metrics"][metric])


def test_a_refused_rerun_is_reported_while_the_job_keeps_its_record(tmp_path: Path):
    job = tmp_path / "0"
    job.mkdir()
    write_json(job / "results.json", {"status": "completed"})
    os.utime(job / "results.json", (1, 1))  # written by an earlier sweep
    write_json(job / ".hydra" / "refused.json", {"status": "refused",
                                                 "error": "UserError: changed"})
    [found] = sweeps.sweep_jobs(tmp_path, since=time.time() - 60)
    assert (found["status"], found["error"]) == ("refused", "UserError: changed")
