"""Domains held as uint8 tensors in memory, and the source→target pair a run trains on.

Everything here stays uint8 until a batch is drawn: a batch is an index into the tensors, and
conversion to float happens on the batch (`as_input`), on whatever device the data lives on.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from transferlab.errors import UserError


@dataclass(frozen=True)
class Split:
    """Images (N, C, H, W) uint8 and labels (N,) int64 of one split of one domain."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Tensor) -> Split:
        return Split(self.images[index], self.labels[index])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def resized(self, size: int) -> Split:
        if self.images.shape[-1] == size and self.images.shape[-2] == size:
            return self
        x = F.interpolate(self.images.float(), size=(size, size), mode="bilinear",
                          antialias=True, align_corners=False)
        return Split(x.round_().clamp_(0, 255).to(torch.uint8), self.labels)


@dataclass(frozen=True)
class Domain:
    """One domain: a labelled train and test split (labels of a target train split are only
    used by the oracle and by few-shot methods, never by unsupervised adaptation)."""

    name: str
    train: Split
    test: Split
    num_classes: int = 10


@dataclass(frozen=True)
class DataContext:
    """Where loaders find raw files, may download them, and cache what they derive."""

    root: Path
    download: bool
    cache_dir: Path


DomainLoader = Callable[[DataContext], Domain]


@dataclass(frozen=True)
class TrainingView:
    """What a method trains on: the training splits only, never a test or validation split.
    `target` labels are -1 unless the method uses target labels by design (the oracle,
    few-shot fine-tuning), so unsupervised adaptation code cannot read them by mistake."""

    source: Split
    target: Split
    num_classes: int


@dataclass(frozen=True)
class DomainPair:
    """A source→target pair. `source_val` and `target_val` are held out from each domain's
    train split: the signals that label-free model selection may use (source labels, and
    target images without their labels); the test splits are for reporting only."""

    source: Domain
    target: Domain
    source_val: Split
    target_val: Split

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def channels(self) -> int:
        return max(self.source.train.images.shape[1], self.target.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return self.source.train.images.shape[-1]

    def splits(self) -> dict[str, Split]:
        """Every split by the name evaluators use for it."""
        return {"source_test": self.source.test, "target_test": self.target.test,
                "source_val": self.source_val, "target_val": self.target_val}

    def training_view(self, target_labels: bool) -> TrainingView:
        target = self.target.train if target_labels else unlabelled(self.target.train)
        return TrainingView(self.source.train, target, self.num_classes)

    def to(self, device: torch.device | str) -> DomainPair:
        def move(d: Domain) -> Domain:
            return replace(d, train=d.train.to(device), test=d.test.to(device))

        return DomainPair(move(self.source), move(self.target), self.source_val.to(device),
                          self.target_val.to(device))


def unlabelled(split: Split) -> Split:
    """The split with its labels replaced by -1."""
    return Split(split.images, torch.full_like(split.labels, -1))


Normalization = tuple[tuple[float, ...], tuple[float, ...]]
DIGITS: Normalization = ((0.5,), (0.5,))  # [0, 1] → [-1, 1]


def as_input(images: Tensor, channels: int, normalization: Normalization = DIGITS) -> Tensor:
    """uint8 batch → float, normalised with the backbone's per-channel (mean, std) of [0, 1]
    images, grey images repeated to `channels`, in channels-last layout (convolutions run
    markedly faster in it on CPU and on tensor-core GPUs)."""
    x = images.expand(-1, channels, -1, -1) if images.shape[1] != channels else images
    x = x.contiguous(memory_format=torch.channels_last).float()
    scale, shift = _affine(normalization, channels, x.device)
    return x.mul_(scale).sub_(shift)  # (x / 255 - mean) / std, in place


@functools.lru_cache(maxsize=16)
def _affine(normalization: Normalization, channels: int,
            device: torch.device) -> tuple[Tensor, Tensor]:
    mean, std = (torch.tensor(v, dtype=torch.float32).expand(channels).view(1, -1, 1, 1)
                 for v in normalization)
    return (1 / (255 * std)).to(device), (mean / std).to(device)


def default_cache_dir(root: Path) -> Path:
    """The data root when it is writable by its permission bits (not merely because we are
    root), else the user's cache directory."""
    writable = root.is_dir() and os.access(root, os.W_OK) and root.stat().st_mode & 0o222
    if writable:
        return root
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "transferlab"


def build_pair(
    source: DomainLoader,
    target: DomainLoader,
    root: str | Path,
    download: bool = False,
    cache_dir: str | Path | None = None,
    source_val_size: int = 5000,
    target_val_size: int = 1000,
    image_size: int | None = None,
    split_seed: int = 0,
) -> DomainPair:
    """Load both domains, bring them to one image size, and hold out a validation split from
    each domain's train split.

    The validation splits depend on `split_seed` only, not on the run's seed, so that runs with
    different seeds are selected on the same held-out samples.
    """
    root = Path(root).expanduser()
    ctx = DataContext(root, download, Path(cache_dir).expanduser() if cache_dir
                      else default_cache_dir(root))
    src, tgt = source(ctx), target(ctx)
    size = image_size or src.train.images.shape[-1]
    src, tgt = (replace(d, train=d.train.resized(size), test=d.test.resized(size))
                for d in (src, tgt))
    if src.num_classes != tgt.num_classes:
        raise ValueError(f"{src.name} has {src.num_classes} classes but {tgt.name} has "
                         f"{tgt.num_classes}")
    src, source_val = _hold_out(src, source_val_size, split_seed, "data.source_val_size")
    # A different stream of the same seed: the two domains' draws do not mirror each other.
    tgt, target_val = _hold_out(tgt, target_val_size, split_seed + 1, "data.target_val_size")
    return DomainPair(src, tgt, source_val, target_val)


def _hold_out(domain: Domain, size: int, seed: int, key: str) -> tuple[Domain, Split]:
    if not 0 <= size < len(domain.train):
        raise UserError(f"{key}={size} must be in [0, {len(domain.train)}) for {domain.name}")
    perm = torch.randperm(len(domain.train), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:size], perm[size:]
    return replace(domain, train=domain.train.subset(train)), domain.train.subset(val)


class BatchStream:
    """Endless mini-batches from one split: a fresh permutation per epoch, drawn from the
    stream's own generator, so its position can be checkpointed and restored exactly."""

    def __init__(self, split: Split, batch_size: int, seed: int) -> None:
        self.split = split
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.position = 0

    def next(self) -> tuple[Tensor, Tensor]:
        while len(self.order) - self.position < self.batch_size:
            fresh = torch.randperm(len(self.split), generator=self.generator)
            self.order = torch.cat([self.order[self.position:], fresh])
            self.position = 0
        index = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        index = index.to(self.split.images.device, non_blocking=True)
        return self.split.images[index], self.split.labels[index]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order,
                "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"], state["position"]
