"""Seeing adaptation: loading trained runs, evaluating them on other pairs, and the analysis
(proxy A-distance, confusion matrix, t-SNE, projector) on the tiny pair."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import transferlab
from conftest import ROOT, make_mnist, run_cli
from helpers import choices_of, run_in_process
from transferlab import analyze, evaluate
from transferlab.api import evaluate_run, run_pair
from transferlab.data.domain import Split
from transferlab.data.tiny import load_tiny
from transferlab.diagnostics import (
    measure,
    per_class_accuracy,
    pixels,
    proxy_a_distance,
)
from transferlab.errors import UserError
from transferlab.losses.label_shift import confusion_matrix
from transferlab.summarize import load_runs

STEPS = 150


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A source-only run on the tiny pair that measured its analysis at the end."""
    out = tmp_path_factory.mktemp("source_only")
    run_in_process(out, f"trainer.steps={STEPS}", f"trainer.eval_every={STEPS}",
                   "trainer.num_threads=1", "analysis.at_end=true", "analysis.samples=100")
    return out


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def gaussians(n: int, dim: int, shift: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two samples of unit Gaussians, the second moved by `shift` along the first axis."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, dim)), rng.normal(size=(n, dim))
    b[:, 0] += shift
    return a, b


# --- proxy A-distance -------------------------------------------------------------------------

def test_proxy_a_distance_is_zero_for_one_distribution_and_two_for_separable_ones():
    assert abs(proxy_a_distance(*gaussians(1000, 5, 0.0))) < 0.15
    assert proxy_a_distance(*gaussians(1000, 5, 10.0)) == 2.0


def test_proxy_a_distance_follows_the_error_of_the_best_linear_classifier():
    # Unit Gaussians 2 apart: the best (linear) classifier errs Φ(-1) = 0.1587 on each side.
    assert proxy_a_distance(*gaussians(3000, 1, 2.0)) == pytest.approx(
        2 * (1 - 2 * 0.158655), abs=0.06)


def test_proxy_a_distance_on_tiny_pixels_uses_held_out_error():
    """Two halves of the grey domain: ≈ 0. In 784 dimensions with 150 training images per
    half a linear classifier separates any training set, so only a held-out error gives 0.
    Grey strokes against the same strokes inverted (dark on light): 2."""
    grey = load_tiny(None, "grey").train
    first, second = (grey.subset(torch.arange(i, i + 300)) for i in (0, 300))
    assert abs(proxy_a_distance(pixels(first, 1), pixels(second, 1))) < 0.3
    inverted = Split(255 - second.images, second.labels)
    assert proxy_a_distance(pixels(first, 1), pixels(inverted, 1)) == 2.0


# --- confusion matrix and per-class accuracy ----------------------------------------------------

def test_confusion_matrix_rows_are_true_classes():
    predicted, labels = torch.tensor([0, 1, 1, 2, 2]), torch.tensor([0, 1, 2, 2, 2])
    confusion = confusion_matrix(predicted, labels, 4)
    assert confusion.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]]
    assert per_class_accuracy(confusion) == {"0": 1.0, "1": 1.0, "2": pytest.approx(2 / 3),
                                             "3": None}


def test_confusion_sums_to_the_test_size_and_its_diagonal_is_the_reported_accuracy(run_dir):
    record = results(run_dir)
    method = transferlab.load(run_dir)
    pair = run_pair(method)
    m = measure(method, pair, samples=100)
    labels = pair.target.test.labels
    assert m.confusion.sum() == len(labels) == 200
    assert m.confusion.sum(1).tolist() == torch.bincount(labels, minlength=10).tolist()
    assert m.confusion.trace() == round(record["metrics"]["target_acc"] * len(labels))
    assert (m.confusion.sum(0) > 0).sum() > 3  # predicts several classes: rows ≠ columns
    predicted = torch.bincount(transferlab.predict_images(method, pair.target.test.images)
                               .argmax(1), minlength=10)
    summary = m.summary()
    assert summary["predicted_target_class_share"] == {
        str(c): round(n / 200, 4) for c, n in enumerate(predicted.tolist())}
    true_counts = torch.bincount(labels, minlength=10).tolist()
    assert summary["target_class_share"] == {
        str(c): round(n / 200, 4) for c, n in enumerate(true_counts)}
    # analysis.at_end=true measured the same at the end of training.
    assert record["analysis"] == m.summary()


def test_summaries_show_the_proxy_a_distance_of_runs_that_measured_it(run_dir):
    (run,) = load_runs(run_dir)
    assert run.metrics["proxy_a_distance"] == results(run_dir)["analysis"]["proxy_a_distance"]


def test_at_end_without_the_extra_stops_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # as if not installed
    with pytest.raises(UserError, match=r"scikit-learn.*pip install 'transferlab\[analysis\]'"):
        run_in_process(tmp_path, "trainer.steps=5", "trainer.num_threads=1",
                       "analysis.at_end=true")
    assert "steps" not in results(tmp_path)


# --- load ---------------------------------------------------------------------------------------

def test_load_reproduces_the_runs_final_metrics_exactly(run_dir):
    record = results(run_dir)
    method = transferlab.load(run_dir)
    assert not method.training and method.step == STEPS
    assert method.config.method._target_ == "transferlab.methods.supervised.Supervised"
    pair = run_pair(method)
    assert evaluate_run(method, pair) == record["metrics"]
    logits = transferlab.predict_images(method, pair.target.test.images)
    accuracy = (logits.argmax(1) == pair.target.test.labels).float().mean().item()
    assert accuracy == record["metrics"]["target_acc"]


def test_load_takes_the_config_from_the_checkpoint(run_dir, tmp_path):
    """A rerun in the folder with other overrides rewrites results.json's config (and fails):
    the weights still come with the config they were trained with."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    record = results(run)
    record["config"]["method"] = {"_target_": "transferlab.methods.dann.DANN"}
    (run / "results.json").write_text(json.dumps(record))
    assert type(transferlab.load(run)).__name__ == "Supervised"


def test_load_uses_the_separate_target_encoder_of_adda(tmp_path):
    record = run_in_process(tmp_path, "method=adda", "trainer.steps=20",
                            "trainer.eval_every=20", "trainer.num_threads=1")
    method = transferlab.load(tmp_path)
    assert bool(method.adapting)
    assert evaluate_run(method, run_pair(method)) == record["metrics"]


def test_load_needs_no_data(tmp_path, data_root):
    """A run on files (MNIST → MNIST-M) loads and predicts after its data is gone."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    run_cli("data=mnist_mnistm", f"data.root={data_root}", f"data.cache_dir={cache}",
            "data.source_val_size=10", "data.target_val_size=10", "trainer.steps=2",
            "trainer.progress_bar=false", "trainer.num_threads=1", "device=cpu",
            f"hydra.run.dir={out}", cwd=tmp_path)
    shutil.rmtree(data_root)
    shutil.rmtree(cache)
    method = transferlab.load(out)
    grey = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    assert transferlab.predict_images(method, grey).shape == (5, 10)
    with pytest.raises(UserError, match=r"\(N, 3 or 1, 28, 28\)"):
        transferlab.predict_images(method, torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


# --- evaluate -----------------------------------------------------------------------------------

def test_evaluate_on_another_pair_writes_evaluate_json(run_dir, tmp_path, capsys):
    """tiny-grey → tiny-grey: its target test split is the run's source test split."""
    record = results(run_dir)
    evaluate.main([str(run_dir), "data.target.style=grey", "--out", str(tmp_path)])
    assert "tiny-grey → tiny-grey" in capsys.readouterr().out
    written = json.loads((tmp_path / "evaluate.json").read_text())
    assert written["metrics"].keys() == record["metrics"].keys()
    assert written["metrics"]["target_acc"] == record["metrics"]["source_acc"]
    assert written["metrics"]["source_acc"] == record["metrics"]["source_acc"]
    assert written["domains"] == {"source": "tiny-grey", "target": "tiny-grey"}


def test_a_colour_model_evaluates_on_a_grey_pair(run_dir, tmp_path):
    from test_usps_svhn import make_usps

    make_mnist(tmp_path)
    make_usps(tmp_path)
    method = transferlab.load(run_dir)
    pair = run_pair(method, ["data=mnist_usps", f"data.root={tmp_path}",
                             "data.source_val_size=10", "data.target_val_size=5"])
    assert (pair.source.name, pair.target.name) == ("MNIST", "USPS")
    metrics = evaluate_run(method, pair)
    assert metrics.keys() == results(run_dir)["metrics"].keys()
    expected = (transferlab.predict_images(method, pair.target.test.images).argmax(1)
                == pair.target.test.labels).float().mean().item()
    assert metrics["target_acc"] == expected


@pytest.mark.parametrize(("args", "message"), [
    (["{missing}"], "run folder {missing} does not exist"),
    (["{run}", "+data.source.num_classes=5", "+data.target.num_classes=5"],
     "has 5 classes but the run's model predicts 10"),
    (["{run}", "trainer.steps=3"], "'trainer.steps=3' is not a data override"),
    (["{run}", "data.rot=1"], "Could not override 'data.rot'"),
    (["{run}", "data=nope"],
     "data=nope is not a valid choice; valid: " + ", ".join(choices_of("data"))),
    (["{run}", "data.image_size=32"], "has 32px images but the run's model takes 28px"),
    (["{run}", "--checkpoint", "best"], "has no best checkpoint"),
    (["{run}", "--checkpoint", "first"], "checkpoint='first' is not valid; valid: last, best"),
])
def test_evaluate_errors_are_one_line(run_dir, tmp_path, capsys, args, message):
    names = {"run": run_dir, "missing": tmp_path / "missing"}
    with pytest.raises(SystemExit) as stop:
        evaluate.main([a.format(**names) for a in args])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert message.format(**names) in err


def test_evaluate_module_runs_as_a_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "transferlab.evaluate",
                             str(tmp_path / "nothing")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: run folder {tmp_path / 'nothing'} does not exist"


# --- analyze ------------------------------------------------------------------------------------

def test_analyze_writes_every_file_it_promises(run_dir, tmp_path, capsys):
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    runs = [tmp_path / "runs" / name for name in ("first", "second")]
    for run in runs:
        shutil.copytree(run_dir, run)
    analyze.main([*map(str, runs), "--samples", "60"])
    assert f"side by side: {tmp_path / 'runs' / 'tsne_side_by_side.png'}" in capsys.readouterr().out
    assert Image.open(tmp_path / "runs" / "tsne_side_by_side.png").size[1] > 600  # two rows
    record = results(run_dir)
    for run in runs:
        analysis = json.loads((run / "analysis.json").read_text())
        assert analysis["per_class_target_acc"] == record["analysis"]["per_class_target_acc"]
        assert -2.5 < analysis["proxy_a_distance"] <= 2 and analysis["samples_per_domain"] == 60
        assert analysis["proxy_a_distance_pixels"] > 1.5  # grey vs colour strokes
        for png in ("tsne.png", "confusion.png"):
            assert Image.open(run / png).size[0] > 300
        rows = (run / "confusion.csv").read_text().splitlines()
        counts = np.array([[int(v) for v in row.split(",")[1:]] for row in rows[1:]])
        assert rows[0] == "true\\predicted," + ",".join(map(str, range(10)))
        assert counts.sum() == 200
        assert counts.trace() == round(record["metrics"]["target_acc"] * 200)

        config = text_format.Parse((run / "tb" / "projector_config.pbtxt").read_text(),
                                   ProjectorConfig())
        (embedding,) = config.embeddings
        folder = run / "tb"
        tensors = (folder / embedding.tensor_path).read_text().splitlines()
        metadata = (folder / embedding.metadata_path).read_text().splitlines()
        assert len(tensors) == 120 and len(tensors[0].split("\t")) == 768
        assert metadata[0] == "domain\tclass" and len(metadata) == 121
        assert {row.split("\t")[0] for row in metadata[1:]} == {"tiny-grey", "tiny-colour"}
        sprite = Image.open(folder / embedding.sprite.image_path)
        assert list(embedding.sprite.single_image_dim) == [28, 28] and sprite.size[0] >= 28 * 11


def test_analyze_one_run_into_out(run_dir, tmp_path):
    analyze.main([str(run_dir), "--samples", "40", "--out", str(tmp_path)])
    assert {p.name for p in tmp_path.iterdir()} == {"analysis.json", "tsne.png",
                                                     "confusion.png", "confusion.csv", "tb"}


def test_analyze_without_the_extra_names_it_in_one_line(run_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openTSNE", None)  # as if not installed
    with pytest.raises(SystemExit) as stop:
        analyze.main([str(run_dir)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: analysis needs openTSNE, which is not installed: "
                   "pip install 'transferlab[analysis]'")
