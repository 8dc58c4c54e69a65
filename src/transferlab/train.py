"""The training loop and the per-domain evaluation. Methods plug in through `Method.stages()`."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from transferlab.checkpoint import Checkpointer, set_rng_state
from transferlab.data.augment import Augment
from transferlab.data.domain import BatchStream, DomainPair, as_input
from transferlab.errors import UserError
from transferlab.evaluation import Evaluator, evaluate
from transferlab.methods.base import Method, Stage

Metrics = dict[str, float]
Log = Callable[[dict[str, float], int], None]


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


class Interrupted(KeyboardInterrupt):
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


@contextmanager
def stop_requests() -> Iterator[list[bool]]:
    """Turn Ctrl-C into a flag the loop checks between steps, so that the checkpoint it then
    saves is of a consistent state, not of an optimizer step cut in half."""
    requested = [False]

    def handler(signum: int, frame: Any) -> None:
        if requested[0]:  # a second Ctrl-C: the user wants out now
            raise KeyboardInterrupt
        requested[0] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)


def fit(method: Method, pair: DomainPair, cfg: TrainerConfig, seed: int, log: Log,
        evaluators: Mapping[str, Evaluator], checkpointer: Checkpointer | None = None,
        resume: dict[str, Any] | None = None) -> list[dict]:
    """Run every stage of `method` (from `resume`, a checkpoint, if given); return the
    evaluation history. `log(scalars, step)` receives losses, learning rates and the
    evaluators' values (as `val/<name>`)."""
    stages = method.stages(pair.training_view(method.uses_target_labels))
    total = sum(s.steps for s in stages)
    step, history = (resume["step"], resume["history"]) if resume else (0, [])
    if resume:
        method.load_state_dict(resume["method"])
        set_rng_state(resume["rng"])
    finite = FiniteCheck()
    device = pair.device
    bf16 = training_precision(cfg.precision, device) == "bf16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    channels, normalization = method.network.in_channels, method.network.normalization
    start = time.perf_counter() - (history[-1]["time_s"] if history else 0.0)
    bar = tqdm(total=total, initial=step, disable=not cfg.progress_bar, dynamic_ncols=True)
    stage_start = 0
    with stop_requests() as stop:
        for index, stage in enumerate(stages):
            done = min(max(step - stage_start, 0), stage.steps)  # steps of it already run
            stage_start += stage.steps
            if done == stage.steps:
                continue
            bar.set_description(stage.name)
            streams, schedulers = _prepare(stage, index, seed, cfg.batch_size, method,
                                           pair.augment)
            parts = {"optimizers": stage.optimizers, "schedulers": schedulers,
                     "streams": list(streams.values())}
            if done > 0 and resume:
                _restore(parts, resume)
            elif stage.on_start:
                stage.on_start()
            method.train()

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
                    log(values, step)
                    bar.set_postfix({_short(k): f"{v:.3g}" for k, v in values.items()})
                if step % cfg.eval_every == 0 or step == total:
                    finite.raise_if_bad(str(checkpointer.path) if checkpointer else None)
                    metrics = evaluate(method, pair, evaluators, cfg.eval_batch_size)
                    history.append({"step": step, "stage": stage.name, **metrics,
                                    "time_s": round(time.perf_counter() - start, 2)})
                    log({f"val/{k}": v for k, v in metrics.items()}, step)
                if checkpointer and (checkpointer.due(step) or step == total or stop[0]):
                    finite.raise_if_bad(str(checkpointer.path) if checkpointer.exists() else None)
                    checkpointer.save({"step": step, "history": history,
                                       "method": method.state_dict(), **_states(parts)})
                if stop[0]:
                    bar.close()
                    raise Interrupted(f"interrupted at step {step}; checkpoint saved to "
                                      f"{checkpointer.path if checkpointer else '(none)'}")
    bar.close()
    if not history:  # zero steps: still report the untrained model
        history.append({"step": 0, "stage": "none", "time_s": 0.0,
                        **evaluate(method, pair, evaluators, cfg.eval_batch_size)})
    return history


def _short(tag: str) -> str:
    """A progress-bar name: the tag's last part ("loss/domain" → "domain"), "lr" for rates."""
    return "lr" if tag.startswith("lr/") else tag.rsplit("/", 1)[-1]


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
