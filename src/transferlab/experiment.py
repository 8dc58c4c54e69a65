"""The composition root: from a composed config to a trained, evaluated and recorded run.

`run(cfg, out_dir, choices)` is what `python -m transferlab` does for each job; the Hydra
command (`transferlab.cli`) only adds exit codes, and `transferlab.api`, the scripts and the
tests build their pairs, methods and evaluators with the functions here. Nothing here imports
a command.
"""

from __future__ import annotations

import logging
import os
import platform
import random
from collections.abc import Sequence
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from transferlab.allocator import tune_malloc
from transferlab.checkpoint import Checkpointer
from transferlab.config import (
    backbone_input_size,
    objective_direction,
    register_resolvers,
    validate,
)
from transferlab.data.domain import DomainPair, as_input
from transferlab.denormals import flush_denormals
from transferlab.errors import UserError
from transferlab.evaluation import Evaluator
from transferlab.evaluation.base import TEST_SPLITS
from transferlab.hparams import log_hparams
from transferlab.memory import check_batch_fits, out_of_memory_explained
from transferlab.methods.base import Method
from transferlab.provenance import code_version, data_fingerprint, machine
from transferlab.rules import REPORTS
from transferlab.run_folder import RunFolder, write_predictions
from transferlab.stage_cache import StageCache
from transferlab.stage_cache import default_folder as default_stage_folder
from transferlab.stops import StopRequest, graceful_stops
from transferlab.train import Predictions, TrainerConfig, fit, training_precision
from transferlab.version import __version__

log = logging.getLogger(__name__)
register_resolvers()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r} is not a torch device; valid: auto, cpu, cuda, "
                        "cuda:N, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name!r} but CUDA is not available here; use device=auto")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this before its first call to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def versions() -> dict[str, str]:
    """The versions a run records (torchvision's as installed: read, not imported)."""
    return {"transferlab": __version__, "torch": torch.__version__,
            "torchvision": package_version("torchvision"), "python": platform.python_version()}


def build(cfg: DictConfig, device: torch.device) -> tuple[DomainPair, Method]:
    """The pair and the untrained method of `cfg`, on `device` (compiled with
    `trainer.compile`)."""
    pair: DomainPair = instantiate(cfg.data).to(device)
    method = build_method(cfg, model_shape(pair)).to(device, memory_format=torch.channels_last)
    if OmegaConf.select(cfg, "trainer.compile", default=False):
        compile_networks(method, cfg.trainer.compile_mode, cfg.trainer.compile_backend)
    return pair, method


def compile_networks(method: Method, mode: str | None, backend: str) -> None:
    """torch.compile, in place, the networks whose forward the method calls: the classifier's
    encoder and head, and every other network it holds (discriminators, ADDA's target encoder,
    MCD's second head). In place, their state-dict keys, and so checkpoints, stay as they are;
    what the update does around them (losses, backward, the optimizer step) runs as it is."""
    import torch._inductor.config as inductor

    inductor.deterministic = torch.are_deterministic_algorithms_enabled()
    others = [m for name, m in method.named_children() if name != "network"]
    for module in [method.network.encoder, method.network.head, *others]:
        if any(True for _ in module.parameters()):
            module.compile(mode=mode, backend=backend)


def build_method(cfg: DictConfig, shape: dict[str, int]) -> Method:
    """The method and its network, untrained; `shape` is `model_shape(pair)`."""
    network = instantiate(cfg.backbone, **shape)
    return instantiate(
        cfg.method, network=network, optimizer=instantiate(cfg.trainer.optimizer),
        steps=cfg.trainer.steps, seed=cfg.seed, lr_alpha=cfg.trainer.lr_schedule.alpha,
        lr_beta=cfg.trainer.lr_schedule.beta)


def model_shape(pair: DomainPair) -> dict[str, int]:
    """What building the network needs from the data; recorded so that `transferlab.load`
    can rebuild a trained model without the data."""
    return {"in_channels": pair.channels, "num_classes": pair.num_classes,
            "image_size": pair.image_size}


def build_evaluators(cfg: DictConfig) -> dict[str, Evaluator]:
    """The reports, then the configured validators, by name. Only the reports read a test
    split: a validator that declares one is refused."""
    evaluators = {name: instantiate(cfg.evaluation.evaluators[name])
                  for name in dict.fromkeys([*REPORTS, *cfg.evaluation.validators])}
    for name, e in evaluators.items():
        tests = [s for s in e.reads if s in TEST_SPLITS]
        if tests and name not in REPORTS:
            raise UserError(f"evaluation.evaluators.{name} reads {', '.join(tests)}: only the "
                            f"reports ({', '.join(REPORTS)}) may read a test split; validators "
                            "read source_val and target_val")
    return evaluators


def results_table(pair: DomainPair, evaluators: dict[str, Evaluator],
                  metrics: dict[str, float]) -> str:
    """The per-domain table a run ends with (and `transferlab.evaluate` prints)."""
    lines = [f"\n{pair.source.name} → {pair.target.name}",
             f"{'metric':<16}{'value':>9}  {'reads':<24}{'labels':<8}better"]
    for name, e in evaluators.items():
        lines.append(f"{name:<16}{metrics[name]:>9.4f}  {', '.join(e.reads):<24}"
                     f"{e.labels or '—':<8}{'higher' if e.higher_is_better else 'lower'}")
    return "\n".join(lines)


def run(cfg: DictConfig, out_dir: Path, choices: dict[str, str],
        overrides: Sequence[str] = (), in_sweep: bool = False) -> dict[str, float]:
    """Train one configuration in `out_dir` (results.json, tb/, checkpoints/), resuming its
    checkpoint if it has one; a completed run there is only reported again. Who may write
    there, and when results.json is written: see transferlab.run_folder (`in_sweep`: a
    refusal is recorded for the sweep's report)."""
    base = {"choices": choices, "seed": cfg.seed,
            "config": OmegaConf.to_container(cfg, resolve=True), "versions": versions()}
    with RunFolder(out_dir, base, overrides, in_sweep) as folder, graceful_stops() as stop:
        log.info(f"run folder: {out_dir}")
        if done := folder.completed():
            scores = " ".join(f"{k}={v:.4f}" for k, v in done["metrics"].items())
            log.info(f"completed earlier, at step {done['steps']}: {scores}; its results.json "
                     "is kept as it is")
            return done["metrics"]
        validate(cfg)
        device = resolve_device(cfg.device)
        checkpointer = _checkpointer(cfg, out_dir, base["config"])
        resume = _resume(checkpointer, folder)
        _prepare_process(cfg, folder)
        pair, method = build(cfg, device)
        evaluators = build_evaluators(cfg)
        _record_setup(folder, cfg, pair, method, evaluators, device)
        history, stage_cache = _train(cfg, out_dir, folder, pair, method, evaluators,
                                      checkpointer, resume, stop)
        metrics = {k: history[-1][k] for k in evaluators}
        _record_end(folder, cfg, out_dir, pair, method, history, metrics, checkpointer,
                    stage_cache, device)
        log.info(results_table(pair, evaluators, metrics))
        log.info(f"run folder: {out_dir}")
        return metrics


def _checkpointer(cfg: DictConfig, out_dir: Path, config: dict[str, Any]) -> Checkpointer:
    keep_best = cfg.trainer.keep_best
    higher = keep_best is None or objective_direction(keep_best, cfg) == "maximize"
    return Checkpointer(out_dir / "checkpoints", cfg.trainer.checkpoint_every, config,
                        keep_best, higher)


def _resume(checkpointer: Checkpointer, folder: RunFolder) -> dict[str, Any] | None:
    """The checkpoint to continue from (refused if it trains another config), and the record
    begun with its history."""
    resume = checkpointer.load()
    if resume:
        folder.check_resumable(checkpointer.path, resume["config"])
        log.info(f"resuming from {checkpointer.path} at step {resume['step']}")
    folder.begin(resume["history"] if resume else [])
    return resume


def _prepare_process(cfg: DictConfig, folder: RunFolder) -> None:
    """Process-wide settings, in the order they must come: the allocator before the data is
    loaded (its thresholds govern every allocation after), threads, then subnormal flushing
    before any parallel work (torch's threads inherit the flags when they start), then seeds."""
    folder.update(malloc_tuned=tune_malloc(cfg.trainer.malloc_tuning))
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    folder.update(denormals_flushed=flush_denormals(cfg.trainer.flush_denormal))
    if cfg.analysis.at_end:
        from transferlab.diagnostics import require

        require("sklearn")  # now, not after training
    seed_everything(cfg.seed, cfg.trainer.deterministic)


def _record_setup(folder: RunFolder, cfg: DictConfig, pair: DomainPair, method: Method,
                  evaluators: dict[str, Evaluator], device: torch.device) -> None:
    sample = as_input(next(pair.evaluation_batches(pair.source.train, 1)),
                      method.network.in_channels, method.network.normalization)
    check_batch_fits(method.network, sample, cfg.trainer.batch_size)
    warn_of_size_mismatch(cfg, pair.image_size)
    folder.update(machine=machine(device), code_version=code_version(),
                  data_fingerprint=data_fingerprint(pair.splits()),
                  model=model_shape(pair), uses_target_labels=method.uses_target_labels,
                  precision={"train": training_precision(cfg.trainer.precision, device),
                             "eval": "fp32"},
                  evaluators={n: e.describe() for n, e in evaluators.items()})


def warn_of_size_mismatch(cfg: DictConfig, side: int) -> None:
    """Once, where the data's image side is far from the one the backbone is made for: a
    larger side multiplies every step's compute, a much smaller one starves the backbone."""
    expected = backbone_input_size(cfg)
    if expected / 2 <= side <= expected * 2:
        return
    cost = (side / expected) ** 2
    log.warning(f"backbone {cfg.backbone._target_.rsplit('.', 1)[-1]} is made for {expected} px "
                f"images but the data gives it {side} px: each step computes about "
                f"{cost:.2g}× what its own size needs (data.augment.size, data.storage_size "
                "and data.image_size set the size)")


def _train(cfg: DictConfig, out_dir: Path, folder: RunFolder, pair: DomainPair,
           method: Method, evaluators: dict[str, Evaluator], checkpointer: Checkpointer,
           resume: dict[str, Any] | None, stop: StopRequest
           ) -> tuple[list[dict], StageCache | None]:
    """`fit`, with TensorBoard, the record and the predictions file kept up to date."""
    trainer = TrainerConfig(**{k: cfg.trainer[k] for k in TrainerConfig.__dataclass_fields__})
    stage_cache = (StageCache(Path(cfg.trainer.stage_cache or default_stage_folder()),
                              origin=str(out_dir)) if cfg.trainer.reuse_stages else None)

    def on_evaluation(history: list[dict], predictions: Predictions) -> None:
        write_predictions(out_dir, predictions)
        folder.update(history=history)

    # purge_step drops events logged after the checkpoint by the run that was cut short; those
    # of the checkpoint's own step were logged before it was saved, and stay.
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(out_dir / "tb"),
                       purge_step=resume["step"] + 1 if resume else None) as writer, \
            out_of_memory_explained(trainer.batch_size):
        def log_scalars(scalars: dict[str, float], step: int) -> None:
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, step)

        history = fit(method, pair, trainer, cfg.seed, log_scalars, evaluators, checkpointer,
                      resume, stop=stop, on_evaluation=on_evaluation, stage_cache=stage_cache)
    return history, stage_cache


def _record_end(folder: RunFolder, cfg: DictConfig, out_dir: Path, pair: DomainPair,
                method: Method, history: list[dict], metrics: dict[str, float],
                checkpointer: Checkpointer, stage_cache: StageCache | None,
                device: torch.device) -> None:
    if cfg.analysis.at_end:
        from transferlab.diagnostics import measure

        folder.update(analysis=measure(method, pair, cfg.analysis.samples, cfg.seed,
                                       cfg.trainer.eval_batch_size).summary())
    log_hparams(out_dir / "tb", folder.base["config"], folder.base["choices"], metrics)
    folder.update(status="completed", metrics=metrics, history=history,
                  steps=history[-1]["step"], device=str(device),
                  domains={"source": pair.source.name, "target": pair.target.name},
                  method=method.results(), best=checkpointer.best,
                  stage_cache=stage_cache.events if stage_cache else "off")
