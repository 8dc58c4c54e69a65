"""Where a result came from: the code, the machine and the data, as short stable strings.

Run records (`transferlab.records`) keep them so that a table can say which rows ran on which
machine and code; the stage cache keys stored stages on them, because floating-point results
differ across code, CPUs and devices.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

PACKAGE = Path(__file__).parent


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of every source file of the transferlab package that is running."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):  # no /proc/cpuinfo: not Linux
        cpu = next((line.split(":", 1)[1].strip() for line in
                    Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return cpu


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA, else `<type>: <CPU model>`."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type}: {cpu_model()}"


def process_age() -> float | None:
    """Seconds since this process started (Linux: from /proc), None where unknown."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def machine(device: torch.device) -> dict[str, Any]:
    """What a run's speed and its last bits depend on, for its record."""
    return {"cpu": cpu_model(), "device": device_name(device),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "host": platform.node()}


def hash_tensors(digest: Any, named: Iterable[tuple[str, Tensor]], chunk: int = 2**22) -> None:
    """Feed tensors to `digest` by name, dtype, shape and bytes, rows of at most about `chunk`
    bytes at a time, so that hashing a large (or memory-mapped) store copies little."""
    for name, t in named:
        t = t.detach().reshape(1) if t.dim() == 0 else t.detach()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        rows = max(1, chunk // max(1, t[:1].numel() * t.element_size()))
        for start in range(0, len(t), rows):
            part = t[start : start + rows].cpu().contiguous().reshape(-1)
            digest.update(part.view(torch.uint8).numpy())


def data_fingerprint(splits: Mapping[str, Any], sample_bytes: int = 2**26) -> str:
    """A short hash of a pair's splits (objects with `images`-like `store`, `rows` and
    `labels`): every label and row index, and an evenly spaced sample of at most about
    `sample_bytes` of each image store, so that a data set regenerated differently (another
    MNIST-M recipe, another USPS layout) gets another fingerprint without hashing gigabytes."""
    digest = hashlib.sha256()
    stores: dict[int, int] = {}
    for name, split in sorted(splits.items()):
        store = split.store
        if id(store) not in stores:
            stores[id(store)] = len(stores)
            per_image = max(1, store[:1].numel() * store.element_size())
            step = max(1, len(store) * per_image // sample_bytes)
            hash_tensors(digest, [(f"store{stores[id(store)]}", store[::step])])
        rows = torch.arange(len(store)) if split.rows is None else split.rows
        hash_tensors(digest, [(f"{name}.rows", rows), (f"{name}.labels", split.labels)])
    return digest.hexdigest()[:16]
