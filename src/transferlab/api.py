"""Trained runs as Python objects, for notebooks and for the `evaluate` and `analyze` commands.

    method = transferlab.load("outputs/2026-11-29/12-00-00")
    logits = transferlab.predict_images(method, uint8_images)         # (N, classes)
    pair = transferlab.run_pair(method, ["data=mnist_usps"])           # another pair
    metrics = transferlab.evaluate_run(method, pair)
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor

from transferlab import diagnostics
from transferlab.checkpoint import BEST, LATEST, load_safely
from transferlab.config import CONFIG_DIR, check_choices, compose
from transferlab.data.domain import Domain, DomainPair, Split, as_input
from transferlab.errors import UserError
from transferlab.evaluation import Evaluator, evaluate
from transferlab.experiment import (
    build_evaluators,
    build_method,
    model_shape,
    resolve_device,
    results_table,
)
from transferlab.files import check_writable, write_json
from transferlab.methods.base import DomainName, Method
from transferlab.run_folder import holder

log = logging.getLogger(__name__)
# `load(run_dir, checkpoint=...)`: the checkpoint files a run folder may hold.
CHECKPOINTS = {"last": LATEST, "best": BEST}
RECORDED = "_recorded_by_run"  # the data group choice that stands for a run's own data config


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """The run's results.json, or {} while the run has not written one yet."""
    path = Path(run_dir) / "results.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None


def load(run_dir: str | Path, checkpoint: str = "last", device: str = "cpu",
         allow_live: bool = False) -> Method:
    """The trained method of a run folder, in eval mode, on `device`.

    `checkpoint` is "last" (`checkpoints/last.pt`: the end of training, or the latest
    checkpoint of an unfinished run) or "best" (`checkpoints/best.pt`, if the run kept one).
    The network is rebuilt from the config stored in the checkpoint itself, the one its weights
    were trained with (a rerun in the same folder with other overrides rewrites results.json
    but is refused before it touches the checkpoint), and from the input shape results.json
    records under `model`, so no data is needed. The returned method also carries `config`
    (that resolved config, a DictConfig), `model_shape` ({in_channels, num_classes,
    image_size}) and `step` (the step the checkpoint was saved at).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run folder {run} does not exist")
    if checkpoint not in CHECKPOINTS:
        raise UserError(f"checkpoint={checkpoint!r} is not valid; valid: "
                        f"{', '.join(CHECKPOINTS)}")
    path = run / "checkpoints" / CHECKPOINTS[checkpoint]
    if not path.exists():
        hint = (" (runs keep one with trainer.keep_best=<validator>)" if checkpoint == "best"
                else "; is it a transferlab run folder?")
        raise UserError(f"{path} not found: {run} has no {checkpoint} checkpoint{hint}")
    state = load_safely(path)
    _check_live(run, state.get("step"), allow_live)
    results = read_results(run)
    config = OmegaConf.create(state.get("config") or results.get("config") or {})
    if "method" not in config:
        raise UserError(f"{path} records no config to rebuild the model from")
    # Runs made before results.json recorded `model` need their data to learn the shape.
    shape = results.get("model") or model_shape(instantiate(config.data))
    method = build_method(config, shape)
    try:
        method.load_state_dict(state["method"])
    except (KeyError, RuntimeError) as e:
        raise UserError(f"{path} does not fit the network its config builds: "
                        f"{str(e).strip().splitlines()[0]}") from None
    method = method.to(resolve_device(device), memory_format=torch.channels_last).eval()
    method.config, method.model_shape, method.step = config, shape, state.get("step")
    return method


def _check_live(run: Path, step: int | None, allow_live: bool) -> None:
    """A run still training (its folder's lock held) has only a mid-run checkpoint: refuse it,
    or with `allow_live` say which step's checkpoint is used."""
    owner = holder(run)
    if owner is None:
        return
    where = f"{run} is still training (process {owner.split()[0]}); its checkpoint is from " \
            f"step {step}"
    if not allow_live:
        raise UserError(f"{where}: wait for the run to end, or pass --allow-live (in Python: "
                        "allow_live=True) to use that checkpoint")
    log.warning(f"{where}: using it (--allow-live)")


@torch.inference_mode()
def predict_images(method: Method, images: Tensor | np.ndarray, domain: DomainName = "target",
                   batch_size: int = 2048) -> Tensor:
    """Class logits (N, classes) for uint8 images (N, C, H, W) or (N, H, W) of `domain`, as
    stored by transferlab's datasets: normalised as the run's network expects, grey images
    repeated to its channels. `method` comes from `load`. `.argmax(1)` gives the classes."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise UserError(f"images must be uint8 (0-255), got {x.dtype}")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    channels, size = method.model_shape["in_channels"], method.model_shape["image_size"]
    if x.dim() != 4 or x.shape[1] not in (1, channels) or tuple(x.shape[-2:]) != (size, size):
        raise UserError(f"images of shape {tuple(x.shape)} do not fit the network: it takes "
                        f"(N, {channels} or 1, {size}, {size})")
    device = next(method.parameters()).device
    normalization = method.network.normalization
    return torch.cat([method.predict(as_input(x[i : i + batch_size].to(device), channels,
                                              normalization), domain).float()
                      for i in range(0, len(x), batch_size)])


def data_config(config: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The run's data config with Hydra `overrides` applied: `data=<pair>` composes
    conf/data/<pair>.yaml afresh; `data.<key>=...` (or `+data.<key>=...`) changes the run's
    recorded data config, or that pair's (e.g. `data.root=...` on another machine)."""
    keys = [o.lstrip("+~").partition("=")[0] for o in overrides]
    bad = [o for o, k in zip(overrides, keys, strict=True)
           if k != "data" and not k.startswith("data.")]
    if bad:
        raise UserError(f"{bad[0]!r} is not a data override; valid: data=<pair>, "
                        "data.<key>=<value>")
    check_choices(list(overrides), CONFIG_DIR)
    # The recorded data config becomes a choice of Hydra's data group, so that overrides of
    # it follow Hydra's grammar and checks exactly as on the training command line.
    ConfigStore.instance().store(group="data", name=RECORDED, node=config.data)
    chosen = [] if "data" in keys else [f"data={RECORDED}"]
    try:
        data = compose([*chosen, *overrides]).data
        return OmegaConf.to_container(data, resolve=True)
    except (HydraException, OmegaConfBaseException) as e:
        # Hydra's hint ("To append to your config use +data.x=1") is on a second line.
        raise UserError(f"bad data override: {' '.join(str(e).split())}") from None


def run_pair(method: Method, overrides: Sequence[str] = (),
             device: str | torch.device | None = None) -> DomainPair:
    """The pair a loaded run trained on, or another by `overrides` (see `data_config`), at
    the run's image size, with grey images repeated to the network's channels, on `device`
    (default: the method's). Refused if its classes differ in number from the network's."""
    shape = method.model_shape
    data = data_config(method.config, overrides)
    size_given = any(o.startswith("data.image_size=") for o in overrides)
    if "image_size" in data and not size_given:
        data["image_size"] = shape["image_size"]
    pair: DomainPair = instantiate(data)
    name = f"{pair.source.name} → {pair.target.name}"
    if pair.num_classes != shape["num_classes"]:
        raise UserError(f"{name} has {pair.num_classes} classes but the run's model predicts "
                        f"{shape['num_classes']}; evaluate on a pair with the same classes")
    if pair.image_size != shape["image_size"]:
        raise UserError(f"{name} has {pair.image_size}px images but the run's model takes "
                        f"{shape['image_size']}px; drop data.image_size or set it to "
                        f"{shape['image_size']}")
    if pair.channels > shape["in_channels"]:
        raise UserError(f"{name} has {pair.channels}-channel images but the run's model takes "
                        f"{shape['in_channels']}")
    return _with_channels(pair, shape["in_channels"]).to(
        device or next(method.parameters()).device)


def _with_channels(pair: DomainPair, channels: int) -> DomainPair:
    """Grey splits viewed as `channels` channels (no copy), so that the pair feeds a network
    trained on colour images exactly as the training loop fed it."""
    def widen(split: Split) -> Split:
        return Split(split.images.expand(-1, channels, -1, -1), split.labels)

    def widen_domain(domain: Domain) -> Domain:
        return replace(domain, train=widen(domain.train), test=widen(domain.test))

    return DomainPair(widen_domain(pair.source), widen_domain(pair.target),
                      widen(pair.source_val), widen(pair.target_val), pair.augment)


def evaluate_run(method: Method, pair: DomainPair,
                 evaluators: Mapping[str, Evaluator] | None = None) -> dict[str, float]:
    """Each of `evaluators` on `pair`; by default those the run measured (its config's
    `evaluation`), so the names are those of results.json's `metrics`."""
    evaluators = evaluators or build_evaluators(method.config)
    return evaluate(method, pair, evaluators, method.config.trainer.eval_batch_size)


def evaluate_folder(run_dir: str | Path, overrides: Sequence[str] = (),
                    checkpoint: str = "last", device: str = "cpu",
                    allow_live: bool = False) -> tuple[dict[str, Any], str]:
    """Evaluate a run folder's model (see `load`) on its pair or another (`run_pair`) with the
    evaluators it measured: the record `transferlab.evaluate` writes as evaluate.json, and the
    run's console table for it."""
    start = time.time()
    method = load(run_dir, checkpoint, device, allow_live)
    pair = run_pair(method, overrides)
    evaluators = build_evaluators(method.config)
    metrics = evaluate_run(method, pair, evaluators)
    record = {"run": str(run_dir), "checkpoint": checkpoint, "step": method.step,
              "overrides": list(overrides),
              "domains": {"source": pair.source.name, "target": pair.target.name},
              "metrics": metrics, "evaluators": {n: e.describe() for n, e in evaluators.items()},
              "wall_time_s": round(time.time() - start, 3)}
    return record, results_table(pair, evaluators, metrics)


@dataclass
class RunAnalysis:
    run_dir: Path
    folder: Path        # where its files went
    summary: dict[str, Any]
    picture: diagnostics.Picture


def analyze_run(run_dir: str | Path, out: str | Path | None = None,
                samples: int = diagnostics.SAMPLES, seed: int = 0,
                overrides: Sequence[str] = (), checkpoint: str = "last",
                device: str = "cpu", allow_live: bool = False) -> RunAnalysis:
    """Load a run (see `transferlab.load`), measure it on its pair (or another, by data
    `overrides`), and write analysis.json, tsne.png, confusion.png, confusion.csv and the
    projector files under tb/ into `out` (default: the run folder)."""
    diagnostics.require_extra()
    start, cpu_start = time.perf_counter(), time.process_time()
    run = Path(run_dir)
    method = load(run, checkpoint, device, allow_live)
    pair = run_pair(method, overrides)
    m = diagnostics.measure(method, pair, samples, seed, method.config.trainer.eval_batch_size)
    measured = time.perf_counter()
    points = diagnostics.tsne(torch.cat([m.source_features, m.target_features]).numpy(), seed)
    drawn = time.perf_counter()

    name = read_results(run).get("choices", {}).get("method") or type(method).__name__
    if run.resolve().name != name:
        name = f"{name} ({run.resolve().name})"
    summary = m.summary()
    domains = (pair.source.name, pair.target.name)
    picture = diagnostics.Picture(f"{name}: PAD {summary['proxy_a_distance']:.2f}, "
                      f"target acc {summary['target_acc']:.3f}", points,
                      np.r_[np.zeros(len(m.source), int), np.ones(len(m.target), int)],
                      torch.cat([m.source.labels, m.target.labels]).cpu().numpy())
    folder = Path(out) if out else run
    folder.mkdir(parents=True, exist_ok=True)
    diagnostics.plot_tsne([picture], folder / "tsne.png", domains)
    diagnostics.plot_confusion(m.confusion, folder / "confusion.png",
                   f"{name}: {domains[1]} test, accuracy "
                   f"{summary['target_acc']:.4f}")
    diagnostics.write_confusion_csv(m.confusion, folder / "confusion.csv")
    diagnostics.write_projector(folder / "tb", m, domains, pair.channels, method.step or 0)
    record = {"run": str(run), "checkpoint": checkpoint, "step": method.step,
              "domains": {"source": domains[0], "target": domains[1]}, "overrides":
              list(overrides), "seed": seed, **summary,
              "proxy_a_distance_classifier": "LinearSVC on standardised inputs, C in "
              f"{diagnostics.PAD_C} by 3-fold CV on half of each sample, balanced error on "
              "the other half",
              "tsne": "openTSNE defaults (perplexity 30, PCA init) after PCA to 50 dims",
              "time_s": {"measure": round(measured - start, 2),
                         "tsne": round(drawn - measured, 2),
                         "total": round(time.perf_counter() - start, 2)},
              # CPU seconds of this process (all its threads): on a shared machine the wall
              # times above grow with the load, this does not.
              "cpu_s": round(time.process_time() - cpu_start, 2)}
    write_json(folder / "analysis.json", record)
    return RunAnalysis(run, folder, record, picture)


def analyze_runs(run_dirs: Sequence[str | Path], out: str | Path | None = None,
                 samples: int = diagnostics.SAMPLES, seed: int = 0, overrides: Sequence[str] = (),
                 checkpoint: str = "last", device: str = "cpu", allow_live: bool = False
                 ) -> tuple[list[RunAnalysis], Path | None]:
    """`analyze_run` for each run; with several, also one side-by-side t-SNE PNG (one row per
    run), written to `out` or to the runs' common parent folder. With `out` and several runs,
    each run's files go to `out/<run folder name>`. Every folder it will write is checked
    first, so that nothing is computed for files that cannot be written."""
    runs = [Path(r) for r in run_dirs]
    folders: list[Path | None] = [Path(out) if out else None] * len(runs)
    if out and len(runs) > 1:
        names = [r.resolve().name for r in runs]
        folders = [Path(out) / (n if names.count(n) == 1 else f"{n}-{i}")
                   for i, n in enumerate(names)]
    for run, folder in zip(runs, folders, strict=True):
        check_writable(folder or run, "the folder", "write the analysis elsewhere with --out DIR")
    results = [analyze_run(r, f, samples, seed, overrides, checkpoint, device, allow_live)
               for r, f in zip(runs, folders, strict=True)]
    if len(results) < 2:
        return results, None
    where = Path(out) if out else Path(os.path.commonpath([r.resolve() for r in runs]))
    domains = tuple(results[0].summary["domains"].values())
    path = where / diagnostics.SIDE_BY_SIDE
    diagnostics.plot_tsne([r.picture for r in results], path, domains)
    return results, path
