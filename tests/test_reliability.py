"""Resume, atomic writes, Ctrl-C, NaN stops, safe loading and reproducibility."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY_FAST, run_cli
from helpers import run_in_process
from transferlab.checkpoint import load_safely, save_atomic
from transferlab.cli import write_json
from transferlab.data.mnistm import extract_photos
from transferlab.errors import DataError, UserError

RUN = (*TINY_FAST, "trainer.steps=30", "trainer.eval_every=10", "trainer.checkpoint_every=10",
       "method=dann")

# Runs the real CLI in a child process that SIGKILLs itself at a chosen point: after the
# update of step KILL_STEP (before that step's checkpoint), or halfway through writing the
# checkpoint of step KILL_SAVE.
KILLER = """
import os, signal, sys
import torch
import transferlab.checkpoint as ckpt
import transferlab.train as train

kill_step = int(os.environ.get("KILL_STEP", 0))
kill_save = int(os.environ.get("KILL_SAVE", 0))
update = train.FiniteCheck.update

def update_then_die(self, scalars, step):
    update(self, scalars, step)
    if step == kill_step:
        os.kill(os.getpid(), signal.SIGKILL)

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


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path: Path):
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
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert f"hydra.run.dir={run_dir}" in stderr
    step = load_safely(run_dir / "checkpoints" / "last.pt")["step"]
    assert 0 < step < 100000
    assert json.loads((run_dir / "results.json").read_text())["status"] == "interrupted"


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
    ("method=danm", "method=danm is not a valid choice; valid: adda, dann, finetune, "
                    "source_only, target_only"),
    ("trainer.steps=-5", "trainer.steps=-5 is invalid: must be an integer >= 0"),
    ("trainer.batch_size=abc", "trainer.batch_size='abc' is invalid: must be an integer >= 1"),
    ("method=finetune method.shots=0", "method.shots=0 is invalid: must be an integer >= 1"),
    ("data.download=maybe", "data.download='maybe' is invalid: must be true or false"),
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
