"""Resume, atomic writes, graceful stops (Ctrl-C, SIGTERM, SIGUSR1, submitit's requeue), one
owner per run folder, records that survive kills and refused reruns, damaged files, NaN stops,
safe loading, bad input, and reproducibility."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY_FAST, run_cli
from helpers import choices_of, run_in_process
from transferlab import summarize
from transferlab.checkpoint import Checkpointer, load_safely, save_atomic
from transferlab.config import CONFIG_DIR
from transferlab.data.mnistm import extract_photos
from transferlab.errors import DataError, UserError
from transferlab.files import write_json
from transferlab.memory import step_memory
from transferlab.overrides import check_keys
from transferlab.run_folder import FolderInUse, RunFolder, status_of
from transferlab.stops import Interrupted, graceful_stops

RUN = (*TINY_FAST, "trainer.steps=30", "trainer.eval_every=10", "trainer.checkpoint_every=10",
       "method=dann", "trainer.num_threads=1")

# Runs the real CLI in a child process that sends itself a signal (KILL_SIGNAL, SIGKILL by
# default) at a chosen point: after the update of step KILL_STEP (before that step's
# checkpoint), or halfway through writing the checkpoint of step KILL_SAVE.
KILLER = """
import os, signal, sys
import torch
import transferlab.checkpoint as ckpt
import transferlab.train as train

kill_step = int(os.environ.get("KILL_STEP", 0))
kill_save = int(os.environ.get("KILL_SAVE", 0))
kill_signal = int(os.environ.get("KILL_SIGNAL", signal.SIGKILL))
update = train.FiniteCheck.update

def update_then_die(self, scalars, step):
    update(self, scalars, step)
    if step == kill_step:
        os.kill(os.getpid(), kill_signal)

real_save = torch.save

def save_then_die(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("step") == kill_save:
        f.write(b"half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(obj, f, *args, **kwargs)

train.FiniteCheck.update = update_then_die
ckpt.torch.save = save_then_die
sys.argv = ["transferlab", *sys.argv[1:]]
from transferlab.cli import main
main()
"""


def _child(tmp_path: Path, run_dir: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **env}
    return subprocess.run([sys.executable, "-c", KILLER, *RUN, f"hydra.run.dir={run_dir}"],
                          cwd=tmp_path, env=full_env, capture_output=True, text=True,
                          timeout=300)


def _without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "time_s"} for h in history]


def _metrics(run_dir: Path) -> tuple[dict, list]:
    record = json.loads((run_dir / "results.json").read_text())
    return record["metrics"], _without_times(record["history"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("full")
    run_cli(*RUN, f"hydra.run.dir={tmp / 'run'}", cwd=tmp)
    return tmp / "run"


@pytest.mark.parametrize("kill", [{"KILL_STEP": "25"}, {"KILL_SAVE": "20"}],
                         ids=["mid-run", "mid-checkpoint-write"])
def test_killed_run_resumes_to_identical_results(tmp_path: Path, uninterrupted: Path, kill):
    run_dir = tmp_path / "run"
    killed = _child(tmp_path, run_dir, **kill)
    assert killed.returncode == -signal.SIGKILL
    state = load_safely(run_dir / "checkpoints" / "last.pt")  # never torn
    assert state["step"] in (10, 20)
    resumed = run_cli(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert f"at step {state['step']}" in resumed.stdout
    assert _metrics(run_dir) == _metrics(uninterrupted)


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                         (signal.SIGUSR1, 138)], ids=["INT", "TERM", "USR1"])
def test_a_stop_signal_saves_a_checkpoint_and_says_how_to_resume(tmp_path: Path, signum, code):
    """Ctrl-C, `kill` (what Slurm and `docker stop` send) and SIGUSR1, sent from outside."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    args = [*TINY_FAST, "trainer.steps=100000", "trainer.eval_every=100000",
            "trainer.checkpoint_every=100000", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "transferlab", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / "tb").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # let it take some steps
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert f"hydra.run.dir={run_dir}" in stderr
    step = load_safely(run_dir / "checkpoints" / "last.pt")["step"]
    assert 0 < step < 100000
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "interrupted"
    assert f"stopped by {signal.Signals(signum).name} at step {step}" in record["error"]


def test_nan_loss_stops_with_step_name_and_keeps_last_good_checkpoint(tmp_path: Path):
    result = run_cli(*TINY_FAST, "trainer.steps=50", "trainer.checkpoint_every=1",
                     "trainer.optimizer.lr=1e6", f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=tmp_path, check=False)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "loss/classification became NaN or infinite at step" in line
    bad_step = int(line.split("at step ")[1].split(";")[0])
    state = load_safely(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == bad_step - 1
    assert all(torch.isfinite(t).all() for t in state["method"].values() if t.is_floating_point())


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_loading_refuses_pickled_code(tmp_path: Path):
    path = tmp_path / "evil.pt"
    torch.save({"step": 1, "payload": Evil()}, path)
    with pytest.raises(UserError, match="refusing to load"):
        load_safely(path)


def test_save_atomic_and_write_json_leave_old_file_on_failure(tmp_path: Path, monkeypatch):
    ckpt, results = tmp_path / "last.pt", tmp_path / "results.json"
    save_atomic({"step": 1}, ckpt)
    write_json(results, {"status": "completed"})

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    monkeypatch.setattr(json, "dumps", broken)
    with pytest.raises(OSError):
        save_atomic({"step": 2}, ckpt)
    with pytest.raises(OSError):
        write_json(results, {"status": "other"})
    monkeypatch.undo()
    assert load_safely(ckpt) == {"step": 1}
    assert json.loads(results.read_text()) == {"status": "completed"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "results.json"]  # no .tmp


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_archive_extraction_refuses_paths_escaping_the_root(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    prefix = "BSR/BSDS500/data/images/train/"
    archive = _tar(tmp_path / "evil.tgz", {prefix + "ok.jpg": b"x",
                                            prefix + "../../../../../../escaped.txt": b"x"})
    with pytest.raises(DataError, match="refusing to extract"):
        extract_photos(archive, root)
    assert not (tmp_path / "escaped.txt").exists()


def test_archive_extraction_takes_only_the_train_photos(tmp_path: Path):
    prefix = "BSR/BSDS500/data/images/"
    archive = _tar(tmp_path / "ok.tgz", {prefix + "train/1.jpg": b"a", prefix + "test/2.jpg": b"b"})
    extract_photos(archive, tmp_path)
    assert (tmp_path / prefix / "train" / "1.jpg").read_bytes() == b"a"
    assert not (tmp_path / prefix / "test").exists()


def test_same_seed_same_metrics_different_seed_different_run(tmp_path: Path):
    args = ("method=dann", "trainer.steps=20", "trainer.eval_every=10")
    a = run_in_process(tmp_path / "a", *args, "seed=3")
    b = run_in_process(tmp_path / "b", *args, "seed=3")
    c = run_in_process(tmp_path / "c", *args, "seed=4")
    assert a["metrics"] == b["metrics"]
    assert _without_times(a["history"]) == _without_times(b["history"])
    assert _without_times(a["history"]) != _without_times(c["history"])
    assert a["seed"] == 3 and set(a["versions"]) >= {"torch", "torchvision", "transferlab"}


@pytest.mark.parametrize("override,message", [
    ("method=danm", "method=danm is not a valid choice; valid: "
                    + ", ".join(choices_of("method"))),
    ("trainer.steps=-5", "trainer.steps=-5 is invalid: must be an integer >= 0"),
    ("trainer.batch_size=abc", "trainer.batch_size='abc' is invalid: must be an integer >= 1"),
    ("method=finetune method.shots=0", "method.shots=0 is invalid: must be an integer >= 1"),
    ("data.download=maybe", "data.download='maybe' is invalid: must be true or false"),
    ("evaluation.evaluators.iwv.folds=1",
     "evaluation.evaluators.iwv.folds=1 is invalid: must be an integer >= 2"),
])
def test_bad_input_is_one_line_naming_key_and_allowed_values(tmp_path: Path, override, message):
    result = run_cli(*TINY_FAST, *override.split(), f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {message}"


def test_debug_flag_shows_the_traceback(tmp_path: Path):
    result = run_cli("--debug", *TINY_FAST, "trainer.steps=-5",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
    assert result.returncode != 0 and "Traceback" in result.stderr


def _idx_root(tmp_path: Path) -> Path:
    from conftest import make_mnist

    make_mnist(tmp_path / "data")
    return tmp_path / "data" / "MNIST" / "raw"


def test_truncated_idx_file_is_named(tmp_path: Path):
    raw = _idx_root(tmp_path)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    from transferlab.data import DataContext
    from transferlab.data.mnist import load_mnist

    with pytest.raises(DataError, match=str(path)):
        load_mnist(DataContext(tmp_path / "data", False, tmp_path))


def test_wrong_magic_number_is_named(tmp_path: Path):
    raw = _idx_root(tmp_path)
    path = raw / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x00\x00" + path.read_bytes()[4:])
    from transferlab.data import DataContext
    from transferlab.data.mnist import load_mnist

    with pytest.raises(DataError, match=str(path)):
        load_mnist(DataContext(tmp_path / "data", False, tmp_path))


def test_unreadable_photo_is_named(tmp_path: Path, data_root: Path):
    from transferlab.data import DataContext
    from transferlab.data.mnistm import load_mnistm

    bad = sorted((data_root / "BSR/BSDS500/data/images/train").glob("*.jpg"))[1]
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=str(bad)):
        load_mnistm(DataContext(data_root, False, tmp_path / "cache"))


def test_downloaded_photos_are_verified_against_known_checksums(tmp_path: Path, monkeypatch):
    from transferlab.data import mnistm

    prefix = "BSR/BSDS500/data/images/train/"

    def fake_download(url: str, root: str, filename: str) -> None:
        _tar(Path(root) / filename, {prefix + "100075.jpg": b"not the real photo"})

    monkeypatch.setattr("torchvision.datasets.utils.download_url", fake_download)
    with pytest.raises(DataError, match=r"100075\.jpg does not match its known SHA-256"):
        mnistm.download_bsds500(tmp_path)


def test_resume_ignores_operational_keys_but_refuses_a_changed_experiment(tmp_path: Path):
    first = run_in_process(tmp_path, "trainer.steps=6", "trainer.log_every=2")
    again = run_in_process(tmp_path, "trainer.steps=6", "trainer.log_every=3",
                           "trainer.num_threads=1",
                           "trainer.malloc_tuning=false")  # resumes: nothing trained differs
    assert again["metrics"] == first["metrics"]
    with pytest.raises(UserError, match=r"trainer\.steps: 6 → 8"):
        run_in_process(tmp_path, "trainer.steps=8")


# --- Graceful stops, resume bookkeeping, refused reruns ---------------------------------------


def _events(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of a run as (step, value) points, purged events left out."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A run sent SIGTERM (what `kill`, Slurm and `docker stop` send) during step 15; its
    periodic checkpoints are at steps 10 and 20."""
    tmp = tmp_path_factory.mktemp("stopped")
    result = _child(tmp, tmp / "run", KILL_STEP="15", KILL_SIGNAL=str(int(signal.SIGTERM)))
    return tmp / "run", result


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run"


def test_sigterm_finishes_the_step_saves_a_checkpoint_and_records_interrupted(stopped):
    run_dir, result = stopped
    assert result.returncode == 143, result.stderr
    assert "stopped by SIGTERM at step 15" in result.stderr
    assert f"rerun the same command with hydra.run.dir={run_dir}" in result.stderr
    assert load_safely(run_dir / "checkpoints" / "last.pt")["step"] == 15  # not 10: saved now
    assert load_safely(run_dir / "checkpoints" / "previous.pt")["step"] == 10
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "interrupted" and "SIGTERM" in record["error"]
    assert [h["step"] for h in record["history"]] == [10]


def test_a_stopped_run_resumes_to_identical_results_and_keeps_the_books(
        stopped, uninterrupted: Path, tmp_path: Path):
    run_dir = _copy(stopped[0], tmp_path)
    resumed = run_cli(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert "at step 15" in resumed.stdout
    assert _metrics(run_dir) == _metrics(uninterrupted)
    # TensorBoard: the points of the checkpoint's own step (15) survive the purge, and none of
    # the cut-short run's later ones do: the curves are those of the uninterrupted run.
    assert _events(run_dir) == _events(uninterrupted)
    record = json.loads((run_dir / "results.json").read_text())
    first, second = record["invocations"]
    assert record["wall_time_s"] == pytest.approx(first["wall_time_s"] + second["wall_time_s"],
                                                  abs=0.002)
    assert first["wall_time_s"] > 0 and second["wall_time_s"] > 0
    assert record["overrides"] == first["overrides"] == list(RUN)  # Hydra's keys aside


@pytest.mark.parametrize("case", ["changed-key", "damaged-checkpoint"])
def test_a_refused_rerun_leaves_the_record_byte_for_byte(stopped, tmp_path: Path, case):
    run_dir = _copy(stopped[0], tmp_path)
    before = (run_dir / "results.json").read_bytes()
    last = run_dir / "checkpoints" / "last.pt"
    overrides = list(RUN)
    if case == "changed-key":
        overrides[overrides.index("trainer.steps=30")] = "trainer.steps=40"
    else:
        last.write_bytes(os.urandom(4096))
    result = run_cli(*overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    if case == "changed-key":
        assert "was made with a different config (trainer.steps: 30 → 40)" in line
        assert "trainer.steps=30" in line and str(run_dir / "results.json") in line
    else:
        assert f"{last} is damaged: it is not a PyTorch file" in line
        # the choice it leaves: start over, or the previous good checkpoint
        assert f"delete {run_dir / 'checkpoints'} to start over" in line
        assert f"previous checkpoint (step 10): mv {last.with_name('previous.pt')} {last}" \
            in line
        assert "weights_only" not in line
    assert (run_dir / "results.json").read_bytes() == before
    # the console line is the refusal's record: nothing is left behind in the folder
    assert not (run_dir / "refused.json").exists()
    assert not (run_dir / ".hydra" / "refused.json").exists()


@pytest.mark.parametrize("case", ["same", "changed-key"])
def test_a_completed_run_is_never_rewritten(uninterrupted: Path, tmp_path: Path, case):
    run_dir = _copy(uninterrupted, tmp_path)
    before = (run_dir / "results.json").read_bytes()
    # never read again either: a damaged last checkpoint changes nothing
    (run_dir / "checkpoints" / "last.pt").write_bytes(os.urandom(4096))
    overrides = [*RUN, "trainer.steps=40"] if case == "changed-key" else RUN
    result = run_cli(*overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False)
    if case == "changed-key":
        assert result.returncode == 2
        assert "holds a completed run with a different config (trainer.steps: 30 → 40)" \
            in result.stderr
    else:  # it only reports again
        assert result.returncode == 0 and "completed earlier, at step 30" in result.stdout
    assert (run_dir / "results.json").read_bytes() == before


def test_one_process_per_run_folder_and_a_killed_run_is_listed_incomplete(tmp_path: Path,
                                                                          capsys):
    run_dir = tmp_path / "runs" / "run"
    args = [*TINY_FAST, "trainer.steps=100000", "trainer.eval_every=3",
            "trainer.checkpoint_every=100000", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    first = subprocess.Popen([sys.executable, "-m", "transferlab", *args], cwd=tmp_path,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        record: dict = {}
        while not record.get("history") and time.time() < deadline:
            time.sleep(0.2)
            with contextlib.suppress(OSError, ValueError):  # not written yet
                record = json.loads((run_dir / "results.json").read_text())
        assert record["status"] == "running"  # a record from the start, with the history
        second = run_cli(*args, cwd=tmp_path, check=False)
        assert second.returncode == 2
        assert second.stderr.strip() == (f"error: run folder {run_dir} is in use by process "
                                         f"{first.pid}; wait for it to end, or use another "
                                         "hydra.run.dir")
        assert not (run_dir / "refused.json").exists()  # the owner's folder is left alone
        assert "in use" not in (run_dir / "transferlab.log").read_text()  # its log too
        [run] = summarize.load_runs(tmp_path / "runs")
        assert run.status == "running"  # its lock is held
    finally:
        first.kill()  # SIGKILL: no handler runs, nothing more is written
        first.wait(timeout=60)
    summarize.main([str(tmp_path / "runs"), "--no-plot"])
    printed = capsys.readouterr().out
    assert "1 runs did not complete" in printed
    last = json.loads((run_dir / "results.json").read_text())["history"][-1]
    assert (f"run (source_only, seed 0): incomplete: the process ended without recording why "
            f"(killed?); last evaluation at step {last['step']}: source_acc "
            f"{last['source_acc']:.4f}") in printed
    # The kernel released the lock: another process may take the folder over (a different
    # config is allowed here: the killed run left no checkpoint to resume).
    run_cli(*TINY_FAST, "trainer.steps=3", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert summarize.load_runs(tmp_path / "runs")[0].status == "completed"


def test_a_second_stop_signal_stops_at_once():
    before = signal.getsignal(signal.SIGTERM)
    with graceful_stops() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.name == "SIGTERM"  # the first only asks
        with pytest.raises(Interrupted, match="stopped at once by a second SIGUSR1"):
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_lock_keeps_a_second_owner_out_and_tells_running_from_incomplete(tmp_path: Path):
    write_json(tmp_path / "results.json", {"status": "running"})
    assert status_of(tmp_path, {"status": "running"}) == "incomplete"  # nobody holds it
    with RunFolder(tmp_path, {"config": {}}):
        assert status_of(tmp_path, {"status": "running"}) == "running"
        with pytest.raises(FolderInUse, match=f"in use by process {os.getpid()};"), \
                RunFolder(tmp_path, {"config": {}}):
            pass
    assert status_of(tmp_path, {"status": "running"}) == "incomplete"
    with RunFolder(tmp_path, {"config": {}}):  # released: the next owner gets it
        pass


def test_submitit_requeues_a_job_stopped_by_its_time_limit_signal(tmp_path: Path,
                                                                  uninterrupted: Path):
    """submitit's local executor (the `slurm` launcher's code path) with the signal it sends
    before a time limit, SIGUSR2, delivered at step 15 of the job's first attempt: the job
    saves a checkpoint, submitit requeues it, and the second attempt finishes the run."""
    out = tmp_path / "multirun"
    marker = tmp_path / "signalled"
    stop = "+hydra.callbacks.stop"
    result = run_cli("-m", "hydra/launcher=slurm_local", *RUN, f"hydra.sweep.dir={out}",
                     f"{stop}._target_=signal_at_step.SignalAtStep", f"{stop}.step=15",
                     f"{stop}.signal={int(signal.SIGUSR2)}", f"{stop}.marker={marker}",
                     cwd=tmp_path, env={"PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'tests'}"})
    assert marker.exists() and "1 jobs completed" in result.stdout
    record = json.loads((out / "0" / "results.json").read_text())
    assert record["status"] == "completed" and len(record["invocations"]) == 2
    assert _metrics(out / "0") == _metrics(uninterrupted)
    logs = "".join(p.read_text() for p in (out / ".submitit").rglob("*_log.*"))
    assert "Caught signal SIGUSR2" in logs and "Requeued job" in logs


# --- Damaged files, and the smaller ones -------------------------------------------------------


def test_a_damaged_checkpoint_is_named_with_the_choices_it_leaves(tmp_path: Path):
    checkpointer = Checkpointer(tmp_path / "checkpoints", 1, {"seed": 0})
    checkpointer.save({"step": 1})
    checkpointer.save({"step": 2})
    assert checkpointer.load()["step"] == 2
    last, previous = checkpointer.path, checkpointer.previous
    good = last.read_bytes()
    for damage, problem in [(os.urandom(4096), "not a PyTorch file"), (b"", "empty (0 bytes)"),
                            (good[: len(good) // 2], "is damaged")]:
        last.write_bytes(damage)
        with pytest.raises(UserError) as raised:
            checkpointer.load()
        message = str(raised.value)
        assert message.startswith(f"{last} ") and problem in message
        assert f"resume from the previous checkpoint (step 1): mv {previous} {last}" in message
        assert "weights_only" not in message
    previous.write_bytes(b"")  # no good previous checkpoint: starting over is the choice
    with pytest.raises(UserError, match=f"; delete {tmp_path / 'checkpoints'} to start over$"):
        checkpointer.load()


def test_nan_stop_before_any_checkpoint_says_none_was_written(tmp_path: Path):
    with pytest.raises(UserError, match=r"no checkpoint was written yet$"):
        run_in_process(tmp_path, "trainer.steps=50", "trainer.eval_every=5",
                       "trainer.checkpoint_every=0", "trainer.optimizer.lr=1e6")
    assert not (tmp_path / "checkpoints" / "last.pt").exists()
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "failed"


def test_step_memory_counts_layer_outputs_their_gradients_and_the_input():
    network = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    # per sample: outputs 3 + 3 floats (24 bytes), as much again for gradients, 4-float input
    assert step_memory(network, torch.zeros(1, 4), batch_size=10) == 10 * (2 * 24 + 16)


def test_a_batch_that_cannot_fit_stops_with_a_message_and_a_record(tmp_path: Path):
    with pytest.raises(UserError, match=r"trainer\.batch_size=10000000 needs at least [\d.]+ "
                                        r"GiB for one training step but [\d.]+ GiB is available"):
        run_in_process(tmp_path, "trainer.batch_size=10000000", "trainer.steps=2")
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["status"] == "failed" and "batch_size=10000000" in record["error"]


def test_a_misspelt_key_is_one_line_naming_the_closest(tmp_path: Path):
    result = run_cli(*TINY_FAST, "trainer.stpes=5", f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: trainer.stpes is not a config key; did you mean "
                                     "trainer.steps?")


@pytest.mark.parametrize("overrides", [
    ["+method.lr_mult={network.encoder:0.1}"],       # a Method argument no YAML sets
    ["-m", "method=dann,adda", "method.lambda_gamma=5,10"],  # a key of one of the choices
    ["trainer.optimizer._target_=torch.optim.Adam", "+trainer.optimizer.betas=[0.5,0.9]"],
    ["+evaluation.evaluators.val={_target_:transferlab.evaluation.Accuracy,split:source_val}"],
    ["hydra.run.dir=x", "+hydra.job.env_set.A=1", "experiment=mnist_mnistm"],
    ["++trainer.steps=3", "~data.image_size"],
])
def test_real_keys_and_target_parameters_pass_the_key_check(overrides):
    check_keys(overrides, CONFIG_DIR)


@pytest.mark.parametrize("overrides,message", [
    (["+trainer.stpes=5"], "trainer.stpes is not a config key; did you mean trainer.steps?"),
    (["+method.lr_mul={a:1}"], "method.lr_mul is not a config key; did you mean method.lr_mult?"),
    (["+trainer.optimizer.betas=[0.5,0.9]"], "trainer.optimizer.betas is not a config key"),
    (["method.lr_mult={a:1}"], "method.lr_mult is not in the config, but its target takes it: "
                               "add it with +method.lr_mult=..."),
    (["+trainer.steps=3"], "+trainer.steps: trainer.steps is already in the config; set it "
                           "without the +"),
    (["method=dann", "method.lambda_gama=3"], "did you mean method.lambda_gamma?"),
    # a key's parent is no suggestion: its siblings are named instead
    (["+trainer.foo=1"], "trainer.foo is not a config key; trainer has batch_size, "),
])
def test_unknown_keys_are_refused(overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        check_keys(overrides, CONFIG_DIR)


def test_an_unwritable_run_folder_is_one_line(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli(*TINY_FAST, f"hydra.run.dir={blocker / 'run'}", cwd=tmp_path, check=False)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot write the run folder {blocker / 'run'}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_a_read_only_run_folder_is_one_line(tmp_path: Path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    result = run_cli(*TINY_FAST, f"hydra.run.dir={folder / 'run'}", cwd=tmp_path, check=False)
    folder.chmod(0o755)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"error: cannot write the run folder {folder}")


def test_help_into_a_closed_pipe_ends_quietly(tmp_path: Path):
    """`transferlab --help | head`: the reader is gone before the help is written."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "transferlab", "--help"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    stderr = proc.stderr.read()
    proc.wait(timeout=120)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_version_is_transferlabs(tmp_path: Path):
    import transferlab

    result = run_cli("--version", cwd=tmp_path)
    assert result.stdout.startswith(f"transferlab {transferlab.__version__} (hydra-core ")


# --- a full disk --------------------------------------------------------------------------

def test_a_failed_write_with_the_disk_nearly_full_is_out_of_space(tmp_path: Path, monkeypatch):
    """torch.save's zip writer reports a short write as a RuntimeError, not as ENOSPC: with
    (almost) no space left, any failed write is taken for a full disk, names the folder and the
    bytes, and leaves no temporary file."""
    from transferlab import files

    path = tmp_path / "last.pt"
    path.write_bytes(b"x" * 5000)

    def short_write(file) -> None:
        file.write(b"y" * 3000)
        raise RuntimeError("unexpected pos 1354432 vs 1354360")

    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(
        10**9, 10**9 - 100, 100))
    with pytest.raises(files.OutOfSpace, match=rf"out of space in {tmp_path}: writing last.pt "
                                               r"needs about 5,000 bytes and 3,100 are free"):
        files.write_atomic(path, short_write)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert path.read_bytes() == b"x" * 5000
    monkeypatch.undo()
    with pytest.raises(RuntimeError):  # with room to spare it is the bug it says it is
        files.write_atomic(path, short_write)


# The real CLI in a child process whose disk "fills" while it writes the checkpoint of step
# FULL_AT: torch.save fails there with ENOSPC, as a write to a full filesystem does.
FILL_DISK = """
import errno, os, sys
import torch
real_save = torch.save
def save_until_full(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("step") == int(os.environ["FULL_AT"]):
        f.write(b"part of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")
    real_save(obj, f, *args, **kwargs)
torch.save = save_until_full
sys.argv = ["transferlab", *sys.argv[1:]]
from transferlab.cli import main
main()
"""


def test_a_full_disk_mid_run_is_one_line_exit_2_and_a_rerun_resumes_exactly(
        tmp_path: Path, uninterrupted: Path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "FULL_AT": "20"}
    full = subprocess.run([sys.executable, "-c", FILL_DISK, *RUN, f"hydra.run.dir={run_dir}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert full.returncode == 2, full.stderr
    assert full.stderr.strip().splitlines() == [full.stderr.strip()]  # one line
    assert full.stderr.startswith(f"error: out of space in {run_dir / 'checkpoints'}: writing "
                                  "last.pt needs about ")
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "failed" and "out of space" in record["error"]
    assert not [p for p in run_dir.rglob("*.tmp*")]
    assert load_safely(run_dir / "checkpoints" / "last.pt")["step"] == 10  # the one before
    resumed = run_cli(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert "resuming from" in resumed.stdout and "at step 10" in resumed.stdout
    assert _metrics(run_dir) == _metrics(uninterrupted)


# --- commands after training: folders they cannot write, runs still training ---------------

READ_ONLY = OSError(30, "Read-only file system")


@pytest.mark.parametrize("command", ["evaluate", "analyze", "summarize", "select"])
def test_a_command_on_a_folder_it_cannot_write_says_so_in_one_line_before_working(
        uninterrupted: Path, tmp_path: Path, monkeypatch, capsys, command):
    import tempfile

    from transferlab import analyze, evaluate, select

    def read_only(*args, **kwargs):
        raise READ_ONLY

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    mains = {"evaluate": lambda: evaluate.main([str(uninterrupted)]),
             "analyze": lambda: analyze.main([str(uninterrupted), "--samples", "20"]),
             "summarize": lambda: summarize.main([str(uninterrupted), "--no-plot"]),
             "select": lambda: select.main([str(uninterrupted), "--by", "bnm", "--no-plot"])}
    with contextlib.suppress(SystemExit):
        code = mains[command]()
        assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err]
    assert err.startswith(f"error: cannot write the folder {uninterrupted} (Read-only file "
                          "system") and err.endswith("elsewhere with --out DIR")


def test_evaluate_refuses_a_run_still_training_unless_allowed(stopped, tmp_path: Path, capsys,
                                                               caplog):
    from transferlab import evaluate
    from transferlab.files import FileLock

    run_dir = _copy(stopped[0], tmp_path)  # a checkpoint of step 15 of 30
    lock = FileLock(run_dir / "run.lock")
    lock.acquire(wait=False)  # as the training process holds it
    try:
        with pytest.raises(SystemExit):
            evaluate.main([str(run_dir), "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert err == (f"error: {run_dir} is still training (process {os.getpid()}); its "
                       "checkpoint is from step 15: wait for the run to end, or pass "
                       "--allow-live (in Python: allow_live=True) to use that checkpoint")
        evaluate.main([str(run_dir), "--out", str(tmp_path / "out"), "--allow-live"])
        assert "is still training" in caplog.text and "using it (--allow-live)" in caplog.text
        assert json.loads((tmp_path / "out" / "evaluate.json").read_text())["step"] == 15
    finally:
        lock.release()


def test_a_torchvision_built_for_another_torch_is_one_line_with_the_fix(tmp_path: Path):
    """What a CPU-wheel install can leave: torchvision's ops fail to register on import (here
    when a ResNet backbone imports torchvision's models)."""
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n')
    env = {"PYTHONPATH": f"{tmp_path / 'site'}:{ROOT / 'src'}"}
    result = run_cli(*TINY_FAST, "backbone=resnet18", "trainer.steps=2",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env, check=False)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    from transferlab.install import installed, matching_torchvision

    torch_version = installed("torch")
    assert line.startswith(f"error: the PyTorch install is broken (torch {torch_version} with "
                           f"torchvision {installed('torchvision')}")
    assert "operator torchvision::nms does not exist" in line
    assert line.endswith(f"pip install --force-reinstall torch=={torch_version.split('+')[0]} "
                         f"torchvision=={matching_torchvision(torch_version)}.*")


def test_matching_torchvision_releases():
    from transferlab.install import matching_torchvision

    assert matching_torchvision("2.14.1+cu130") == "0.29"
    assert matching_torchvision("2.9.1") == "0.24"
