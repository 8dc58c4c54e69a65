"""Studies: plans expand as Hydra sweeps do, jobs are named as Hydra names them, a study
restarted after a stop reruns no finished run, and each finished run's record is collected."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from transferlab import records, studies
from transferlab.errors import UserError

PLAN = """
results: results/tiny
runs: runs
predictions: true
settings:
  a: "data=tiny trainer.steps=6 trainer.eval_every=3 device=cpu"
sweeps:
  - "method=source_only,dann seed=0"
extra:
  a:
    - "method=adda method.adapt_optimizer.lr=2e-5 seed=0"
"""


def write_plan(tmp_path: Path, text: str = PLAN) -> Path:
    (tmp_path / "studies").mkdir(exist_ok=True)
    path = tmp_path / "studies" / "tiny.yaml"
    path.write_text(text)
    return path


def test_jobs_are_the_sweeps_product_named_as_hydra_names_them(tmp_path: Path):
    plan = studies.load_plan(write_plan(tmp_path))
    assert [j.name for j in plan.jobs] == [
        "data=tiny,device=cpu,method=source_only,seed=0,trainer.eval_every=3,trainer.steps=6",
        "data=tiny,device=cpu,method=dann,seed=0,trainer.eval_every=3,trainer.steps=6",
        # Hydra writes 2e-5 as 2e-05 in a sweep's job, and so in its folder's name
        "data=tiny,device=cpu,method.adapt_optimizer.lr=2e-05,method=adda,seed=0,"
        "trainer.eval_every=3,trainer.steps=6"]
    assert plan.results == tmp_path / "results" / "tiny"
    assert [j.name for j in studies.selected(plan, ["method=dann"])] == [plan.jobs[1].name]


def test_method_all_is_every_method_of_conf(tmp_path: Path):
    plan = studies.load_plan(write_plan(tmp_path, PLAN.replace("source_only,dann", "ALL")))
    assert {j.value("method") for j in plan.jobs} == set(studies.methods())


def test_method_all_gives_each_method_what_it_needs_of_the_backbone():
    jobs = {dict(o.split("=", 1) for o in job)["method"]: job
            for job in studies.expand(["method=ALL", "data=tiny"])}
    for name in ("tent", "adabn"):
        assert "backbone.batch_norm=true" in jobs[name]
    assert not any(o.startswith("backbone.") for o in jobs["dann"])
    with_bn = studies.expand(["method=ALL", "backbone=dirtt_small"])  # has batch norm
    assert not any("backbone.batch_norm" in o for job in with_bn for o in job)
    assert studies.backbone_overrides(["method=tent", "backbone.batch_norm=false"]) == []
    assert studies.backbone_overrides(["method=dirtt"]) == []  # built on vada's YAML


def test_a_bad_plan_is_one_line(tmp_path: Path):
    with pytest.raises(UserError, match="has no `sweeps`"):
        studies.load_plan(write_plan(tmp_path, "results: r\nsettings: {a: 'data=tiny'}\n"))
    with pytest.raises(UserError, match=r"tiny\.yaml: "):
        studies.load_plan(write_plan(tmp_path, PLAN.replace("dann seed=0", "dann seed")))


def study(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "transferlab.studies", "run",
                           str(tmp_path / "studies" / "tiny.yaml"), "--jobs", "1", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_a_restarted_study_reruns_no_finished_run_and_collects_every_record(tmp_path: Path):
    plan = studies.load_plan(write_plan(tmp_path))
    first = study(tmp_path, "--only", "method=source_only")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "tiny: 0 of 1 runs done, 1 left" in first.stdout
    finished = plan.runs / plan.jobs[0].name / "results.json"
    stamp = finished.stat().st_mtime_ns

    second = study(tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "tiny: 1 of 3 runs done, 2 left; about" in second.stdout  # an estimate from run 1
    assert finished.stat().st_mtime_ns == stamp  # not run again, not even rewritten
    collected = sorted(p.name for p in plan.results.iterdir())
    assert collected == sorted([f"{j.name}.json" for j in plan.jobs]
                               + [f"{j.name}{records.SUFFIX}" for j in plan.jobs])
    for job in plan.jobs:
        record = records.read(plan.results / f"{job.name}.json")
        assert record["status"] == "completed"
        assert record["overrides"][:len(job.overrides)] == list(job.overrides)
        predictions = records.read_predictions(plan.results / f"{job.name}{records.SUFFIX}")
        assert sorted(predictions) == [h["step"] for h in record["history"]]

    third = study(tmp_path)
    assert "tiny: 3 of 3 runs done, 0 left" in third.stdout


def test_a_stopped_study_says_its_runs_stopped_not_failed_and_resumes_them(tmp_path: Path):
    long = PLAN.replace("trainer.steps=6", "trainer.steps=100000").replace("source_only,dann",
                                                                          "source_only")
    plan = studies.load_plan(write_plan(tmp_path, long))
    job = studies.selected(plan, ["method=source_only"])[0]
    process = subprocess.Popen(
        [sys.executable, "-m", "transferlab.studies", "run", str(plan.path), "--jobs", "1",
         "--only", "method=source_only"], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    log = plan.runs / f"{job.name}.out"
    deadline = time.monotonic() + 120
    while "step 1 done" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and process.poll() is None, "the job never started"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, out + err
    assert f"stopped (resumes next time): {job.name}" in out
    assert "FAILED" not in out and "failed" not in err
    assert "rerun the same command to resume" in err
    assert json.loads((plan.runs / job.name / "results.json").read_text())["status"] == \
        "interrupted"
    again = study(tmp_path, "--only", "method=source_only", "--dry-run")
    assert "0 of 1 runs done, 1 left" in again.stdout  # it resumes on the next run


def test_a_record_is_found_under_the_name_collect_gives_it(tmp_path: Path):
    """Overrides such as `evaluation.validators=[]` make a folder name that collect changes
    into a safe file name; the pages and the study report must look under that name."""
    plan = studies.load_plan(write_plan(tmp_path, PLAN.replace(
        "device=cpu", "device=cpu evaluation.validators=[]")))
    job = plan.jobs[0]
    assert "[]" in job.name
    (plan.runs / job.name).mkdir(parents=True)
    record = json.loads(next((ROOT / "tests" / "records").glob("*.json")).read_text())
    (plan.runs / job.name / "results.json").write_text(json.dumps(record))
    records.collect(plan.runs, plan.results)
    assert plan.record(job).exists()
    assert "[]" not in plan.record(job).name


def test_threads_per_run_can_be_set_for_studies_side_by_side(tmp_path: Path):
    write_plan(tmp_path)
    default = study(tmp_path, "--dry-run")  # --jobs 1 on this machine's cores
    assert f"trainer.num_threads={studies.cpu_count()}" in default.stdout
    one = study(tmp_path, "--dry-run", "--threads", "1")
    assert one.stdout.count("trainer.num_threads=1 ") == 3
    bad = study(tmp_path, "--threads", "0")
    assert bad.returncode == 2 and bad.stderr.strip() == \
        "error: --threads=0 is invalid: must be an integer >= 1"


def test_a_job_another_process_is_running_is_skipped_not_failed(tmp_path: Path):
    """Two studies side by side may reach the same job: the second is refused its folder,
    which is neither a failure nor a run of the job."""
    from transferlab.run_folder import RunLock

    plan = studies.load_plan(write_plan(tmp_path))
    job = studies.selected(plan, ["method=source_only"])[0]
    (plan.runs / job.name).mkdir(parents=True)
    lock = RunLock(plan.runs / job.name)
    lock.acquire()
    try:
        result = study(tmp_path, "--only", "method=source_only")
    finally:
        lock.release()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"skipped (running in another process): {job.name}" in result.stdout
    assert "FAILED" not in result.stdout


def test_collecting_twice_adds_nothing_twice_and_a_later_state_replaces_the_old(tmp_path):
    sweep, into = tmp_path / "sweep", tmp_path / "results"
    run = sweep / "a"
    run.mkdir(parents=True)
    record = {"record_version": records.RECORD_VERSION, "status": "failed", "choices": {},
              "seed": 0, "config": {}, "overrides": [], "versions": {}, "history": [],
              "wall_time_s": 1.0}
    (run / "results.json").write_text(json.dumps(record))
    assert records.collect(sweep, into).added == ["a"]
    assert records.collect(sweep, into).unchanged == ["a"]
    completed = {**record, "status": "completed", "metrics": {"target_acc": 0.5}, "steps": 3,
                 "machine": {}, "code_version": "c", "data_fingerprint": "d",
                 "cpu_time_s": 2.0, "evaluators": {}}
    (run / "results.json").write_text(json.dumps(completed))
    assert records.collect(sweep, into).updated == ["a"]
    assert records.read(into / "a.json")["status"] == "completed"


def test_a_record_of_an_unknown_version_is_refused_in_one_line(tmp_path: Path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"record_version": 99, "status": "completed"}))
    with pytest.raises(UserError, match=r"r\.json: record_version 99 is not one this"):
        records.read(path)
    path.write_text(json.dumps({"record_version": records.RECORD_VERSION, "status": "failed"}))
    with pytest.raises(UserError, match="`choices` is missing"):
        records.read(path)
