"""The training loop and the per-domain evaluation. Methods plug in through `Method.stages()`."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from transferlab.checkpoint import Checkpointer, set_rng_state
from transferlab.data.augment import Augment
from transferlab.data.domain import BatchStream, DomainPair, as_input
from transferlab.errors import UserError
from transferlab.evaluation import Evaluator
from transferlab.evaluation.base import run_evaluation
from transferlab.methods.base import Method, Stage
from transferlab.stage_cache import Logged, StageCache
from transferlab.stops import Interrupted, StopRequest

Metrics = dict[str, float]
Log = Callable[[dict[str, float], int], None]
# step → the target_val class probabilities (float16, on the CPU) of that step's evaluation
Predictions = dict[int, Tensor]
KEPT = "target_val"


@dataclass
class TrainerConfig:
    """The loop's settings (`trainer.*`); how many steps each stage runs is the method's."""

    batch_size: int
    eval_every: int
    eval_batch_size: int = 256
    log_every: int = 50
    checkpoint_every: int = 1000
    progress_bar: bool = True
    precision: str = "auto"  # training: auto = bf16 autocast on CUDA, fp32 elsewhere; or fp32, bf16


def training_precision(precision: str, device: torch.device) -> str:
    """The precision the updates run in ("fp32" or "bf16"); evaluation is always fp32."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


class NonFiniteLoss(UserError):
    pass


class FiniteCheck:
    """Remembers the first step whose logged values were NaN or infinite. Tensors are checked
    on their device, so the loop need not wait for the device every step; `raise_if_bad`
    syncs and reports. Stages log different names, and a method may log different names
    from step to step: each distinct set of names gets an id that the record keeps."""

    def __init__(self) -> None:
        self.first_bad: Tensor | None = None  # (step, name-set id, index in it); -1: none
        self.name_sets: list[tuple[str, ...]] = []
        self.host_bad: tuple[int, str] | None = None  # the first bad plain number

    def update(self, scalars: Mapping[str, Tensor | float] | None, step: int) -> None:
        tensors = {k: v for k, v in (scalars or {}).items() if isinstance(v, Tensor)}
        if self.host_bad is None:
            self.host_bad = next(((step, k) for k, v in (scalars or {}).items()
                                  if not isinstance(v, Tensor) and not math.isfinite(v)), None)
        if not tensors:
            return
        names = tuple(tensors)
        if names not in self.name_sets:
            self.name_sets.append(names)
        values = torch.stack([v.detach().float().reshape(()) for v in tensors.values()])
        if self.first_bad is None:
            self.first_bad = torch.full((3,), -1, dtype=torch.long, device=values.device)
        bad = ~values.isfinite()
        found = torch.stack([torch.full_like(self.first_bad[0], step),
                             torch.full_like(self.first_bad[0], self.name_sets.index(names)),
                             bad.int().argmax()])
        self.first_bad = torch.where(bad.any() & (self.first_bad[0] < 0), found,
                                     self.first_bad)

    def raise_if_bad(self, checkpoint: str | None) -> None:
        found = [self.host_bad] if self.host_bad else []
        if self.first_bad is not None and self.first_bad[0] >= 0:
            step, which, index = self.first_bad.tolist()
            found.append((step, self.name_sets[which][index]))
        if found:
            step, name = min(found)
            kept = (f"last good checkpoint: {checkpoint}" if checkpoint
                    else "no checkpoint was written yet")
            raise NonFiniteLoss(f"{name} became NaN or infinite at step {step}; stopped; {kept}")


def fit(method: Method, pair: DomainPair, cfg: TrainerConfig, seed: int, log: Log,
        evaluators: Mapping[str, Evaluator], checkpointer: Checkpointer | None = None,
        resume: dict[str, Any] | None = None, stop: StopRequest | None = None,
        on_evaluation: Callable[[list[dict], Predictions], None] | None = None,
        stage_cache: StageCache | None = None) -> list[dict]:
    """Run every stage of `method` (from `resume`, a checkpoint, if given); return the
    evaluation history. `log(scalars, step)` receives losses, learning rates and the
    evaluators' values (as `val/<name>`); `on_evaluation(history, predictions)` the history
    and every evaluation's target_val class probabilities after each evaluation. Once `stop`
    is set (by a signal, see transferlab.stops), the loop finishes its step, saves a
    checkpoint and raises `Interrupted`. With a `stage_cache`, stages the method marks
    reusable are loaded from it when already trained, and stored in it when trained here."""
    stages = method.stages(pair.training_view(method.uses_target_labels))
    total = sum(s.steps for s in stages)
    step, history = (resume["step"], resume["history"]) if resume else (0, [])
    predictions: Predictions = dict(resume.get("predictions") or {}) if resume else {}
    if resume:
        method.load_state_dict(resume["method"])
        set_rng_state(resume["rng"])
    finite = FiniteCheck()
    device = pair.device
    precision = training_precision(cfg.precision, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    channels, normalization = method.network.in_channels, method.network.normalization
    start = time.perf_counter() - (history[-1]["time_s"] if history else 0.0)
    stage_start = 0
    stop = StopRequest() if stop is None else stop  # (an unset request is falsy)
    logged: Logged | None = None  # what a stage that will be stored logs

    def emit(values: dict[str, float], at: int) -> None:
        log(values, at)
        if logged is not None:
            logged.append((values, at))

    def save(parts: dict[str, list]) -> None:
        assert checkpointer is not None
        checkpointer.save({"step": step, "history": history, "method": method.state_dict(),
                           "predictions": predictions, **_states(parts)})

    def fingerprint(stage: Stage, index: int, first: int, last: int) -> str:
        assert stage_cache is not None
        return stage_cache.key(
            stage, method, seed=seed, index=index, first_step=first,
            eval_steps=[s for s in range(first + 1, last + 1)
                        if s % cfg.eval_every == 0 or s == total],
            batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
            precision=precision, device=device, channels=channels,
            augment=vars(pair.augment) if pair.augment else None,
            evaluation_splits=pair.splits(), evaluators=evaluators)

    def kept() -> str | None:  # the checkpoint a NaN stop leaves, if one was written yet
        return str(checkpointer.path) if checkpointer and checkpointer.exists() else None

    with tqdm(total=total, initial=step, disable=not cfg.progress_bar,
              dynamic_ncols=True) as bar:
        for index, stage in enumerate(stages):
            done = min(max(step - stage_start, 0), stage.steps)  # steps of it already run
            first_step, stage_start = stage_start, stage_start + stage.steps
            if done == stage.steps:
                if resume and resume["step"] == stage_start:
                    # Checkpointed at this stage's end: a later stage may carry on with its
                    # optimizers (DIRT-T continues VADA's Adam).
                    _restore({"optimizers": stage.optimizers}, resume)
                continue
            bar.set_description(stage.name)
            streams, schedulers = _prepare(stage, index, seed, cfg.batch_size, method,
                                           pair.augment)
            parts = {"optimizers": stage.optimizers, "schedulers": schedulers,
                     "streams": list(streams.values())}
            key = None
            if done > 0 and resume:
                _restore(parts, resume)
            else:
                _seed_stage(seed, index)
                if stage.on_start:
                    stage.on_start()
                if stage_cache and stage.reuse:
                    key = fingerprint(stage, index, first_step, stage_start)
                    if entry := stage_cache.load(key):  # trained before: load, don't train
                        elapsed = round(time.perf_counter() - start, 2)
                        history += stage_cache.reuse(key, entry, stage, log, elapsed)
                        predictions.update(entry.get("predictions") or {})
                        step = stage_start
                        bar.update(stage.steps)
                        if checkpointer:
                            save(parts)
                        continue
            method.train()
            logged = [] if key else None
            stage_time = time.perf_counter()

            for i in range(done, stage.steps):
                batch = {name: (as_input(x, channels, normalization), y)
                         for name, (x, y) in ((n, s.next()) for n, s in streams.items())}
                with autocast:
                    scalars = stage.update(batch, i / stage.steps) or {}
                for scheduler in schedulers:
                    scheduler.step()
                step += 1
                bar.update()
                finite.update(scalars, step)
                if step % cfg.log_every == 0 or step == total:
                    values = {k: float(v.detach() if isinstance(v, Tensor) else v)
                              for k, v in scalars.items()}
                    group = stage.optimizers[0].param_groups[0]
                    values[f"lr/{stage.name}"] = group["lr"] / group.get("lr_mult", 1.0)
                    emit(values, step)
                    bar.set_postfix({_short(k): f"{v:.3g}" for k, v in values.items()})
                if step % cfg.eval_every == 0 or step == total:
                    finite.raise_if_bad(kept())
                    evaluation = run_evaluation(method, pair, evaluators, cfg.eval_batch_size,
                                                keep=(KEPT,))
                    metrics = evaluation.metrics
                    predictions[step] = probabilities(evaluation.logits[KEPT])
                    history.append({"step": step, "stage": stage.name, **metrics,
                                    "time_s": round(time.perf_counter() - start, 2)})
                    emit({f"val/{k}": v for k, v in metrics.items()}, step)
                    if on_evaluation:
                        on_evaluation(history, predictions)
                    if checkpointer:
                        checkpointer.keep_if_best(step, metrics, method)
                if checkpointer and (checkpointer.due(step) or step == total or stop):
                    finite.raise_if_bad(kept())
                    save(parts)
                if stop and step < total:
                    raise Interrupted(f"stopped by {stop.name} at step {step}; checkpoint "
                                      f"saved to {kept() or '(none)'}", stop.signum)

            if stage_cache and key and logged is not None:
                finite.raise_if_bad(None)  # never store a stage that went NaN
                stage_cache.store(key, stage, [h for h in history if h["step"] > first_step],
                                  logged, time.perf_counter() - stage_time,
                                  {k: v for k, v in predictions.items() if k > first_step})
    if not history:  # zero steps: still report the untrained model
        evaluation = run_evaluation(method, pair, evaluators, cfg.eval_batch_size, keep=(KEPT,))
        predictions[0] = probabilities(evaluation.logits[KEPT])
        history.append({"step": 0, "stage": "none", "time_s": 0.0, **evaluation.metrics})
        if on_evaluation:
            on_evaluation(history, predictions)
    return history


def probabilities(logits: Tensor) -> Tensor:
    """Class probabilities as a run keeps them: float16 on the CPU (2 bytes per class and
    image; enough to average candidates' predictions and to take their argmax)."""
    return logits.float().softmax(1).to("cpu", torch.float16)


def _short(tag: str) -> str:
    """A progress-bar name: the tag's last part ("loss/domain" → "domain"), "lr" for rates."""
    return "lr" if tag.startswith("lr/") else tag.rsplit("/", 1)[-1]


def _seed_stage(seed: int, index: int) -> None:
    """Each stage's own random draws (dropout, VAT's random directions) start from a seed of
    their own, as its batch streams do: the stage's result then does not depend on what the
    method drew before it, so one stored stage serves methods whose other parts differ."""
    stage_seed = seed * 1000 + index * 10 + 9  # the streams take seed * 1000 + index * 10 + k
    random.seed(stage_seed)
    np.random.seed(stage_seed)
    torch.manual_seed(stage_seed)


def _prepare(stage: Stage, index: int, seed: int, batch_size: int, method: Method,
             augment: Augment | None) -> tuple[dict[str, BatchStream], list[LambdaLR]]:
    streams = {name: BatchStream(split, batch_size, seed=seed * 1000 + index * 10 + k,
                                 augment=augment)
               for k, (name, split) in enumerate(stage.data.items())}
    factor = method.lr_factor if stage.anneal_lr else (lambda p: 1.0)
    schedulers = [LambdaLR(opt, lambda i, n=stage.steps, f=factor: f(i / n))
                  for opt in stage.optimizers]
    return streams, schedulers


def _states(parts: dict[str, list]) -> dict[str, list]:
    return {key: [p.state_dict() for p in items] for key, items in parts.items()}


def _restore(parts: dict[str, list], state: dict[str, list]) -> None:
    for key, items in parts.items():
        for item, saved in zip(items, state[key], strict=True):
            item.load_state_dict(saved)
