"""Flush subnormal floats to zero on the CPU (`trainer.flush_denormal`).

x86 CPUs compute with subnormal float32 values (|x| < 1.18e-38) in microcode, many times slower
than with normal ones. Training can drive weights, gradients or optimizer state into that range
late in a run, and the run then slows down for reasons that have nothing to do with its work:
MCD on MNIST→MNIST-M (seed 2, resumed from its step-5,000 checkpoint, one thread) made 1 step/s
as it was and 10.7 steps/s with subnormals flushed (docs/RESULTS.md). Flushing sets the CPU's
flush-to-zero and denormals-are-zero flags, as TensorFlow does by default on the CPU: a subnormal
input or result counts as 0, a change far below float32's resolution at the scale of the values
a network trains with, but a change, so runs with and without it are not bit-identical.

The flags belong to each thread, and a thread inherits them from the thread that starts it. Set
them before torch starts its intra-op threads (the CLI does, first thing in a run); a process
whose threads are already running (a test session, a notebook) gets them on its main thread only,
which `flush_state` reports as "partly".
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

SUBNORMAL = 1e-39  # float32 keeps it as a subnormal; 0 once flushed
_GRAIN = 32768  # elements per thread in torch's parallel element-wise kernels


def flush_state() -> str:
    """"all", "none" or "partly": whether arithmetic on every intra-op thread flushes
    subnormals, read off an element-wise product large enough to run on each of them."""
    probe = torch.full((4 * _GRAIN * torch.get_num_threads(),), SUBNORMAL) * 1.0
    flushed = int((probe == 0).sum())
    return "all" if flushed == probe.numel() else "none" if flushed == 0 else "partly"


def flush_denormals(enabled: bool = True) -> bool:
    """Flush subnormals to zero in this process's CPU arithmetic, or stop flushing them; return
    whether every intra-op thread now flushes (False where the CPU has no such mode)."""
    torch.set_flush_denormal(enabled)
    state = flush_state()
    if state == "partly":
        log.warning("trainer.flush_denormal=%s reached only the main thread: torch's other "
                    "threads started before it was set, so their arithmetic %s subnormals",
                    str(enabled).lower(), "keeps" if enabled else "flushes")
    return state == "all"
