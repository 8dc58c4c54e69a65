"""TensorBoard HParams: one run's hyperparameters and final metrics, for comparing a sweep's runs
in TensorBoard's HParams dashboard (`tensorboard --logdir <sweep dir>`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from transferlab.rules import flatten

Scalar = bool | int | float | str

# Instantiation plumbing, not hyperparameters.
_SKIP = {"_partial_", "_target_"}


def _scalar(value: Any) -> Scalar:
    """Lists (layer widths, Adam betas) become their text so they still show as one column; None
    becomes "null" because the HParams plugin drops None values, hiding that a key was unset."""
    if isinstance(value, bool | int | float | str):
        return value
    return "null" if value is None else str(value)


def log_hparams(log_dir: Path, config: Mapping[str, Any], choices: Mapping[str, str],
                metrics: Mapping[str, float]) -> None:
    """Write the HParams summaries into `log_dir` itself, the run's own TensorBoard folder.

    `SummaryWriter.add_hparams` would write into a new timestamped subfolder, which TensorBoard
    shows as a second run next to the training curves; writing the three summaries ourselves
    keeps one run per job. Metrics are logged under `hparams/` so that they do not mix with the
    `acc/` curves of the training loop.
    """
    hparam_dict: dict[str, Scalar] = {
        **dict(choices), **{key: _scalar(value) for key, value in flatten(dict(config)).items()
                            if key.rsplit(".", 1)[-1] not in _SKIP}}
    metric_dict = {f"hparams/{name}": float(value) for name, value in metrics.items()}
    experiment, start, end = hparams(hparam_dict, metric_dict)
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for summary in (experiment, start, end):
            writer.file_writer.add_summary(summary)
        for tag, value in metric_dict.items():
            writer.add_scalar(tag, value)
