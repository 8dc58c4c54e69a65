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
Minor page faults per step of the DANN update (64 + 64 images, 2 threads, 50 steps, each in a
fresh process, on the 2-core CPU of docs/RESULTS.md), from
`MALLOC_MMAP_THRESHOLD_=M MALLOC_TRIM_THRESHOLD_=T python scripts/bench.py --malloc off
--part a --shape 3 28 10 --steps 50` (nothing loaded) and `... --part b` (our loop, after
loading MNIST→MNIST-M); glibc reads these variables at start-up as mallopt would set them:

    mmap / trim threshold          (a) nothing loaded   (b) after loading
    glibc's defaults (dynamic)          5,057                 0
    4 MiB / 1 GiB                       5,534             4,205
    16 MiB / 1 GiB                         28                 0
    32 MiB / 32 MiB                       190               302
    32 MiB / 128 MiB                        0                 0
    32 MiB / 1 GiB (these)                  4                 0

A threshold below the largest per-step buffer keeps the faults, and pinning it low is worse
than glibc's luck; a trim threshold near the step's own heap use trims and regrows the heap.
32 MiB is also the most glibc's own adjustment ever reaches on 64-bit systems, and a value
every 64-bit glibc accepts, so this is the lucky state made deterministic, not a new regime:
blocks above it (batches of more than about 220 images per domain with this CNN, evaluation
batches of 2048) still go to
`mmap` and back. 1 GiB of trim threshold leaves room for batches and models several times
larger; what it keeps is at most the heap the run itself has used (max RSS 1,328 MB instead
of 1,273 MB in (b)). Speed with and without: docs/RESULTS.md, Speed.
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
