"""The Hydra entrypoint: compose the config, build data, network and method, train, report."""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

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
from transferlab import sweeps
from transferlab.allocator import tune_malloc
from transferlab.checkpoint import Checkpointer
from transferlab.config import check_choices, register_resolvers, validate
from transferlab.data.domain import DomainPair
from transferlab.errors import UserError, find_user_error
from transferlab.hparams import log_hparams
from transferlab.methods.base import Method
from transferlab.train import TrainerConfig, fit

DEBUG_ENV = "TRANSFERLAB_DEBUG"


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


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def versions() -> dict[str, str]:
    return {"transferlab": transferlab.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version()}


def build(cfg: DictConfig, device: torch.device) -> tuple[DomainPair, Method]:
    pair: DomainPair = instantiate(cfg.data).to(device)
    return pair, build_method(cfg, pair, device)


def build_method(cfg: DictConfig, pair: DomainPair, device: torch.device) -> Method:
    """The configured method, with a network shaped for `pair`, on `device`."""
    network = instantiate(cfg.backbone, in_channels=pair.channels,
                          num_classes=pair.num_classes, image_size=pair.image_size)
    method: Method = instantiate(
        cfg.method, network=network, optimizer=instantiate(cfg.trainer.optimizer),
        steps=cfg.trainer.steps, seed=cfg.seed, lr_alpha=cfg.trainer.lr_schedule.alpha,
        lr_beta=cfg.trainer.lr_schedule.beta)
    return method.to(device, memory_format=torch.channels_last)


def print_table(pair: DomainPair, metrics: dict[str, float]) -> None:
    rows = [("source", pair.source.name, "test", metrics["source_acc"]),
            ("source", pair.source.name, "val", metrics["source_val_acc"]),
            ("target", pair.target.name, "test", metrics["target_acc"])]
    print(f"\n{'domain':<8}{'dataset':<12}{'split':<7}{'accuracy':>9}")
    for role, name, split, acc in rows:
        print(f"{role:<8}{name:<12}{split:<7}{acc:>9.4f}")


def run(cfg: DictConfig, out_dir: Path, choices: dict[str, str]) -> dict[str, float]:
    """Train one configuration; write results.json and TensorBoard events to `out_dir`."""
    start = time.time()
    record: dict[str, Any] = {
        "status": "running", "choices": choices, "seed": cfg.seed,
        "config": OmegaConf.to_container(cfg, resolve=True), "versions": versions()}
    results = out_dir / "results.json"
    try:
        validate(cfg)
        # Before the data is loaded: the thresholds govern every allocation after this.
        record["malloc_tuned"] = tune_malloc(cfg.trainer.malloc_tuning)
        if cfg.trainer.num_threads:
            torch.set_num_threads(cfg.trainer.num_threads)
        device = resolve_device(cfg.device)
        seed_everything(cfg.seed, cfg.trainer.deterministic)
        pair, method = build(cfg, device)
        trainer = TrainerConfig(**{k: cfg.trainer[k] for k in TrainerConfig.__dataclass_fields__})
        checkpointer = Checkpointer(out_dir / "checkpoints", trainer.checkpoint_every,
                                    record["config"])
        resume = checkpointer.load()
        if resume:
            print(f"resuming from {checkpointer.path} at step {resume['step']}")
        # purge_step drops events logged after the checkpoint by the run that was cut short.
        with SummaryWriter(log_dir=str(out_dir / "tb"),
                           purge_step=resume["step"] if resume else None) as writer:
            def log(scalars: dict[str, float], step: int) -> None:
                for tag, value in scalars.items():
                    writer.add_scalar(tag, value, step)

            history = fit(method, pair, trainer, cfg.seed, log, checkpointer, resume)
        metrics = {k: history[-1][k] for k in ("source_acc", "target_acc", "source_val_acc")}
        log_hparams(out_dir / "tb", record["config"], choices, metrics)
        record.update(status="completed", metrics=metrics, history=history,
                      steps=history[-1]["step"], device=str(device),
                      domains={"source": pair.source.name, "target": pair.target.name},
                      method=method.results())
        print_table(pair, metrics)
        return metrics
    except BaseException as e:
        cause = find_user_error(e) or e
        record.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                      error=f"{type(cause).__name__}: {cause}")
        raise
    finally:
        record["wall_time_s"] = round(time.time() - start, 3)
        write_json(results, record)


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    """One job. Returns the `objective` metric, which sweepers such as Optuna optimise."""
    hc = HydraConfig.get()
    choices = {g: hc.runtime.choices[g] for g in ("data", "backbone", "method")}
    try:
        return float(run(cfg, Path(hc.runtime.output_dir), choices)[cfg.objective])
    except KeyboardInterrupt as e:
        # A sweep resumes as a whole: every job continues from its own checkpoint.
        again = (f"hydra.sweep.dir={hc.sweep.dir}" if hc.mode == RunMode.MULTIRUN
                 else f"hydra.run.dir={hc.runtime.output_dir}")
        print(f"\n{e or 'interrupted'}. To resume, rerun the same command with {again}",
              file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        error = find_user_error(e)
        multirun = hc.mode == RunMode.MULTIRUN
        if os.environ.get(DEBUG_ENV) or (error is None and not multirun):
            raise
        if multirun:
            # run() recorded the failure in results.json. Re-raising would make Hydra's
            # sweepers stop after this batch (Optuna: after this trial); returning None lets
            # the other jobs run, Optuna marks the trial failed, and sweeps.SweepReport lists
            # the job at the end. Bugs keep their traceback, in the job's log.
            if error is None:
                logging.getLogger(__name__).exception("job failed")
            print(f"error: {hc.runtime.output_dir}: {sweeps.one_line(error or e)}",
                  file=sys.stderr)
            return None
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Console script. `--debug` (or TRANSFERLAB_DEBUG=1) shows full tracebacks."""
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
        os.environ[DEBUG_ENV] = "1"
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        check_choices(sys.argv[1:], CONFIG_DIR)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    hydra_main()
