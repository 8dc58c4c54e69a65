"""The training loop and the per-domain evaluation. Methods plug in through `Method.stages()`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from transferlab.data.domain import BatchStream, DomainPair, Split, as_input
from transferlab.methods.base import DomainName, Method

Metrics = dict[str, float]


@dataclass
class TrainerConfig:
    steps: int
    batch_size: int
    eval_every: int
    eval_batch_size: int = 2048
    log_every: int = 50
    progress_bar: bool = True


@torch.inference_mode()
def accuracy(method: Method, split: Split, domain: DomainName, channels: int,
             batch_size: int) -> float:
    correct = torch.zeros((), dtype=torch.long, device=split.labels.device)
    for i in range(0, len(split), batch_size):
        x = as_input(split.images[i : i + batch_size], channels)
        correct += (method.predict(x, domain).argmax(1) == split.labels[i : i + batch_size]).sum()
    return correct.item() / max(len(split), 1)


def evaluate(method: Method, pair: DomainPair, batch_size: int) -> Metrics:
    """Accuracy on each domain's full test split, and on the held-out source validation split."""
    was_training = method.training
    method.eval()
    metrics = {
        "source_acc": accuracy(method, pair.source.test, "source", pair.channels, batch_size),
        "target_acc": accuracy(method, pair.target.test, "target", pair.channels, batch_size),
        "source_val_acc": accuracy(method, pair.source_val, "source", pair.channels,
                                   batch_size),
    }
    method.train(was_training)
    return metrics


def fit(method: Method, pair: DomainPair, cfg: TrainerConfig, seed: int,
        log: Callable[[dict[str, float], int], None]) -> list[dict]:
    """Run every stage of `method`; return the evaluation history (one record per eval).

    `log(scalars, step)` receives losses, learning rates and accuracies (TensorBoard tags).
    """
    history: list[dict] = []
    stages = method.stages(pair)
    total = sum(s.steps for s in stages)
    step = 0
    bar = tqdm(total=total, disable=not cfg.progress_bar, dynamic_ncols=True)
    method.train()
    for index, stage in enumerate(stages):
        bar.set_description(stage.name)
        if stage.on_start:
            stage.on_start()
            method.train()
        streams = {name: BatchStream(split, cfg.batch_size, seed=seed * 1000 + index * 10 + k)
                   for k, (name, split) in enumerate(stage.data.items())}
        factor = method.lr_factor if stage.anneal_lr else (lambda p: 1.0)
        schedulers = [LambdaLR(opt, lambda i, n=stage.steps, f=factor: f(i / n))
                      for opt in stage.optimizers]
        for i in range(stage.steps):
            batch = {name: (as_input(x, pair.channels), y)
                     for name, (x, y) in ((n, s.next()) for n, s in streams.items())}
            scalars = stage.update(batch, i / stage.steps)
            for scheduler in schedulers:
                scheduler.step()
            step += 1
            bar.update()
            if step % cfg.log_every == 0 or step == total:
                values = {k: float(v.detach()) for k, v in scalars.items()}
                values[f"lr/{stage.name}"] = stage.optimizers[0].param_groups[0]["lr"]
                log(values, step)
                bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in values.items()})
            if step % cfg.eval_every == 0 or step == total:
                metrics = evaluate(method, pair, cfg.eval_batch_size)
                history.append({"step": step, "stage": stage.name, **metrics})
                log({f"acc/{k.removesuffix('_acc')}": v for k, v in metrics.items()}, step)
    bar.close()
    if not history:  # zero steps: still report the untrained model
        history.append({"step": 0, "stage": "none", **evaluate(method, pair,
                                                               cfg.eval_batch_size)})
    return history
