"""Finished training stages, stored once and reused: a pretraining stage runs once.

ADDA and fine-tune pretrain exactly as source-only trains, DIRT-T's first stage is VADA, and
a sweep over a second stage's settings repeats its first stage in every job. A stage that a
method marks `Reuse` (see `methods.base`) is stored, when it finishes, under a fingerprint of
everything its result depends on, and a later run whose stage has the same fingerprint loads
it instead of training:

- the code (a hash of transferlab's source files), torch's version, the device and CPU, the
  number of threads, precision, deterministic mode and whether subnormals are flushed
  (floating-point results differ across them);
- the stage's settings (its kind and the hyperparameters its update reads), its steps, where
  it starts, the steps at which it is evaluated, its learning-rate schedule;
- the starting state of the modules it trains and of its optimizers (their class, settings
  and state);
- the bytes of the splits it streams and of the evaluation splits, its stream names, the
  batch size and the run's seed (the stage's streams and random draws are seeded from it);
- the evaluators (the stage's evaluation history is stored with it).

An entry holds the modules' and optimizers' states after the stage and the stage's evaluation
history and logged scalars, so that a run that reuses it continues exactly as one that trained
the stage (tests/test_stage_cache.py checks bit-identical results on CPU). The random state is
not stored: the next stage seeds its own. Entries are small (the weights and optimizer state
of one network) and never expire: delete the folder to reclaim the space.
`trainer.reuse_stages=false` trains every stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from transferlab.checkpoint import load_safely, save_atomic
from transferlab.data.domain import Split
from transferlab.denormals import flush_state
from transferlab.evaluation import Evaluator
from transferlab.files import cache_folder
from transferlab.methods.base import Method, Stage
from transferlab.provenance import code_version, device_name, hash_tensors

Logged = list[tuple[dict[str, float], int]]
logger = logging.getLogger(__name__)


def default_folder() -> Path:
    return cache_folder("stages")


def _optimizer_tensors(optimizer: Optimizer, prefix: str) -> Iterable[tuple[str, Tensor]]:
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in sorted(state.items()):
            yield f"{prefix}.{index}.{key}", torch.as_tensor(value)


def _split_tensors(splits: Mapping[str, Split]) -> Iterable[tuple[str, Tensor]]:
    """Each store once (splits share one: a domain's train, val and test rows of its cache),
    then every split's rows into it and labels."""
    stores: dict[int, int] = {}
    for name, split in splits.items():
        if id(split.store) not in stores:
            stores[id(split.store)] = len(stores)
            yield f"store{stores[id(split.store)]}", split.store
        rows = torch.arange(len(split.store)) if split.rows is None else split.rows
        yield f"{name}.store{stores[id(split.store)]}.rows", rows
        yield f"{name}.labels", split.labels


class StageCache:
    """The folder of stored stages. `origin` (the run's folder) is recorded in what it stores;
    `events` lists what this run reused and stored, for results.json."""

    def __init__(self, folder: Path, origin: str) -> None:
        self.folder = folder.expanduser()
        self.origin = origin
        self.events: list[dict[str, Any]] = []

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def key(self, stage: Stage, method: Method, *, seed: int, index: int, first_step: int,
            eval_steps: list[int], batch_size: int, eval_batch_size: int, precision: str,
            device: torch.device, channels: int, augment: Mapping[str, Any] | None,
            evaluation_splits: Mapping[str, Split], evaluators: Mapping[str, Evaluator]) -> str:
        """The fingerprint of the stage as it is about to start (see the module docstring)."""
        assert stage.reuse is not None
        names = {id(p): n for n, p in method.named_parameters()}
        facts = {
            "code": code_version(), "torch": torch.__version__, "machine": device_name(device),
            "threads": torch.get_num_threads(), "precision": precision,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "denormals_flushed": flush_state(),
            "settings": stage.reuse.settings, "steps": stage.steps, "first_step": first_step,
            "eval_steps": eval_steps,
            "lr_schedule": [method.lr_alpha, method.lr_beta] if stage.anneal_lr else None,
            "seed": seed, "index": index, "streams": list(stage.data),
            "batch_size": batch_size, "eval_batch_size": eval_batch_size,
            "input": [channels, method.network.normalization], "augment": augment,
            "evaluators": {n: [type(e).__qualname__, e.describe()] for n, e in evaluators.items()},
            "optimizers": [[type(o).__qualname__,
                            [{**{k: v for k, v in g.items() if k not in ("params", "initial_lr")},
                              "params": [names[id(p)] for p in g["params"]]}
                             for g in o.param_groups]] for o in stage.optimizers],
        }
        digest = hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode())
        for name, module in sorted(stage.reuse.modules.items()):
            hash_tensors(digest, ((f"{name}.{k}", v) for k, v in module.state_dict().items()))
        for i, optimizer in enumerate(stage.optimizers):
            hash_tensors(digest, _optimizer_tensors(optimizer, f"optimizer{i}"))
        hash_tensors(digest, _split_tensors({**stage.data, **evaluation_splits}))
        return digest.hexdigest()[:32]

    def load(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        return load_safely(path) if path.exists() else None

    def reuse(self, key: str, entry: dict[str, Any], stage: Stage,
              log: Callable[[dict[str, float], int], None], time_s: float) -> list[dict]:
        """Put the stored result in place, replay its logged scalars to `log` (its `lr/` tag
        renamed for this stage) and return its evaluation history (restamped with this
        stage's name and this run's time)."""
        assert stage.reuse is not None
        for name, module in stage.reuse.modules.items():
            module.load_state_dict(entry["modules"][name])
        for optimizer, state in zip(stage.optimizers, entry["optimizers"], strict=True):
            optimizer.load_state_dict(state)
        lr_tag = f"lr/{entry['stage']}"
        for values, step in entry["logged"]:
            log({(f"lr/{stage.name}" if k == lr_tag else k): v for k, v in values.items()}, step)
        self.events.append({"stage": stage.name, "action": "reused", "fingerprint": key,
                            "entry": str(self.path(key)), "made_by": entry["made_by"],
                            "train_time_s": entry["train_time_s"]})
        logger.info(f"stage {stage.name}: reusing {self.path(key)} (trained by {entry['made_by']})")
        return [{**h, "stage": stage.name, "time_s": time_s} for h in entry["history"]]

    def store(self, key: str, stage: Stage, history: list[dict], logged: Logged,
              train_time_s: float, predictions: Mapping[int, Tensor] | None = None) -> None:
        assert stage.reuse is not None
        entry = {"modules": {n: m.state_dict() for n, m in stage.reuse.modules.items()},
                 "optimizers": [o.state_dict() for o in stage.optimizers],
                 "history": history, "logged": logged, "stage": stage.name,
                 "predictions": dict(predictions or {}),
                 "made_by": self.origin, "made_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "train_time_s": round(train_time_s, 2)}
        save_atomic(entry, self.path(key))
        self.events.append({"stage": stage.name, "action": "stored", "fingerprint": key,
                            "entry": str(self.path(key))})
