"""Domains from folders of images in torchvision's `ImageFolder` layout, pairs of them, and the
standard benchmarks (Office-31, Office-Home, VisDA-2017, DomainNet) in their published layouts.

A domain folder is either one pool, `<path>/<class>/**/<image>` (the run splits it into train
and test, stratified and seeded), or already split, `<path>/train/<class>/...` and
`<path>/test/<class>/...`, or described by list files (DomainNet's `<domain>_train.txt`: one
image path per line, its class the name of its folder). Classes are matched across the two
domains by folder name, and label indices follow the sorted names, as in `ImageFolder`.
Images are decoded once into a cache (see `data.storage`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.data.augment import Augment
from transferlab.data.domain import DataContext, Domain, DomainPair, Split, build_pair
from transferlab.data.storage import CHANNEL_POLICIES, StorageOptions, image_store
from transferlab.errors import DataError, UserError

log = logging.getLogger(__name__)

# What torchvision.io.decode_image reads (jpeg, png, gif, webp); other files are skipped.
EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp"})
LAYOUTS = ("auto", "pool", "split", "lists")
TESTS = ("split", "all")
SPEC_KEYS = frozenset({"path", "name", "layout", "train_list", "test_list"})
MAX_NAMED = 10  # classes named in a mismatch message before "and N more"


@dataclass(frozen=True)
class Listing:
    """The images of one domain folder: `train` and `test` as (file, class name) lists; with
    the pool layout everything is in `train` until the run splits it."""

    path: Path
    name: str
    layout: str
    classes: tuple[str, ...]
    train: list[tuple[Path, str]]
    test: list[tuple[Path, str]]


def scan(path: str | Path, key: str, name: str | None = None, layout: str = "auto",
         train_list: str | Path | None = None, test_list: str | Path | None = None) -> Listing:
    """List a domain folder's images and classes (nothing is decoded). `key` is the config key
    of the domain (e.g. data.source), for error messages."""
    if not path:
        raise UserError(f"{key}.path is not set; pass {key}.path=<folder of class folders>")
    folder = Path(path).expanduser().absolute()  # the cache fingerprint names files by path
    if not folder.is_dir():
        raise DataError(f"{key}.path={folder} is not a folder; expected <path>/<class>/<image> "
                        "or <path>/train/<class>/<image> and <path>/test/<class>/<image>")
    if layout not in LAYOUTS:
        raise UserError(f"{key}.layout={layout} is invalid: must be one of {', '.join(LAYOUTS)}")
    if train_list or test_list:
        layout = "lists"
    elif layout == "auto":
        layout = "split" if (folder / "train").is_dir() and (folder / "test").is_dir() else "pool"
    skipped: list[Path] = []
    if layout == "lists":
        if not (train_list and test_list):
            raise UserError(f"{key}.train_list and {key}.test_list must both be set for the "
                            "list layout")
        train, test = (_read_list(Path(f).expanduser(), key) for f in (train_list, test_list))
    elif layout == "split":
        train, test = (_walk(folder / part, key, skipped) for part in ("train", "test"))
    else:
        train, test = _walk(folder, key, skipped), []
    if skipped:
        kinds = ", ".join(sorted({p.suffix or p.name for p in skipped})[:5])
        log.warning(f"note: skipped {len(skipped)} files under {folder} that torchvision.io "
                    f"does not decode ({kinds})")
    classes = tuple(sorted({c for _, c in train}))
    if layout != "pool":
        _same_classes(classes, tuple(sorted({c for _, c in test})), f"{folder} train",
                      f"{folder} test")
    if not classes:
        raise DataError(f"{key}.path={folder} holds no class folders with images "
                        f"({', '.join(sorted(EXTENSIONS))})")
    if len(classes) < 2:
        raise DataError(f"{key}.path={folder} holds one class ({classes[0]}): classification "
                        "needs at least two; add a folder of images per class")
    return Listing(folder, name or folder.name, layout, classes, train, test)


def _walk(folder: Path, key: str, skipped: list[Path]) -> list[tuple[Path, str]]:
    """Every decodable image under each class folder of `folder` (recursively, sorted, hidden
    files ignored), with its class."""
    if not folder.is_dir():
        raise DataError(f"{key}: {folder} is not a folder")
    items: list[tuple[Path, str]] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        found = []
        for root, dirs, files in os.walk(entry.path, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                file = Path(root, name)
                (found if file.suffix.lower() in EXTENSIONS else skipped).append(file)
        if not found:
            raise DataError(f"{key}: class folder {entry.path} holds no image torchvision.io "
                            f"decodes ({', '.join(sorted(EXTENSIONS))})")
        items += [(f, entry.name) for f in found]
    return items


def _read_list(list_file: Path, key: str) -> list[tuple[Path, str]]:
    """`<relative path> [label]` per line, relative to the list file's folder (the label is
    ignored: the class is the name of the image's folder)."""
    try:
        lines = list_file.read_text().split("\n")
    except OSError as e:
        raise DataError(f"{key}: cannot read the list file {list_file} ({e.strerror})") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        path, _, label = line.strip().rpartition(" ")
        file = list_file.parent / (path if label.lstrip("-").isdigit() else line.strip())
        if not file.is_file():
            raise DataError(f"{key}: {list_file} line {number} names {file}, which does not exist")
        items.append((file, file.parent.name))
    return items


def _same_classes(expected: tuple[str, ...], found: tuple[str, ...], expected_where: str,
                  found_where: str) -> None:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        parts = [f"missing in {found_where}: {_names(missing)}" if missing else "",
                 f"extra in {found_where}: {_names(extra)}" if extra else ""]
        raise DataError(f"classes differ between {expected_where} and {found_where}: "
                        f"{'; '.join(p for p in parts if p)}")


def _names(classes: list[str]) -> str:
    more = f" and {len(classes) - MAX_NAMED} more" if len(classes) > MAX_NAMED else ""
    return ", ".join(classes[:MAX_NAMED]) + more


def load_listing(ctx: DataContext, listing: Listing, storage: StorageOptions,
                 test: str = "split", test_fraction: float = 0.2, split_seed: int = 0,
                 channels: int | str = "auto") -> Domain:
    """Decode (or find cached) a scanned domain's images and make its train and test splits.
    `test`: "split" (the folder's test images, or for a pool a stratified `test_fraction` of
    each class, drawn with `split_seed`) or "all" (the whole domain; see Domain.transductive)."""
    files = [f for f, _ in listing.train + listing.test]
    index = {c: i for i, c in enumerate(listing.classes)}
    labels = torch.tensor([index[c] for _, c in listing.train + listing.test], dtype=torch.long)
    store, mapped = image_store(files, listing.name, ctx.cache_dir, storage, channels)
    everything = torch.arange(len(files))
    if test == "all":
        train_rows = test_rows = everything
    elif listing.layout == "pool":
        train_rows, test_rows = _stratified_split(labels, test_fraction, split_seed, listing)
    else:
        train_rows, test_rows = everything[: len(listing.train)], everything[len(listing.train):]

    def split(rows: torch.Tensor) -> Split:
        return Split(store, labels[rows], rows, mapped)

    return Domain(listing.name, split(train_rows), split(test_rows), len(listing.classes),
                  transductive=test == "all")


def _stratified_split(labels: torch.Tensor, fraction: float, seed: int,
                      listing: Listing) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of train and test: `fraction` of each class (rounded) to test, at random."""
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero().squeeze(1)
        rows = rows[torch.randperm(len(rows), generator=generator)]
        count = round(fraction * len(rows))
        if count == len(rows) or count == 0:
            which = "train" if count else "test"
            raise UserError(f"data.test_fraction={fraction} leaves no {which} image of class "
                            f"{listing.classes[c]} in {listing.path} ({len(rows)} images); "
                            "add images of it or change data.test_fraction")
        test.append(rows[:count])
        train.append(rows[count:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def folder_pair(source: Mapping[str, Any], target: Mapping[str, Any], root: str | Path,
                download: bool = False, cache_dir: str | Path | None = None,
                source_val_size: float = 0.1, target_val_size: float = 0.1,
                split_seed: int = 0, test_fraction: float = 0.2, storage_size: int = 256,
                storage_fit: str = "stretch", in_memory: bool | str = "auto",
                in_memory_max_mb: float | None = None, workers: int | None = None,
                augment: Augment | None = None) -> DomainPair:
    """A pair of image-folder domains. `source` and `target` hold each domain's `path` and
    optionally `name`, `layout` (auto, pool, split, lists), `train_list`/`test_list`,
    `test` (split, all) and `channels` (auto, 1, 3). Classes must match by name."""
    if not 0 < test_fraction < 1:
        raise UserError(f"data.test_fraction={test_fraction} is invalid: must be in (0, 1)")
    storage = StorageOptions(storage_size, storage_fit, in_memory, in_memory_max_mb, workers)
    loaders = []
    listings = []
    for side, spec in (("source", dict(source)), ("target", dict(target))):
        key = f"data.{side}"
        test, channels = spec.pop("test", "split"), spec.pop("channels", "auto")
        if test not in TESTS:
            raise UserError(f"{key}.test={test} is invalid: must be one of {', '.join(TESTS)}")
        if channels not in CHANNEL_POLICIES:
            raise UserError(f"{key}.channels={channels} is invalid: must be one of auto, 1, 3")
        unknown = sorted(set(spec) - SPEC_KEYS)
        if unknown:
            raise UserError(f"{key}.{unknown[0]} is not a setting of a domain folder; valid: "
                            f"{', '.join(sorted(SPEC_KEYS | {'test', 'channels'}))}")
        listing = scan(key=key, **spec)
        listings.append(listing)
        # Different seeds for the two domains' pools, so that their splits do not mirror.
        seed = int(np.random.SeedSequence([split_seed, 2, len(loaders)]).generate_state(1)[0])
        loaders.append(partial(load_listing, listing=listing, storage=storage, test=test,
                               test_fraction=test_fraction, split_seed=seed,
                               channels=channels))
    src, tgt = listings
    _same_classes(src.classes, tgt.classes, f"source ({src.path})", f"target ({tgt.path})")
    return build_pair(loaders[0], loaders[1], root, download, cache_dir, source_val_size,
                      target_val_size, storage_size, split_seed, augment)


def benchmark_pair(benchmark: str, task: str, path: str | Path,
                   domains: Mapping[str, Mapping[str, Any]],
                   source: Mapping[str, Any] | None = None,
                   target: Mapping[str, Any] | None = None, **common: Any) -> DomainPair:
    """A task of a benchmark, e.g. "A2W" of Office-31: source domain A, target domain W, each
    from `domains` (letter → name, path relative to `path`, optional list files), merged over
    the `source` and `target` settings (e.g. `test: all`, the benchmark's protocol)."""
    match = re.fullmatch(r"(\w+?)2(\w+)", str(task))
    if not match or not {match[1], match[2]} <= set(domains) or match[1] == match[2]:
        tasks = [f"{s}2{t}" for s in domains for t in domains if s != t]
        raise UserError(f"data.task={task} is not a task of {benchmark}; valid: "
                        f"{', '.join(tasks)}")
    root = Path(path).expanduser()
    specs = []
    for letter, spec in zip(match.groups(), (source, target), strict=True):
        domain = dict(domains[letter])
        for list_key in ("train_list", "test_list"):
            if domain.get(list_key):
                domain[list_key] = root / domain[list_key]
        specs.append({**dict(spec or {}), **domain, "path": root / domain["path"]})
    return folder_pair(specs[0], specs[1], **common)
