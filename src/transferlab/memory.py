"""Whether a batch can fit, asked before training rather than answered by the OOM killer.

On Linux a CPU process that runs out of memory is killed with SIGKILL: no exception, no
message. So before the first step the run estimates what one training step needs at least,
from the network's layer outputs measured on one sample, and refuses a batch size whose
estimate exceeds the memory available. The estimate is a lower bound (two domains' batches, the
optimiser and the evaluation come on top), so it never refuses a batch that fits; a batch
just too large can still be killed, and then leaves a `running` record that summaries list as
incomplete. Allocation failures that do raise (CUDA, or one CPU allocation larger than memory)
become one line too (`out_of_memory_explained`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from transferlab.errors import UserError

GIB = 2**30


def available_memory(device: torch.device) -> int | None:
    """Bytes this process may still allocate on `device`; None where unknown (mps)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    limits = []
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():  # Linux; other systems have no OOM killer of this kind
        fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines())
        limits.append(int(fields["MemAvailable"].split()[0]) * 1024)
    cgroup = Path("/sys/fs/cgroup")  # a container's or Slurm job's limit (cgroup v2)
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            limits.append(int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def step_memory(network: nn.Module, sample: torch.Tensor, batch_size: int) -> int:
    """At least the bytes one training step of `batch_size` needs: every layer's output (kept
    for the backward pass) and its gradient, measured on `sample`, one input (1, C, H, W)."""
    sizes: list[int] = []

    def record(module: nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() * output.element_size())

    leaves = [m for m in network.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(record) for m in leaves]
    training = network.training
    try:
        network.eval()  # no batch-norm statistics change; the outputs have the same sizes
        with torch.no_grad():
            network(sample)
    finally:
        network.train(training)
        for hook in hooks:
            hook.remove()
    return batch_size * (2 * sum(sizes) + sample.numel() * sample.element_size())


def check_batch_fits(network: nn.Module, sample: torch.Tensor, batch_size: int) -> None:
    available = available_memory(sample.device)
    needed = step_memory(network, sample, batch_size)
    if available is not None and needed > available:
        raise UserError(f"trainer.batch_size={batch_size} needs at least {needed / GIB:.1f} GiB "
                        f"for one training step but {available / GIB:.1f} GiB is available on "
                        f"{sample.device}; use a smaller trainer.batch_size")


@contextmanager
def out_of_memory_explained(batch_size: int) -> Iterator[None]:
    """An allocator's out-of-memory error (CUDA's; torch's CPU allocator raises a plain
    RuntimeError) becomes one line naming the batch size."""
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        if not isinstance(e, torch.OutOfMemoryError | MemoryError) and \
                "can't allocate memory" not in str(e):
            raise
        raise UserError(f"out of memory with trainer.batch_size={batch_size} "
                        f"({str(e).splitlines()[0][:120]}); use a smaller trainer.batch_size"
                        ) from e
