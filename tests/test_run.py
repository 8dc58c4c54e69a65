"""End to end, as a user runs it: `python -m transferlab ...` in a subprocess."""

import json
from pathlib import Path

import pytest

from conftest import TINY_FAST, run_cli
from helpers import scalar_tags


def test_short_run_writes_results_tensorboard_and_table(tmp_path: Path):
    out = tmp_path / "run"
    # Trained here, not reused from another test's stored stage (whose logging density the
    # replay would show: logging is not part of a stage's fingerprint).
    result = run_cli(*TINY_FAST, "trainer.steps=6", "trainer.eval_every=3",
                     "trainer.reuse_stages=false", f"hydra.run.dir={out}", cwd=tmp_path)
    record = json.loads((out / "results.json").read_text())
    assert record["status"] == "completed"
    assert record["metrics"] == {k: v for k, v in record["history"][-1].items()
                                 if k in record["evaluators"]}
    assert record["steps"] == 6 and record["seed"] == 0
    assert record["wall_time_s"] > 0
    assert record["config"]["trainer"]["steps"] == 6
    assert record["choices"] == {"data": "tiny", "backbone": "dann_mnist",
                                 "method": "source_only"}
    assert [h["step"] for h in record["history"]] == [3, 6]

    tags = scalar_tags(out)
    assert len(tags["acc/source"]) == 2 and len(tags["acc/target"]) == 2
    assert tags["acc/target"][-1] == pytest.approx(record["metrics"]["target_acc"])
    assert len(tags["loss/classification"]) == 6
    assert any(t.startswith("lr/") for t in tags)
    table = result.stdout.splitlines()
    assert "tiny-grey → tiny-colour" in table
    assert any(line.split()[:2] == ["target_acc", f"{record['metrics']['target_acc']:.4f}"]
               for line in table)
    # the folder at the start and at the end; the job log holds what the console showed
    assert table[0] == table[-1] == f"run folder: {out}"
    log = (out / "transferlab.log").read_text()
    assert all(line in log for line in table)


def test_missing_data_is_a_one_line_error_naming_the_path(tmp_path: Path):
    empty = tmp_path / "nothing-here"
    result = run_cli("data=mnist_mnistm", f"data.root={empty}", "data.download=false",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(empty / "MNIST" / "raw") in lines[0] and "data.download=true" in lines[0]
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["status"] == "failed" and "MNIST not found" in record["error"]
    assert lines[0] in (tmp_path / "run" / "transferlab.log").read_text()


def test_missing_photos_is_a_one_line_error(tmp_path: Path):
    from conftest import make_mnist

    make_mnist(tmp_path / "data")
    result = run_cli("data=mnist_mnistm", f"data.root={tmp_path / 'data'}",
                     f"data.cache_dir={tmp_path / 'cache'}",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "BSR/BSDS500/data/images/train" in result.stderr


def test_real_layout_run_on_generated_files(tmp_path: Path, data_root: Path):
    """The mnist_mnistm pair end to end on tiny files in the real layouts."""
    out = tmp_path / "run"
    run_cli("data=mnist_mnistm", f"data.root={data_root}", f"data.cache_dir={tmp_path / 'c'}",
            "data.source_val_size=10", "data.target_val_size=10", "trainer.steps=2",
            "trainer.progress_bar=false",
            "device=cpu", f"hydra.run.dir={out}", cwd=tmp_path)
    record = json.loads((out / "results.json").read_text())
    assert record["domains"] == {"source": "MNIST", "target": "MNIST-M"}
    assert list((tmp_path / "c" / "MNIST-M").glob("*.pt"))
