"""The training loop and the per-domain evaluation. Methods plug in through `Method.stages()`."""

from __future__ import annotations

import logging
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
from transferlab.evaluation.base import metric_tag, run_evaluation
from transferlab.methods.base import Method, Stage
from transferlab.provenance import process_age
from transferlab.stage_cache import Logged, StageCache
from transferlab.stops import Interrupted, StopRequest

log = logging.getLogger(__name__)
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
    evaluators' values (tagged by `metric_tag`); `on_evaluation(history, predictions)` the
    history and every evaluation's target_val class probabilities after each evaluation. Once
    `stop` is set (by a signal, see transferlab.stops), the loop finishes its step, saves a
    checkpoint and raises `Interrupted`. With a `stage_cache`, stages the method marks
    reusable are loaded from it when already trained, and stored in it when trained here."""
    loop = _Loop(method, pair, cfg, seed, log, evaluators, checkpointer, resume,
                 StopRequest() if stop is None else stop, on_evaluation, stage_cache)
    return loop.run()


@dataclass
class _StageRun:
    """One stage as the loop runs it: where it starts and ends in the run's steps, its
    streams and schedulers, what a checkpoint saves of it, and its stage-cache key."""

    index: int
    stage: Stage
    first: int                   # the run's step before its first step
    last: int                    # the run's step after its last step
    streams: dict[str, BatchStream]
    schedulers: list[LambdaLR]
    key: str | None = None

    @property
    def parts(self) -> dict[str, list]:
        return {"optimizers": self.stage.optimizers, "schedulers": self.schedulers,
                "streams": list(self.streams.values())}


class _Loop:
    """One call of `fit`: its state (step, history, predictions) and its named parts."""

    def __init__(self, method: Method, pair: DomainPair, cfg: TrainerConfig, seed: int,
                 log: Log, evaluators: Mapping[str, Evaluator],
                 checkpointer: Checkpointer | None, resume: dict[str, Any] | None,
                 stop: StopRequest,
                 on_evaluation: Callable[[list[dict], Predictions], None] | None,
                 stage_cache: StageCache | None) -> None:
        self.method, self.pair, self.cfg, self.seed = method, pair, cfg, seed
        self.log, self.evaluators, self.checkpointer = log, evaluators, checkpointer
        self.resume, self.stop, self.on_evaluation = resume, stop, on_evaluation
        self.stage_cache = stage_cache
        self.stages = method.stages(pair.training_view(method.uses_target_labels))
        self.total = sum(s.steps for s in self.stages)
        self.step, self.history = (resume["step"], resume["history"]) if resume else (0, [])
        self.predictions: Predictions = dict(resume.get("predictions") or {}) if resume else {}
        if resume:
            method.load_state_dict(resume["method"])
            set_rng_state(resume["rng"])
        self.finite = FiniteCheck()
        self.precision = training_precision(cfg.precision, pair.device)
        self.autocast = torch.autocast(pair.device.type, dtype=torch.bfloat16,
                                       enabled=self.precision == "bf16")
        self.start = time.perf_counter() - (self.history[-1]["time_s"] if self.history else 0.0)
        self.logged: Logged | None = None  # what a stage that will be stored logs
        self.started = False  # whether this invocation has made a step yet
        self.timed_from, self.timed_at = -1, 0.0  # the step after which the speed is timed
        self.bar = tqdm(total=self.total, initial=self.step, disable=not cfg.progress_bar,
                        dynamic_ncols=True)

    def run(self) -> list[dict]:
        with self.bar:
            last = 0
            for index, stage in enumerate(self.stages):
                first, last = last, last + stage.steps
                self._run_stage(index, stage, first, last)
        if not self.history:  # zero steps: still report the untrained model
            self._evaluate("none", at=0)
        return self.history

    def _run_stage(self, index: int, stage: Stage, first: int, last: int) -> None:
        done = min(max(self.step - first, 0), stage.steps)  # steps of it already run
        if done == stage.steps:
            if self.resume and self.resume["step"] == last:
                # Checkpointed at this stage's end: a later stage may carry on with its
                # optimizers (DIRT-T continues VADA's Adam).
                _restore({"optimizers": stage.optimizers}, self.resume)
            return
        self.bar.set_description(stage.name)
        current = _StageRun(index, stage, first, last,
                            *_prepare(stage, index, self.seed, self.cfg.batch_size,
                                      self.method, self.pair.augment))
        if done > 0 and self.resume:
            _restore(current.parts, self.resume)
        else:
            _seed_stage(self.seed, index)
            if stage.on_start:
                stage.on_start()
            if self.stage_cache and stage.reuse:
                current.key = self._fingerprint(current)
                if self._reuse_stored(current):
                    return
        self._train(current, done)

    def _train(self, current: _StageRun, done: int) -> None:
        """The stage's steps from `done` on, then, if it has a key, its result stored."""
        self.method.train()
        self.logged = [] if current.key else None
        began = time.perf_counter()
        channels = self.method.network.in_channels
        normalization = self.method.network.normalization
        for i in range(done, current.stage.steps):
            batch = {name: (as_input(x, channels, normalization), y)
                     for name, (x, y) in ((n, s.next()) for n, s in current.streams.items())}
            with self.autocast:
                scalars = current.stage.update(batch, i / current.stage.steps) or {}
            for scheduler in current.schedulers:
                scheduler.step()
            self.step += 1
            self.bar.update()
            self.finite.update(scalars, self.step)
            if not self.started:
                self._announce_start()
            if self.step == self.timed_from + TIMED_STEPS:
                self._announce_time_left()
            self._after_step(current, scalars)
        if self.stage_cache and current.key and self.logged is not None:
            self.finite.raise_if_bad(None)  # never store a stage that went NaN
            self.stage_cache.store(
                current.key, current.stage,
                [h for h in self.history if h["step"] > current.first], self.logged,
                time.perf_counter() - began,
                {k: v for k, v in self.predictions.items() if k > current.first})

    def _after_step(self, current: _StageRun, scalars: Mapping[str, Tensor | float]) -> None:
        """Log, evaluate, checkpoint and stop, each when it is due."""
        end = self.step == self.total
        if self.step % self.cfg.log_every == 0 or end:
            self._log_step(current.stage, scalars)
        if self.step % self.cfg.eval_every == 0 or end:
            self.finite.raise_if_bad(self._kept())
            self._evaluate(current.stage.name, at=self.step)
        if self.checkpointer and (self.checkpointer.due(self.step) or end or self.stop):
            self.finite.raise_if_bad(self._kept())
            self._save(current)
        if self.stop and not end:
            raise Interrupted(f"stopped by {self.stop.name} at step {self.step}; checkpoint "
                              f"saved to {self._kept() or '(none)'}", self.stop.signum)

    def _announce_start(self) -> None:
        """How long the start took: from the process's start to this invocation's first step."""
        self.started = True
        self.timed_from, self.timed_at = self.step, time.perf_counter()
        age = process_age()
        if age is not None:
            log.info(f"step {self.step} done {age:.2f} s after the process started")

    def _announce_time_left(self) -> None:
        """The progress bar's estimate, in the log at the start, where a 40-hour run is seen
        at once (evaluations not counted)."""
        rate = TIMED_STEPS / (time.perf_counter() - self.timed_at)
        left = (self.total - self.step) / rate
        log.info(f"{rate:.3g} steps/s: the remaining {self.total - self.step:,} steps take "
                 f"about {_duration(left)} at this speed")

    def _log_step(self, stage: Stage, scalars: Mapping[str, Tensor | float]) -> None:
        values = {k: float(v.detach() if isinstance(v, Tensor) else v)
                  for k, v in scalars.items()}
        if stage.optimizers:  # a stage may learn nothing by gradient (AdaBN)
            group = stage.optimizers[0].param_groups[0]
            values[f"lr/{stage.name}"] = group["lr"] / group.get("lr_mult", 1.0)
        self._emit(values, self.step)
        self.bar.set_postfix({_short(k): f"{v:.3g}" for k, v in values.items()})

    def _evaluate(self, stage_name: str, at: int) -> None:
        evaluation = run_evaluation(self.method, self.pair, self.evaluators,
                                    self.cfg.eval_batch_size, keep=(KEPT,))
        self.predictions[at] = probabilities(evaluation.logits[KEPT])
        elapsed = round(time.perf_counter() - self.start, 2) if at else 0.0
        self.history.append({"step": at, "stage": stage_name, **evaluation.metrics,
                             "time_s": elapsed})
        self._emit({metric_tag(k): v for k, v in evaluation.metrics.items()}, at)
        if self.on_evaluation:
            self.on_evaluation(self.history, self.predictions)
        if self.checkpointer and at:
            self.checkpointer.keep_if_best(at, evaluation.metrics, self.method)

    def _emit(self, values: dict[str, float], at: int) -> None:
        self.log(values, at)
        if self.logged is not None:
            self.logged.append((values, at))

    def _fingerprint(self, current: _StageRun) -> str:
        assert self.stage_cache is not None
        cfg, network = self.cfg, self.method.network
        return self.stage_cache.key(
            current.stage, self.method, seed=self.seed, index=current.index,
            first_step=current.first,
            eval_steps=[s for s in range(current.first + 1, current.last + 1)
                        if s % cfg.eval_every == 0 or s == self.total],
            batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
            precision=self.precision, device=self.pair.device, channels=network.in_channels,
            augment=vars(self.pair.augment) if self.pair.augment else None,
            evaluation_splits=self.pair.splits(), evaluators=self.evaluators)

    def _reuse_stored(self, current: _StageRun) -> bool:
        """Load the stage's stored result, if the cache holds one, instead of training it."""
        assert self.stage_cache is not None and current.key is not None
        entry = self.stage_cache.load(current.key)
        if not entry:
            return False
        elapsed = round(time.perf_counter() - self.start, 2)
        self.history += self.stage_cache.reuse(current.key, entry, current.stage, self.log,
                                               elapsed)
        self.predictions.update(entry.get("predictions") or {})
        self.step = current.last
        self.bar.update(current.stage.steps)
        if self.checkpointer:
            self._save(current)
        return True

    def _save(self, current: _StageRun) -> None:
        assert self.checkpointer is not None
        self.checkpointer.save({"step": self.step, "history": self.history,
                                "method": self.method.state_dict(),
                                "predictions": self.predictions, **_states(current.parts)})

    def _kept(self) -> str | None:
        """The checkpoint a NaN stop leaves, if one was written yet."""
        if self.checkpointer and self.checkpointer.exists():
            return str(self.checkpointer.path)
        return None


TIMED_STEPS = 20  # steps timed for the estimate of the time left


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"


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
