"""The Hydra entrypoint: compose the config, build data, network and method, train, report."""

from __future__ import annotations

import logging
import os
import platform
import random
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
import numpy as np
import torch
import torchvision
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

import transferlab
from transferlab import stops, sweeps
from transferlab.allocator import tune_malloc
from transferlab.checkpoint import Checkpointer
from transferlab.config import check_choices, objective_direction, register_resolvers, validate
from transferlab.data.domain import DomainPair, as_input
from transferlab.denormals import flush_denormals
from transferlab.errors import UserError, find_user_error
from transferlab.evaluation import Evaluator
from transferlab.evaluation.base import REPORTS, TEST_SPLITS
from transferlab.hparams import log_hparams
from transferlab.memory import check_batch_fits, out_of_memory_explained
from transferlab.methods.base import Method
from transferlab.overrides import check_keys
from transferlab.provenance import code_version, data_fingerprint, machine
from transferlab.run_folder import RunFolder, check_writable, output_folder, write_predictions
from transferlab.stage_cache import StageCache
from transferlab.stage_cache import default_folder as default_stage_folder
from transferlab.stops import graceful_stops
from transferlab.train import TrainerConfig, fit, training_precision

DEBUG_ENV = "TRANSFERLAB_DEBUG"
# Hydra's flags that show something and run nothing: no run folder is written.
SHOW_ONLY = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i",
             "--shell-completion", "-sc"}
log = logging.getLogger(__name__)


def _config_dir() -> str:
    packaged = Path(__file__).parent / "conf"  # inside an installed wheel
    return str(packaged if packaged.is_dir() else Path(__file__).parents[2] / "conf")


CONFIG_DIR = _config_dir()
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
    return {"transferlab": transferlab.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version()}


def build(cfg: DictConfig, device: torch.device) -> tuple[DomainPair, Method]:
    pair: DomainPair = instantiate(cfg.data).to(device)
    return pair, build_method(cfg, model_shape(pair)).to(device,
                                                          memory_format=torch.channels_last)


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
        overrides: Sequence[str] = ()) -> dict[str, float]:
    """Train one configuration in `out_dir` (results.json, tb/, checkpoints/), resuming its
    checkpoint if it has one; a completed run there is only reported again. Who may write
    there, and when results.json is written: see transferlab.run_folder."""
    base = {"choices": choices, "seed": cfg.seed,
            "config": OmegaConf.to_container(cfg, resolve=True), "versions": versions()}
    with RunFolder(out_dir, base, overrides) as folder, graceful_stops() as stop:
        log.info(f"run folder: {out_dir}")
        done = folder.completed()
        if done:
            scores = " ".join(f"{k}={v:.4f}" for k, v in done["metrics"].items())
            log.info(f"completed earlier, at step {done['steps']}: {scores}; its results.json "
                     "is kept as it is")
            return done["metrics"]
        validate(cfg)
        device = resolve_device(cfg.device)
        trainer = TrainerConfig(**{k: cfg.trainer[k] for k in TrainerConfig.__dataclass_fields__})
        keep_best = cfg.trainer.keep_best
        checkpointer = Checkpointer(out_dir / "checkpoints", trainer.checkpoint_every,
                                    base["config"], keep_best,
                                    keep_best is None
                                    or objective_direction(keep_best, cfg) == "maximize")
        resume = checkpointer.load()
        stage_cache = (StageCache(Path(cfg.trainer.stage_cache or default_stage_folder()),
                                  origin=str(out_dir)) if cfg.trainer.reuse_stages else None)
        if resume:
            folder.check_resumable(checkpointer.path, resume["config"])
            log.info(f"resuming from {checkpointer.path} at step {resume['step']}")
        folder.begin(resume["history"] if resume else [])
        # Before the data is loaded: the thresholds govern every allocation after this.
        folder.update(malloc_tuned=tune_malloc(cfg.trainer.malloc_tuning))

        if cfg.trainer.num_threads:
            torch.set_num_threads(cfg.trainer.num_threads)
        # Before any parallel work, so that torch's threads inherit the flags when they start.
        folder.update(denormals_flushed=flush_denormals(cfg.trainer.flush_denormal))
        if cfg.analysis.at_end:
            from transferlab.analysis import require

            require("sklearn")  # now, not after training
        seed_everything(cfg.seed, cfg.trainer.deterministic)
        pair, method = build(cfg, device)
        folder.update(machine=machine(device), code_version=code_version(),
                      data_fingerprint=data_fingerprint(pair.splits()))
        sample = as_input(next(pair.evaluation_batches(pair.source.train, 1)),
                          method.network.in_channels, method.network.normalization)
        check_batch_fits(method.network, sample, trainer.batch_size)
        evaluators = build_evaluators(cfg)
        folder.update(model=model_shape(pair), uses_target_labels=method.uses_target_labels,
                      precision={"train": training_precision(cfg.trainer.precision, device),
                                 "eval": "fp32"},
                      evaluators={n: e.describe() for n, e in evaluators.items()})
        # purge_step drops events logged after the checkpoint by the run that was cut short;
        # those of the checkpoint's own step were logged before it was saved, and stay.
        with SummaryWriter(log_dir=str(out_dir / "tb"),
                           purge_step=resume["step"] + 1 if resume else None) as writer, \
                out_of_memory_explained(trainer.batch_size):
            def log_scalars(scalars: dict[str, float], step: int) -> None:
                for tag, value in scalars.items():
                    writer.add_scalar(tag, value, step)

            history = fit(method, pair, trainer, cfg.seed, log_scalars, evaluators,
                          checkpointer, resume, stop=stop,
                          on_evaluation=lambda history, predictions: (
                              write_predictions(out_dir, predictions),
                              folder.update(history=history)),
                          stage_cache=stage_cache)
        metrics = {k: history[-1][k] for k in evaluators}
        if cfg.analysis.at_end:
            from transferlab.analysis import measure

            folder.update(analysis=measure(method, pair, cfg.analysis.samples, cfg.seed,
                                           trainer.eval_batch_size).summary())
        log_hparams(out_dir / "tb", base["config"], choices, metrics)
        folder.update(status="completed", metrics=metrics, history=history,
                      steps=history[-1]["step"], device=str(device),
                      domains={"source": pair.source.name, "target": pair.target.name},
                      method=method.results(), best=checkpointer.best,
                      stage_cache=stage_cache.events if stage_cache else "off")
        log.info(results_table(pair, evaluators, metrics))
        log.info(f"run folder: {out_dir}")
        return metrics


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    """One job. Returns the `objective` metric, which sweepers such as Optuna optimise."""
    hc = HydraConfig.get()
    choices = {g: hc.runtime.choices[g] for g in ("data", "backbone", "method")}
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        return float(run(cfg, Path(hc.runtime.output_dir), choices,
                         hc.overrides.task)[cfg.objective])
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        if stops.requeues(signum):
            log.warning(f"{e}; submitit requeues the job")
            try:
                stops.hand_over(signum)  # exits here when the job is requeued
            except Exception as refusal:  # submitit's UncompletedJobError
                log.error(f"error: not requeued: {refusal}")
        # A sweep resumes as a whole: every job continues from its own checkpoint.
        again = (f"hydra.sweep.dir={hc.sweep.dir}" if multirun
                 else f"hydra.run.dir={hc.runtime.output_dir}")
        log.warning(f"\n{e or 'interrupted'}. To resume, rerun the same command with {again}")
        if multirun and stops.submitit_signal():
            return None  # one job of a submitit array: the others go on
        sys.exit(stops.exit_code(signum))
    except Exception as e:
        error = find_user_error(e)
        if os.environ.get(DEBUG_ENV) or (error is None and not multirun):
            raise
        if multirun:
            # run() recorded the failure in results.json. Re-raising would make Hydra's
            # sweepers stop after this batch (Optuna: after this trial); returning None lets
            # the other jobs run, Optuna marks the trial failed, and sweeps.SweepReport lists
            # the job at the end. Bugs keep their traceback, in the job's log.
            if error is None:
                log.exception("job failed")
            log.error(f"error: {hc.runtime.output_dir}: {sweeps.one_line(error or e)}")
            return None
        log.error(f"error: {error}")
        sys.exit(2)


def main() -> None:
    """Console script. `--debug` (or TRANSFERLAB_DEBUG=1) shows full tracebacks."""
    if "--version" in sys.argv:  # Hydra's own --version names Hydra's
        print(f"transferlab {transferlab.__version__} (hydra-core {hydra.__version__}, "
              f"torch {torch.__version__})")
        return
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
        os.environ[DEBUG_ENV] = "1"
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        check_choices(sys.argv[1:], CONFIG_DIR)
        check_keys(sys.argv[1:], CONFIG_DIR)
        if not any(a.split("=")[0] in SHOW_ONLY for a in sys.argv[1:]):
            check_writable(output_folder(sys.argv[1:]))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        try:
            hydra_main()
        finally:
            sys.stdout.flush()  # here, where a closed pipe can still be caught
    except BrokenPipeError:
        # `transferlab --help | head`: the reader has gone; end quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
