"""Pin glibc malloc's thresholds, so training speed does not depend on what ran before it.

A training step allocates and frees the same few activation and gradient buffers every step,
several MB each (the DANN MNIST CNN's first feature map is 9.4 MB at 64 + 64 images). glibc
serves a block of at least M_MMAP_THRESHOLD bytes (128 KiB at start-up) with its own `mmap` and
returns it to the kernel on `free`, so each such buffer is faulted back in, page by page, at
every step. glibc also raises that threshold by itself, up to 32 MiB, whenever a block above it
is freed: a process that first loaded a dataset (large temporary buffers, freed) has had it
raised and trains fast; the same update in a process that loaded nothing, or whose data came
through another path (memory-mapped files, a smaller dataset), pays the faults.

`tune_malloc` makes the fast state deliberate: blocks below MMAP_THRESHOLD come from the heap,
and the heap is returned to the kernel only when more than TRIM_THRESHOLD is free at its top.
Measured on the 2-core CPU of docs/RESULTS.md, the DANN update (64 + 64 images, 2 threads) in a
fresh process (`scripts/bench.py`; the numbers, and the command, in docs/RESULTS.md):

- glibc's defaults: about 6,300 minor page faults per step;
- 32 MiB / 1 GiB: about 0 per step, in a fresh process and after loading MNIST→MNIST-M alike;
- 4 MiB mmap threshold: still about 3,800 per step (the 9.4 MB buffer stays above it);
- 32 MiB mmap / 32 MiB trim threshold: about 70 per step (the heap top is trimmed and regrown).

32 MiB is the most glibc's own adjustment ever reaches, so the setting is the lucky state made
deterministic, not a new regime; blocks above it (an evaluation batch of 2048 images) still go
to `mmap` and back. 1 GiB of trim threshold leaves room for batches and models several times
larger than the defaults; what it keeps is at most the heap the run itself has already used.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 1024 * 1024 * 1024


def glibc_version() -> str | None:
    """The running glibc's version, or None where the C library is not glibc."""
    if os.name != "posix":
        return None
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # musl, macOS
        return None
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    return libc.gnu_get_libc_version().decode()


def tune_malloc(enabled: bool = True) -> bool:
    """Set glibc's mmap and trim thresholds for this process (`trainer.malloc_tuning`); return
    whether they were set. A no-op when disabled or where the C library is not glibc.

    Call it before the data is loaded: it governs the allocations that follow. Setting
    M_MMAP_THRESHOLD explicitly also switches off glibc's dynamic adjustment of it, which is
    the point: the threshold then no longer depends on which buffers happened to be freed
    earlier in the process. Disabling cannot undo an earlier call in the same process.
    """
    if not enabled:
        log.debug("malloc tuning off (trainer.malloc_tuning=false): glibc's defaults")
        return False
    version = glibc_version()
    if version is None:
        log.debug("malloc tuning skipped: the C library is not glibc")
        return False
    libc = ctypes.CDLL(None)
    applied = (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
               and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    log.debug("malloc tuning %s (glibc %s): mmap threshold %d, trim threshold %d",
              "applied" if applied else "refused by mallopt", version, MMAP_THRESHOLD,
              TRIM_THRESHOLD)
    return applied
