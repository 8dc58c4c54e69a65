"""TensorBoard HParams: one run's hyperparameters and final metrics, for comparing a sweep's runs
in TensorBoard's HParams dashboard (`tensorboard --logdir <sweep dir>`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

Scalar = bool | int | float | str

# Instantiation plumbing, not hyperparameters.
_SKIP = {"_partial_", "_target_"}


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """`{"trainer": {"optimizer": {"lr": 0.01}}}` → `{"trainer.optimizer.lr": 0.01}`.

    Lists (layer widths, Adam betas) become their text so they still show as one column; None
    becomes "null" because the HParams plugin drops None values, hiding that a key was unset.
    """
    flat: dict[str, Scalar] = {}
    for key, value in config.items():
        if key in _SKIP:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        elif value is None:
            flat[name] = "null"
        else:
            flat[name] = str(value)
    return flat


def log_hparams(log_dir: Path, config: Mapping[str, Any], choices: Mapping[str, str],
                metrics: Mapping[str, float]) -> None:
    """Write the HParams summaries into `log_dir` itself, the run's own TensorBoard folder.

    `SummaryWriter.add_hparams` would write into a new timestamped subfolder, which TensorBoard
    shows as a second run next to the training curves; writing the three summaries ourselves
    keeps one run per job. Metrics are logged under `hparams/` so that they do not mix with the
    `acc/` curves of the training loop.
    """
    hparam_dict: dict[str, Scalar] = {**dict(choices), **flatten(config)}
    metric_dict = {f"hparams/{name}": float(value) for name, value in metrics.items()}
    experiment, start, end = hparams(hparam_dict, metric_dict)
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for summary in (experiment, start, end):
            writer.file_writer.add_summary(summary)
        for tag, value in metric_dict.items():
            writer.add_scalar(tag, value)
