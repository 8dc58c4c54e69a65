"""Domains held as uint8 image stores, and the source→target pair a run trains on.

Everything here stays uint8 until a batch is drawn: a batch is an index into a store (in
memory, on the device, or memory-mapped from a cache file, see `data.storage`), augmentation
and conversion to float happen on the batch (`data.augment`, `as_input`), on the device.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from transferlab.errors import UserError
from transferlab.files import cache_folder

if TYPE_CHECKING:
    from transferlab.data.augment import Augment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """The labelled images of one split of one domain.

    `store` (N, C, H, W) uint8 holds the images the split draws from: in memory, on the
    training device, or memory-mapped from a cache file (`mapped`: it stays on the host, and
    each batch is copied to the device). `rows` says which of the store's images belong to this
    split, in order (None: all of them), so that splits of one domain share one store and
    taking a subset never copies images. Batches are drawn with `take`.
    """

    store: Tensor
    labels: Tensor
    rows: Tensor | None = None
    mapped: bool = False

    def __post_init__(self) -> None:
        if self.store.dtype != torch.uint8 or self.store.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.store.dtype} "
                             f"{tuple(self.store.shape)}")
        count = len(self.store) if self.rows is None else len(self.rows)
        if count != len(self.labels):
            raise ValueError(f"{count} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def images(self) -> Tensor:
        """The split's images as one tensor: a copy unless the split is its whole store. For
        small splits and inspection; the data path draws batches with `take` instead."""
        return self.store if self.rows is None else self.store[self.rows]

    @property
    def channels(self) -> int:
        return self.store.shape[1]

    @property
    def side(self) -> int:
        return self.store.shape[-1]

    def take(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Images and labels of the split's samples `index`, both on the labels' device."""
        images = gather(self.store, self._rows(index), self.labels.device)
        return images, self.labels[index.to(self.labels.device)]

    def subset(self, index: Tensor) -> Split:
        return replace(self, labels=self.labels[index.to(self.labels.device)],
                       rows=self._rows(index))

    def _rows(self, index: Tensor) -> Tensor:
        """The store rows of the split's samples `index`, on the store's device."""
        index = index.to(self.store.device)
        return index if self.rows is None else self.rows[index]

    def to(self, device: torch.device | str, placed: dict[int, Tensor] | None = None) -> Split:
        """The split with its labels on `device` and its store placed for `device` (see
        `place`). `placed` remembers stores already placed, so splits sharing one move it once."""
        placed = {} if placed is None else placed
        if id(self.store) not in placed:
            placed[id(self.store)] = place(self.store, torch.device(device), self.mapped)
        store = placed[id(self.store)]
        rows = None if self.rows is None else self.rows.to(store.device)
        return replace(self, store=store, labels=self.labels.to(device), rows=rows)

    def resized(self, size: int, chunk: int = 4096) -> Split:
        """The split with its store resized to size x size, a chunk of images at a time, so
        that no float copy of the whole store is ever made."""
        if self.store.shape[-2:] == (size, size):
            return self
        n, channels = self.store.shape[:2]
        out = torch.empty(n, channels, size, size, dtype=torch.uint8, device=self.store.device)
        for i in range(0, n, chunk):
            x = F.interpolate(self.store[i : i + chunk].float(), size=(size, size),
                              mode="bilinear", antialias=True, align_corners=False)
            out[i : i + chunk] = x.round_().clamp_(0, 255)
        return replace(self, store=out, mapped=False)


def gather(store: Tensor, rows: Tensor, device: torch.device) -> Tensor:
    """store[rows] on `device`. A store on the host going to a GPU is gathered on the host
    (for a mapped store, this reads the pages), pinned and copied without blocking, so the
    copy overlaps the previous step's compute."""
    batch = store[rows]
    if batch.device == device:
        return batch
    if device.type == "cuda":
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


def place(store: Tensor, device: torch.device, mapped: bool) -> Tensor:
    """Where a store lives for training on `device`: a memory-mapped store stays mapped; an
    in-memory one moves to the device, unless it would take more than half the device's free
    memory (then it stays in host memory and batches are copied, as for a mapped one)."""
    if mapped or store.device == device:
        return store
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if store.nbytes > free // 2:
            log.info(f"keeping {store.nbytes / 2**30:.1f} GiB of images in host memory (more "
                     f"than half the free memory of {device}); batches are copied to it")
            return store
    return store.to(device)


@dataclass(frozen=True)
class Domain:
    """One domain: a labelled train and test split (labels of a target train split are only
    used by the oracle and by few-shot methods, never by unsupervised adaptation).

    `transductive`: the test split is the whole domain, the train split too, as in the
    benchmarks whose protocol trains on every target image (unlabelled) and reports accuracy
    on all of them (Office-31, Office-Home, VisDA-2017); the target validation split is then
    drawn from the domain without being removed from training.
    """

    name: str
    train: Split
    test: Split
    num_classes: int = 10
    transductive: bool = False


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
    few-shot fine-tuning), so unsupervised adaptation code cannot read them by mistake.
    `as_evaluated` turns a batch of a split's images into what evaluation feeds the network
    (the centre crop where the pair augments), for methods that predict on a whole split
    while training (SHOT's pseudo-labels)."""

    source: Split
    target: Split
    num_classes: int
    as_evaluated: Callable[[Tensor], Tensor] = lambda images: images


@dataclass(frozen=True)
class DomainPair:
    """A source→target pair. `source_val` and `target_val` are held out from each domain's
    train split: the signals that label-free model selection may use (source labels, and
    target images without their labels); the test splits are for reporting only.

    `augment` (None: none) transforms training batches at random and evaluation batches
    deterministically (a center crop); the network sees `image_size` pixels either way."""

    source: Domain
    target: Domain
    source_val: Split
    target_val: Split
    augment: Augment | None = None

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def channels(self) -> int:
        return max(self.source.train.channels, self.target.train.channels)

    @property
    def image_size(self) -> int:
        return self.augment.size if self.augment else self.source.train.side

    @property
    def device(self) -> torch.device:
        """Where batches are delivered (a memory-mapped store itself stays on the host)."""
        return self.source_val.labels.device

    def splits(self) -> dict[str, Split]:
        """Every split by the name evaluators use for it."""
        return {"source_test": self.source.test, "target_test": self.target.test,
                "source_val": self.source_val, "target_val": self.target_val}

    def training_view(self, target_labels: bool) -> TrainingView:
        target = self.target.train if target_labels else unlabelled(self.target.train)
        if self.augment:
            return TrainingView(self.source.train, target, self.num_classes, self.augment.center)
        return TrainingView(self.source.train, target, self.num_classes)

    def to(self, device: torch.device | str) -> DomainPair:
        placed: dict[int, Tensor] = {}  # each store is placed once, however many splits use it

        def move(d: Domain) -> Domain:
            return replace(d, train=d.train.to(device, placed), test=d.test.to(device, placed))

        return replace(self, source=move(self.source), target=move(self.target),
                       source_val=self.source_val.to(device, placed),
                       target_val=self.target_val.to(device, placed))

    def evaluation_batches(self, split: Split, batch_size: int) -> Iterator[Tensor]:
        """The images of `split` in order, `batch_size` at a time, as the network is evaluated
        on them: uint8, center-cropped when the pair augments its training batches."""
        for start in range(0, len(split), batch_size):
            index = torch.arange(start, min(start + batch_size, len(split)))
            images, _ = split.take(index)
            yield self.augment.center(images) if self.augment else images


def unlabelled(split: Split) -> Split:
    """The split with its labels replaced by -1."""
    return replace(split, labels=torch.full_like(split.labels, -1))


Normalization = tuple[tuple[float, ...], tuple[float, ...]]
DIGITS: Normalization = ((0.5,), (0.5,))  # [0, 1] → [-1, 1]


def as_input(images: Tensor, channels: int, normalization: Normalization = DIGITS) -> Tensor:
    """uint8 batch → float, normalised with the backbone's per-channel (mean, std) of [0, 1]
    images, grey images repeated to `channels`, in channels-last layout (convolutions run
    markedly faster in it on CPU and on tensor-core GPUs)."""
    x = images.expand(-1, channels, -1, -1) if images.shape[1] != channels else images
    x = x.contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    # Channels-last memory is (n, h, w, c): seen as rows of w * c values, the per-channel
    # affine is one vectorised pass with the channels' pattern repeated along a row.
    rows = x.permute(0, 2, 3, 1).reshape(n * h, w * c).float()
    scale, shift = _affine(normalization, c, w, x.device)
    rows = torch.addcmul(shift, rows, scale, out=rows)  # x / 255 / std - mean / std
    return rows.view(n, h, w, c).permute(0, 3, 1, 2)


@functools.lru_cache(maxsize=16)
def _affine(normalization: Normalization, channels: int, width: int,
            device: torch.device) -> tuple[Tensor, Tensor]:
    mean, std = (torch.tensor(v, dtype=torch.float32).expand(channels) for v in normalization)
    return (1 / (255 * std)).repeat(width).to(device), (-mean / std).repeat(width).to(device)


def default_cache_dir(root: Path) -> Path:
    """The data root when it is writable by its permission bits (not merely because we are
    root), else the user's cache directory."""
    writable = root.is_dir() and os.access(root, os.W_OK) and root.stat().st_mode & 0o222
    if writable:
        return root
    return cache_folder()


def build_pair(
    source: DomainLoader,
    target: DomainLoader,
    root: str | Path,
    download: bool = False,
    cache_dir: str | Path | None = None,
    source_val_size: float = 5000,
    target_val_size: float = 1000,
    image_size: int | None = None,
    split_seed: int = 0,
    augment: Augment | None = None,
) -> DomainPair:
    """Load both domains, bring them to one image size, and hold out a validation split from
    each domain's train split (a size below 1 is a fraction of the train split).

    The validation splits depend on `split_seed` only, not on the run's seed, so that runs with
    different seeds are selected on the same held-out samples.
    """
    root = Path(root).expanduser()
    ctx = DataContext(root, download, Path(cache_dir).expanduser() if cache_dir
                      else default_cache_dir(root))
    src, tgt = source(ctx), target(ctx)
    size = image_size or src.train.side
    src, tgt = (replace(d, train=d.train.resized(size), test=d.test.resized(size))
                for d in (src, tgt))
    if src.num_classes != tgt.num_classes:
        raise ValueError(f"{src.name} has {src.num_classes} classes but {tgt.name} has "
                         f"{tgt.num_classes}")
    src, source_val = _hold_out(src, source_val_size, split_seed, "data.source_val_size")
    # A different stream of the same seed: the two domains' draws do not mirror each other.
    # Target validation images carry no labels into training, so under a transductive
    # protocol they stay in the target train split, which is then the whole domain.
    tgt, target_val = _hold_out(tgt, target_val_size, split_seed + 1, "data.target_val_size",
                                keep_in_train=tgt.transductive)
    return DomainPair(src, tgt, source_val, target_val, augment)


def _hold_out(domain: Domain, size: float, seed: int, key: str,
              keep_in_train: bool = False) -> tuple[Domain, Split]:
    n = len(domain.train)
    fraction = 0 < size < 1
    count = round(size * n) if fraction else int(size)
    if not 0 <= count < n or (not fraction and count != size):
        raise UserError(f"{key}={size} must be in [0, {n}) for {domain.name} (or a fraction "
                        "in (0, 1) of its train split)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = perm[:count], perm[count:]
    if keep_in_train:
        return domain, domain.train.subset(val)
    return replace(domain, train=domain.train.subset(train)), domain.train.subset(val)


class BatchStream:
    """Endless mini-batches from one split: a fresh permutation per epoch, drawn from the
    stream's own generator, and, with `augment`, random augmentation drawn from a second one;
    both generators are part of the state, so a position is checkpointed and restored
    exactly."""

    def __init__(self, split: Split, batch_size: int, seed: int,
                 augment: Augment | None = None) -> None:
        self.split = split
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.augment = augment
        # Its own seed, mixed from the stream's, so augmenting does not change the batch order.
        self.augment_generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]))
        self.order = torch.empty(0, dtype=torch.long)
        self.position = 0

    def next(self) -> tuple[Tensor, Tensor]:
        while len(self.order) - self.position < self.batch_size:
            fresh = torch.randperm(len(self.split), generator=self.generator)
            self.order = torch.cat([self.order[self.position:], fresh])
            self.position = 0
        index = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        images, labels = self.split.take(index)
        if self.augment:
            images = self.augment(images, self.augment_generator)
        return images, labels

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order,
                "position": self.position, "augment": self.augment_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        if "augment" in state:  # checkpoints from before augmentation existed have none
            self.augment_generator.set_state(state["augment"])
        self.order, self.position = state["order"], state["position"]
