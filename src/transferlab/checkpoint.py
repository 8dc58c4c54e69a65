"""Checkpoints that survive kills: written atomically, loaded without unpickling code.

A checkpoint holds everything needed to continue a run bit-for-bit on the same machine: the
method's weights, the current stage's optimizers, schedulers and batch streams, the RNG states
of torch, numpy and Python, the global step, the evaluation history and the run's config.

With `trainer.keep_best=<validator>`, `best.pt` also holds the weights of the evaluation where
that validator scored best so far (in its direction), with the step and the score; which score
is best so far is part of every checkpoint, so a resumed run compares with it.
"""

from __future__ import annotations

import math
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.errors import UserError
from transferlab.files import write_atomic

LATEST = "last.pt"
PREVIOUS = "previous.pt"
BEST = "best.pt"


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # Only when this process already uses CUDA: asking would initialise CUDA (and claim GPU
    # memory) in a device=cpu job on a GPU node.
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "cuda": cuda}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if state["cuda"] and torch.cuda.is_available():
        # A checkpoint from a node with more GPUs: restore the devices this node has.
        for device, saved in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(saved, device)


def save_atomic(obj: Any, path: Path, previous: Path | None = None) -> None:
    """torch.save through `files.write_atomic`: a kill at any moment leaves either the old
    checkpoint or the new one, never a torn file. With `previous`, the old checkpoint is kept
    there first."""
    write_atomic(path, lambda file: torch.save(obj, file), keep_previous=previous)


def load_safely(path: Path) -> Any:
    """Load with `weights_only=True`: tensors and plain containers only, never arbitrary code.
    A damaged or foreign file is a UserError naming it and what is wrong with it."""
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty (0 bytes)")
    if not zipfile.is_zipfile(path):  # torch.save's format is a zip archive
        raise UserError(f"{path} is damaged: it is not a PyTorch file (no zip archive)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message goes on to advise weights_only=False, i.e. running the file's code.
        found = re.search(r"GLOBAL (\S+)", str(e))
        raise UserError(f"refusing to load {path}: it holds objects other than tensors and "
                        f"plain data ({found[1] if found else 'not a transferlab checkpoint'})"
                        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"{path} is damaged ({str(e).splitlines()[0]})") from None


class Checkpointer:
    """The run's checkpoint folder: `last.pt`, and `previous.pt`, the one before it, kept so
    that a damaged last.pt leaves a checkpoint to resume from. `config` is the resolved run
    config, saved with each checkpoint so that a resume can check it trains the same.
    `keep_best` names the evaluator whose best evaluation `best.pt` keeps (None: no best.pt);
    `higher_is_better` is its direction."""

    def __init__(self, folder: Path, every: int, config: dict[str, Any],
                 keep_best: str | None = None, higher_is_better: bool = True) -> None:
        self.folder = folder
        self.path = folder / LATEST
        self.previous = folder / PREVIOUS
        self.best_path = folder / BEST
        self.every = every
        self.config = config
        self.keep_best = keep_best
        self.higher_is_better = higher_is_better
        self.best: dict[str, Any] | None = None  # {"validator", "step", "score"} of best.pt

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict[str, Any] | None:
        """The latest checkpoint, None if there is none; a UserError naming a damaged one and
        the choices it leaves."""
        if not self.path.exists():
            if self.previous.exists():  # stopped between the two renames of `save`
                raise UserError(f"{self.path} is missing but {self.previous} exists: "
                                f"{self._choices()}")
            return None
        try:
            state = load_safely(self.path)
        except UserError as e:
            raise UserError(f"{e}; {self._choices()}") from None
        best = state.get("best")
        # keep_best may change on resume (it does not change what is trained): start afresh.
        self.best = best if best and best["validator"] == self.keep_best else None
        return state

    def _choices(self) -> str:
        start_over = f"delete {self.folder} to start over"
        try:
            step = load_safely(self.previous)["step"] if self.previous.exists() else None
        except UserError:
            step = None
        if step is None:
            return start_over
        return f"{start_over}, or resume from the previous checkpoint (step {step}): " \
               f"mv {self.previous} {self.path}"

    def save(self, state: dict[str, Any]) -> None:
        save_atomic({**state, "config": self.config, "rng": rng_state(), "best": self.best},
                    self.path, previous=self.previous)

    def keep_if_best(self, step: int, metrics: dict[str, float], method: nn.Module) -> None:
        """After an evaluation: write best.pt if `keep_best` scored strictly better than at
        every earlier evaluation (so ties keep the earliest); a NaN score is never best."""
        if self.keep_best is None:
            return
        score = metrics[self.keep_best]
        if math.isnan(score):
            return
        if self.best is not None and not (score > self.best["score"] if self.higher_is_better
                                          else score < self.best["score"]):
            return
        best = {"validator": self.keep_best, "step": step, "score": score}
        save_atomic({**best, "higher_is_better": self.higher_is_better, "metrics": metrics,
                     "method": method.state_dict(), "config": self.config}, self.best_path)
        self.best = best
