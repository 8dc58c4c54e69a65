"""In-process runs through the same path as the CLI (compose → run), for fast method tests."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from transferlab.config import CONFIG_DIR, compose
from transferlab.experiment import run

GROUPS = ("data", "backbone", "method")


def choices_of(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def method_overrides(name: str) -> list[str]:
    """`method=<name>` and what that method needs of the default backbone (batch norm for
    the test-time methods), as studies add them for `method=ALL`."""
    from transferlab.studies import backbone_overrides

    return [f"method={name}", *backbone_overrides([f"method={name}"])]


def compose_config(*overrides: str) -> DictConfig:
    return compose(overrides)


def run_in_process(out_dir: Path, *overrides: str) -> dict:
    cfg = compose_config("data=tiny", "device=cpu", "trainer.progress_bar=false", *overrides)
    chosen = dict(o.split("=", 1) for o in ("data=tiny", *overrides) if o.split("=")[0] in GROUPS)
    choices = {"data": "tiny", "backbone": "dann_mnist", "method": "source_only", **chosen}
    out_dir.mkdir(parents=True, exist_ok=True)
    run(cfg, out_dir, choices)
    return json.loads((out_dir / "results.json").read_text())


def scalar_tags(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
