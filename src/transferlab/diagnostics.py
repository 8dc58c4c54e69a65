"""What adaptation did to a trained model: how far apart the domains' features are, where the
target errors are, and the picture of both (t-SNE, TensorBoard's projector).

The measures (`transferlab.api.analyze_run` writes them for a run folder, and
`python -m transferlab.analyze` calls it):
- proxy A-distance (Ben-David et al., NIPS 2006; used in the DANN paper, Ganin et al., JMLR
  2016, sec. 5.1.5): PAD = 2 (1 − 2ε), ε the held-out error of a linear classifier trained to
  tell source from target. As in the DANN paper the classifier is a linear SVM
  (scikit-learn's LinearSVC on standardised inputs); half of each domain's sample trains it,
  with C chosen from `PAD_C` by 3-fold cross-validation on that half, and ε is its balanced
  error on the other half. 0: the domains are indistinguishable (sampling noise can make it
  slightly negative); 2: linearly separable. It is measured on the encoder's features and,
  for reference, on raw pixels. (The DANN authors' code instead keeps the C with the lowest
  error on the held-out half itself, which reads slightly higher.)
- the confusion matrix of the whole target test split, per-class target accuracy, and the
  share of target test images predicted as each class (label-free; beside the true shares).
- t-SNE (openTSNE, seeded) of the encoder features of N source and N target test images.

Test images are read without their labels for the distance and the picture; target test
labels are used only for the reported confusion matrix and per-class accuracy, never to choose
anything. Needs the `analysis` extra (scikit-learn, openTSNE, matplotlib).
"""

from __future__ import annotations

import importlib
import io
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from transferlab.data.domain import DomainPair, Split
from transferlab.errors import UserError
from transferlab.evaluation.base import model_outputs
from transferlab.losses.label_shift import confusion_matrix
from transferlab.methods.base import DomainName, Method

SAMPLES = 2000          # test images per domain for the distance, the t-SNE and the projector
PAD_C = (0.0001, 0.001, 0.01, 0.1, 1.0)   # the linear SVM's C, chosen by cross-validation
SIDE_BY_SIDE = "tsne_side_by_side.png"
INSTALL = "pip install 'transferlab[analysis]'"
PACKAGES = {"sklearn": "scikit-learn", "openTSNE": "openTSNE", "matplotlib": "matplotlib"}


def require(module: str) -> ModuleType:
    """Import a module of the `analysis` extra, or stop with one line naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"analysis needs {PACKAGES[module]}, which is not installed: "
                        f"{INSTALL}") from None


def require_extra() -> None:
    for module in PACKAGES:
        require(module)


def proxy_a_distance(source: np.ndarray, target: np.ndarray, seed: int = 0) -> float:
    """2 (1 − 2ε) for two samples (rows: examples), ε the balanced held-out error of a linear
    SVM telling them apart (see the module docstring)."""
    require("sklearn")
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    x = np.concatenate([source.reshape(len(source), -1), target.reshape(len(target), -1)])
    y = np.r_[np.zeros(len(source)), np.ones(len(target))]
    x_fit, x_held, y_fit, y_held = train_test_split(
        x.astype(np.float32), y, test_size=0.5, stratify=y, random_state=seed)
    # The dual solver: on overlapping domains (adapted features) it was 5x faster than the
    # primal one at the larger C values here, for the same held-out error.
    svm = make_pipeline(StandardScaler(), LinearSVC(dual=True, random_state=seed))
    search = GridSearchCV(svm, {"linearsvc__C": PAD_C}, cv=3, scoring="balanced_accuracy")
    with warnings.catch_warnings():
        # At large C, overlapping domains (what adaptation aims for) may not converge in the
        # default 1,000 iterations; cross-validation then prefers a smaller C anyway.
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(x_fit, y_fit)
    error = 1.0 - search.score(x_held, y_held)
    return 2.0 * (1.0 - 2.0 * error)


def shares(counts: Tensor) -> dict[str, float]:
    """{class: its fraction of `counts`}, rounded to 4 places."""
    total = counts.sum().clamp_min(1)
    return {str(c): round((n / total).item(), 4) for c, n in enumerate(counts)}


def per_class_accuracy(confusion: Tensor) -> dict[str, float | None]:
    """{class: accuracy on that class's images}; None for a class with no images."""
    totals = confusion.sum(1)
    return {str(c): (confusion[c, c] / totals[c]).item() if totals[c] else None
            for c in range(len(confusion))}


@dataclass
class Measurements:
    """A run measured on its pair: the sampled test images of each domain, their encoder
    features, the target confusion matrix and the two proxy A-distances."""

    source: Split
    target: Split
    source_features: Tensor
    target_features: Tensor
    confusion: Tensor
    proxy_a_distance: float
    proxy_a_distance_pixels: float

    def summary(self) -> dict[str, Any]:
        """What analysis.json and results.json's `analysis` record."""
        total = int(self.confusion.sum())
        return {"proxy_a_distance": self.proxy_a_distance,
                "proxy_a_distance_pixels": self.proxy_a_distance_pixels,
                "per_class_target_acc": per_class_accuracy(self.confusion),
                # What the model predicts on the target: label-free (compare it with the
                # source's label shares); the true shares are for reporting beside it.
                "predicted_target_class_share": shares(self.confusion.sum(0)),
                "target_class_share": shares(self.confusion.sum(1)),
                "target_acc": self.confusion.trace().item() / total if total else None,
                "target_test_size": total, "samples_per_domain": len(self.source)}


def sample(split: Split, n: int, seed: int) -> Split:
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    return split.subset(index.sort().values.to(split.labels.device))


def pixels(split: Split, channels: int) -> np.ndarray:
    """Raw pixels in [0, 1], grey images repeated to `channels` as the network sees them."""
    return (split.images.expand(-1, channels, -1, -1).flatten(1).float() / 255).cpu().numpy()


def measure(method: Method, pair: DomainPair, samples: int = SAMPLES, seed: int = 0,
            batch_size: int = 2048) -> Measurements:
    """Features of `samples` random test images per domain (fewer if a test split is
    smaller; the same number from each), the proxy A-distances on them, and the confusion
    matrix of the whole target test split. In eval mode; the method's mode is restored."""
    require("sklearn")
    n = min(samples, len(pair.source.test), len(pair.target.test))
    source = sample(pair.source.test, n, seed)
    target = sample(pair.target.test, n, seed + 1)
    was_training = method.training
    method.eval()

    def outputs(split: Split, domain: DomainName, features: bool):
        return model_outputs(method, pair, split, domain, batch_size, features)

    try:
        source_features = outputs(source, "source", True).features
        target_features = outputs(target, "target", True).features
        predicted = outputs(pair.target.test, "target", False).logits.argmax(1)
    finally:
        method.train(was_training)
    confusion = confusion_matrix(predicted.cpu(), pair.target.test.labels.cpu(), pair.num_classes)
    return Measurements(
        source, target, source_features.cpu(), target_features.cpu(), confusion,
        proxy_a_distance(source_features.cpu().numpy(), target_features.cpu().numpy(), seed),
        proxy_a_distance(pixels(source, pair.channels), pixels(target, pair.channels), seed))


def tsne(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (openTSNE's defaults: perplexity 30, PCA initialisation) of the rows, after
    PCA to 50 dimensions. openTSNE rather than scikit-learn's TSNE: about 3x faster here
    (`python scripts/bench_tsne.py`)."""
    open_tsne = require("openTSNE")
    require("sklearn")
    from sklearn.decomposition import PCA

    reduced = PCA(min(50, *features.shape), random_state=seed).fit_transform(features)
    # One thread: on this project's shared 2-core CPU two threads took twice the CPU time and
    # twice the wall time of one (scripts/bench_tsne.py).
    # Perplexity at most (N - 1) / 3: openTSNE's limit, reached only by tiny samples.
    perplexity = min(30.0, (len(features) - 1) / 3)
    return np.asarray(open_tsne.TSNE(perplexity=perplexity, random_state=seed, n_jobs=1)
                      .fit(reduced.astype(np.float64)))


@dataclass
class Picture:
    """One run's t-SNE: points, their domain (0 source, 1 target) and class, and a title."""

    title: str
    points: np.ndarray
    domains: np.ndarray
    classes: np.ndarray


def plot_tsne(pictures: Sequence[Picture], path: Path, domain_names: Sequence[str]) -> None:
    """One row per run: points coloured by domain (left) and by class (right)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(pictures), 2, figsize=(9, 4.3 * len(pictures)),
                             squeeze=False)
    for (by_domain, by_class), picture in zip(axes, pictures, strict=True):
        for d, (name, colour) in enumerate(zip(domain_names, ("tab:blue", "tab:red"),
                                               strict=True)):
            at = picture.domains == d
            by_domain.scatter(*picture.points[at].T, s=2, c=colour, alpha=0.5,
                              label=name, rasterized=True)
        by_domain.legend(markerscale=6, fontsize=8, loc="best")
        by_class.scatter(*picture.points.T, s=2, c=picture.classes, cmap="tab10",
                         vmin=-0.5, vmax=9.5, alpha=0.6, rasterized=True)
        for c in np.unique(picture.classes):  # each class's label at its median point
            x, y = np.median(picture.points[picture.classes == c], axis=0)
            by_class.text(x, y, str(c), fontsize=11, weight="bold", ha="center",
                          va="center", bbox={"boxstyle": "round,pad=0.15", "fc": "white",
                                             "alpha": 0.7, "lw": 0})
        by_domain.set_title(f"{picture.title}\nby domain", fontsize=9)
        by_class.set_title(f"{picture.title}\nby class (label at each class's median)",
                           fontsize=9)
        for ax in (by_domain, by_class):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    """A PNG with a 128-colour palette: a third of the size of matplotlib's RGBA file, which
    matters for figures committed to docs/, and the same to the eye."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=90)
    _pyplot().close(fig)
    Image.open(buffer).convert("RGB").quantize(128).save(path, optimize=True)


def plot_confusion(confusion: Tensor, path: Path, title: str) -> None:
    """Rows: true class, columns: predicted; colour: share of the row; numbers: counts."""
    plt = _pyplot()
    counts = confusion.numpy()
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=6,
                color="white" if shares[i, j] > 0.5 else "black")
    ticks = range(len(counts))
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted class", ylabel="true class")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    _save(fig, path)


def write_confusion_csv(confusion: Tensor, path: Path) -> None:
    classes = range(len(confusion))
    lines = ["true\\predicted," + ",".join(map(str, classes))]
    lines += [f"{c}," + ",".join(str(int(v)) for v in confusion[c]) for c in classes]
    path.write_text("\n".join(lines) + "\n")


def write_projector(tb_dir: Path, m: Measurements, domain_names: Sequence[str],
                    channels: int, step: int) -> None:
    """The features of both samples for TensorBoard's projector, with each image as its
    thumbnail and its domain and class as metadata (`tensorboard --logdir <tb_dir>`)."""
    from torch.utils.tensorboard import SummaryWriter

    features = torch.cat([m.source_features, m.target_features])
    images = torch.cat([s.images.expand(-1, channels, -1, -1) for s in (m.source, m.target)])
    metadata = [[domain_names[0], str(int(y))] for y in m.source.labels] + [
        [domain_names[1], str(int(y))] for y in m.target.labels]
    # add_embedding refuses nothing but warns when its folder exists: replace ours.
    shutil.rmtree(tb_dir / f"{step:05d}" / "features", ignore_errors=True)
    with SummaryWriter(log_dir=str(tb_dir)) as writer:
        writer.add_embedding(features, metadata=metadata, metadata_header=["domain", "class"],
                             label_img=images.cpu().float() / 255, global_step=step,
                             tag="features")


def _pyplot() -> Any:
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
