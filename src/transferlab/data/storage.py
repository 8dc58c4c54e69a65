"""Image stores that scale past memory: decode a list of image files once, in parallel, into a
uint8 cache file, then use it in memory or memory-mapped.

A store is one (N, C, S, S) uint8 tensor either way; `Split.take` indexes it and moves the
batch to the device, so the training loop cannot tell the two apart (and a test checks that
they give identical batches and metrics). The cache file is raw bytes with a JSON sidecar:

    <cache_dir>/folders/<name>-<fingerprint>.u8     the images, (N, H, W, C) bytes
    <cache_dir>/folders/<name>-<fingerprint>.json   that shape, digests

Pixels are stored channels-last, as images usually are: the store is then a channels-last view
(N, C, H, W), whose crops torch resizes several times faster than planar ones, and batches
reach the network in the layout it runs fastest in.

The fingerprint covers the files (paths, sizes, modification times), the storage size and fit,
the channel policy and the torchvision version (its decoders make the pixels), so any change
makes a new cache. A cache that fails its integrity check (size, and the SHA-256 of sampled
blocks; of every byte when it is loaded into memory) is named and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image
from tqdm import tqdm

from transferlab.data.augment import resize
from transferlab.errors import DataError, UserError
from transferlab.files import FileLock, commit, write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAX_BAD = 10  # undecodable files named in the message, before "and N more"
FITS = ("stretch", "crop")
CHANNEL_POLICIES = ("auto", 1, 3)
# PIL modes of images without colour; anything else (palette images included) is stored as RGB.
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})
SAMPLED_BLOCKS, BLOCK = 64, 1 << 16
READ_CHUNK = 1 << 26
DECODE_CHUNK = 64  # images per task handed to a decoding thread


@dataclass(frozen=True)
class StorageOptions:
    """`size`: the stored side in pixels; `fit`: "stretch" resizes each image to size x size
    (the papers' "resize to 256x256"), "crop" resizes its shorter side to `size` and keeps
    the central square. `in_memory`: True, False (memory-map), or "auto": load when the store
    takes at most `in_memory_max_mb` (None: half the memory available now). `workers`:
    decoding threads (None: one per core)."""

    size: int = 256
    fit: str = "stretch"
    in_memory: bool | str = "auto"
    in_memory_max_mb: float | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise UserError(f"data.storage_size={self.size} is invalid: must be an integer >= 1")
        if self.fit not in FITS:
            raise UserError(f"data.storage_fit={self.fit} is invalid: must be one of "
                            f"{', '.join(FITS)}")
        if self.in_memory not in (True, False, "auto"):
            raise UserError(f"data.in_memory={self.in_memory} is invalid: must be one of auto, "
                            "true, false")
        if self.in_memory_max_mb is not None and not self.in_memory_max_mb >= 0:
            raise UserError(f"data.in_memory_max_mb={self.in_memory_max_mb} is invalid: must be "
                            "a number >= 0 or null")
        if self.workers is not None and not (isinstance(self.workers, int) and self.workers >= 1):
            raise UserError(f"data.workers={self.workers} is invalid: must be an integer >= 1 "
                            "or null")


def image_store(files: Sequence[Path], name: str, cache_dir: Path, options: StorageOptions,
                channels: int | str = "auto") -> tuple[Tensor, bool]:
    """The images of `files` as one uint8 (N, C, S, S) store (channels-last), in `files` order,
    from the cache (made first if it is missing or damaged); and whether it is memory-mapped."""
    fingerprint = _fingerprint(files, options, channels)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "images"
    path = cache_dir / "folders" / f"{slug}-{fingerprint[:16]}.u8"
    with _locked(path):
        meta = _valid_meta(path, fingerprint)
        if meta is None:
            meta = _build(files, name, path, fingerprint, options, channels)
        shape = tuple(meta["shape"])
        nbytes = int(np.prod(shape))
        if not _fits_in_memory(nbytes, options):
            return _mapped(path, shape).permute(0, 3, 1, 2), True
        store = _read(path, shape, meta["sha256"])
        if store is None:
            meta = _build(files, name, path, fingerprint, options, channels)
            store = _read(path, shape, meta["sha256"])
        return store.permute(0, 3, 1, 2), False


def available_memory() -> int:
    """Bytes the kernel says a new allocation can get without swapping (MemAvailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _fits_in_memory(nbytes: int, options: StorageOptions) -> bool:
    if options.in_memory != "auto":
        return bool(options.in_memory)
    if options.in_memory_max_mb is not None:
        return nbytes <= options.in_memory_max_mb * 2**20
    return nbytes <= available_memory() // 2


def decode(path: Path, channels: int, size: int, fit: str) -> Tensor:
    """One image file → uint8 (channels, size, size), with torchvision's decoders."""
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    try:
        image = decode_image(str(path), mode=mode)
    except (RuntimeError, ValueError, OSError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot decode {path} ({reason}); remove or replace the file") from None
    if image.dim() == 4:  # an animated GIF: its first frame
        image = image[0]
    if image.dtype != torch.uint8:  # 16-bit PNGs
        image = torchvision.transforms.v2.functional.to_dtype(image, torch.uint8, scale=True)
    image = image[None]
    if fit == "crop":
        height, width = image.shape[-2:]
        scale = size / min(height, width)
        shape = (max(size, round(height * scale)), max(size, round(width * scale)))
        image = F.interpolate(image, size=shape, mode="bilinear", antialias=True,
                              align_corners=False)
        top, left = (shape[0] - size) // 2, (shape[1] - size) // 2
        image = image[:, :, top : top + size, left : left + size]
    return resize(image, size)[0]


def headers(files: Sequence[Path], workers: int | None) -> tuple[bool, int]:
    """From the files' headers: whether every image is greyscale (a grey image among colour
    ones is stored as RGB, grey repeated: colour is never thrown away), and the longest side
    of any image (0 where PIL cannot read a header)."""
    with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        found = list(pool.map(_header, files, chunksize=DECODE_CHUNK))
    return all(grey for grey, _ in found), max((side for _, side in found), default=0)


def _header(path: Path) -> tuple[bool, int]:
    try:
        with Image.open(path) as image:  # reads the header only
            return image.mode in GREY_MODES, max(image.size)
    except (UnidentifiedImageError, OSError):
        return False, 0  # a format PIL does not know (torchvision may): store it as colour


def _fingerprint(files: Sequence[Path], options: StorageOptions, channels: int | str) -> str:
    h = hashlib.sha256(json.dumps({
        "format": FORMAT_VERSION, "torchvision": torchvision.__version__, "size": options.size,
        "fit": options.fit, "channels": channels}).encode())
    for path in files:
        try:
            stat = path.stat()
        except OSError as e:
            raise DataError(f"cannot read {path} ({e.strerror})") from None
        h.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _build(files: Sequence[Path], name: str, path: Path, fingerprint: str,
           options: StorageOptions, policy: int | str) -> dict:
    """Decode every file into a temporary cache file with a pool of threads (torchvision's
    decoders and torch's resize release the GIL), then digest it and move it into place."""
    grey, largest = headers(files, options.workers)
    channels = policy if policy != "auto" else (1 if grey else 3)
    size = min(options.size, largest) if largest else options.size
    if size < options.size:
        log.info(f"storing {name} at {size} px, its largest image's side, not the "
                 f"{options.size} px data.storage_size asks for: a larger store adds no detail")
    options = replace(options, size=size)
    shape = (len(files), size, size, channels)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        _decode_into(tmp, files, shape, name, options)
        meta = {"fingerprint": fingerprint, "shape": list(shape), "channels": channels,
                "sha256": _digest(tmp), "sampled_sha256": _sampled_digest(tmp)}
        commit(tmp, path)
        write_json(path.with_suffix(".json"), meta, indent=1)
    except OSError as e:
        raise _unwritable(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)
    return meta


def _decode_into(file: Path, files: Sequence[Path], shape: tuple[int, int, int, int],
                 name: str, options: StorageOptions) -> None:
    out = np.memmap(file, dtype=np.uint8, mode="w+", shape=shape)
    bad: list[str] = []  # every file that cannot be decoded, so one pass names them all

    def work(start: int) -> int:
        chunk = files[start : start + DECODE_CHUNK]
        for i, path in enumerate(chunk, start):
            try:
                image = decode(path, shape[3], options.size, options.fit)
            except DataError as e:
                bad.append(str(e).removeprefix("cannot decode ").split("; remove")[0])
                continue
            out[i] = image.permute(1, 2, 0).numpy()
        return len(chunk)

    with ThreadPoolExecutor(options.workers or os.cpu_count()) as pool, tqdm(
            total=len(files), desc=f"decoding {name}", unit="img", disable=None) as bar:
        for done in pool.map(work, range(0, len(files), DECODE_CHUNK)):
            bar.update(done)
    out.flush()
    if bad:
        shown = "; ".join(sorted(bad)[:MAX_BAD]) + (
            f"; and {len(bad) - MAX_BAD} more" if len(bad) > MAX_BAD else "")
        raise DataError(f"cannot decode {len(bad)} of {len(files)} files of {name}: {shown}; "
                        "remove or replace them")


def _valid_meta(path: Path, fingerprint: str) -> dict | None:
    """The cache's metadata if the cache is there, whole and of these files; None if absent;
    if damaged, it says so (and the caller rebuilds it)."""
    meta_path = path.with_suffix(".json")
    if not path.exists() and not meta_path.exists():
        return None
    problem = None
    try:
        meta = json.loads(meta_path.read_text())
        if meta["fingerprint"] != fingerprint:
            problem = "its metadata belongs to other files"
        elif path.stat().st_size != int(np.prod(meta["shape"])):
            problem = (f"{path.stat().st_size} bytes instead of "
                       f"{int(np.prod(meta['shape']))}")
        elif _sampled_digest(path) != meta["sampled_sha256"]:
            problem = "its content does not match its checksum"
    except (OSError, ValueError, KeyError, TypeError) as e:
        problem = f"unreadable: {type(e).__name__}"
    if problem is None:
        return meta
    log.warning(f"image cache {path} is damaged ({problem}); rebuilding it")
    return None


def _read(path: Path, shape: tuple[int, ...], sha256: str) -> Tensor | None:
    """The whole cache in memory, checked byte for byte while it is read; None (and a line
    naming the file) if it does not match its checksum."""
    store = torch.empty(shape, dtype=torch.uint8)
    flat = store.numpy().reshape(-1)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for start in range(0, len(flat), READ_CHUNK):
            view = memoryview(flat[start : start + READ_CHUNK])
            got = f.readinto(view)
            h.update(view[:got])
    if h.hexdigest() != sha256:
        log.warning(f"image cache {path} is damaged (its content does not match its "
                    "checksum); rebuilding it")
        return None
    return store


def _mapped(path: Path, shape: tuple[int, ...]) -> Tensor:
    """The cache memory-mapped read-only: pages are read from the file as batches touch them
    and count as page cache, not as the process's own memory."""
    array = np.memmap(path, dtype=np.uint8, mode="r", shape=shape)
    with warnings.catch_warnings():
        # torch warns that the array is read-only; nothing ever writes to a store.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(READ_CHUNK):
            h.update(block)
    return h.hexdigest()


def _sampled_digest(path: Path) -> str:
    """SHA-256 of `SAMPLED_BLOCKS` blocks spread evenly over the file, the last one included:
    catches truncation, holes and most damage without reading a large cache whole."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for offset in sorted({int(o) for o in np.linspace(0, max(size - BLOCK, 0),
                                                          SAMPLED_BLOCKS)}):
            f.seek(offset)
            h.update(f.read(BLOCK))
    return h.hexdigest()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One process builds a given cache; others (parallel sweep jobs) wait for it, then find
    it made."""
    lock = FileLock(path.with_suffix(".lock"))
    try:
        lock.acquire(wait=True)
    except OSError as e:
        raise _unwritable(path, e) from None
    try:
        yield
    finally:
        lock.release()


def _unwritable(path: Path, error: OSError) -> DataError:
    return DataError(f"cannot write the image cache {path} ({error.strerror or error}); set "
                     "data.cache_dir to a writable folder with room for it")
