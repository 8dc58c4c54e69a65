"""A stored first stage is reused only when everything it depends on is the same, and a run
that reuses it ends exactly as one that trains it (on CPU)."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import TINY_FAST, run_cli
from helpers import compose_config, run_in_process, scalar_tags
from transferlab.data.augment import Augment
from transferlab.experiment import build, build_evaluators
from transferlab.stage_cache import StageCache
from transferlab.train import TrainerConfig

RUN = ("trainer.steps=6", "trainer.eval_every=3", "trainer.log_every=1")


def _without_times(record: dict) -> tuple[dict, list]:
    return record["metrics"], [{k: v for k, v in h.items() if k != "time_s"}
                               for h in record["history"]]


def _cached(tmp_path: Path) -> str:
    return f"trainer.stage_cache={tmp_path / 'stages'}"


def test_adda_reusing_source_only_training_ends_exactly_as_training_it(tmp_path: Path):
    # A backbone with dropout and noise: the stage draws random numbers, and ADDA draws its
    # discriminator's weights before it, source-only does not.
    run = (*RUN, "backbone=dirtt_small", "trainer.batch_size=16")
    source_only = run_in_process(tmp_path / "source_only", *run, _cached(tmp_path))
    assert [e["action"] for e in source_only["stage_cache"]] == ["stored"]
    reused = run_in_process(tmp_path / "reused", "method=adda", *run, _cached(tmp_path))
    trained = run_in_process(tmp_path / "trained", "method=adda", *run,
                             "trainer.reuse_stages=false")
    assert _without_times(reused) == _without_times(trained)
    (event,) = reused["stage_cache"]
    assert (event["action"], event["stage"]) == ("reused", "pretrain")
    assert event["made_by"] == str(tmp_path / "source_only")
    assert trained["stage_cache"] == "off"
    # The pretraining's curves are in the reusing run's TensorBoard too, under its stage name.
    reused_tags, trained_tags = scalar_tags(tmp_path / "reused"), scalar_tags(tmp_path / "trained")
    assert reused_tags["loss/classification"] == trained_tags["loss/classification"]
    assert reused_tags["lr/pretrain"] == trained_tags["lr/pretrain"]
    assert (tmp_path / "reused" / "checkpoints" / "last.pt").exists()


def test_dirtt_reusing_a_vada_run_ends_exactly_as_training_it(tmp_path: Path):
    # DIRT-T carries on with VADA's Adam: the stored stage must bring the optimizer's state.
    small = ("trainer.batch_size=16", "trainer.log_every=1")
    run_in_process(tmp_path / "vada", "method=vada", *RUN, *small, _cached(tmp_path))
    reused = run_in_process(tmp_path / "reused", "method=dirtt", *RUN, *small,
                            _cached(tmp_path))
    trained = run_in_process(tmp_path / "trained", "method=dirtt", *RUN, *small,
                             "trainer.reuse_stages=false")
    assert reused["stage_cache"][0]["action"] == "reused"
    assert _without_times(reused) == _without_times(trained)


def test_a_stage_is_not_reused_when_an_input_changed(tmp_path: Path, monkeypatch):
    def actions(name: str, *overrides: str) -> list[str]:
        record = run_in_process(tmp_path / name, *RUN, *overrides, _cached(tmp_path))
        return [e["action"] for e in record["stage_cache"]]

    assert actions("first") == ["stored"]
    for change in ("seed=1", "trainer.optimizer.lr=0.02", "trainer.eval_every=2",
                   "trainer.flush_denormal=false"):
        assert actions(change, change) == ["stored"], change
    assert actions("again", "trainer.log_every=2") == ["reused"]  # logging is not an input
    monkeypatch.setattr("transferlab.stage_cache.code_version", lambda: "edited")
    assert actions("edited") == ["stored"]


def test_the_fingerprint_covers_seed_augmentation_starting_weights_and_data(tmp_path: Path):
    cfg = compose_config("data=tiny", "device=cpu", "method=adda")
    pair, method = build(cfg, torch.device("cpu"))
    stage = method.stages(pair.training_view(False))[0]
    cache = StageCache(tmp_path, origin="test")
    loop = TrainerConfig(batch_size=8, eval_every=3)

    def key(seed: int = 0, augment: dict | None = None) -> str:
        return cache.key(stage, method, seed=seed, index=0, first_step=0, eval_steps=[3, 6],
                         batch_size=loop.batch_size, eval_batch_size=loop.eval_batch_size,
                         precision="fp32", device=torch.device("cpu"), channels=pair.channels,
                         augment=augment, evaluation_splits=pair.splits(),
                         evaluators=build_evaluators(cfg))

    first = key()
    assert key() == first
    assert key(seed=1) != first  # the streams' order, whatever the weights
    assert key(augment=vars(Augment(size=16))) != first  # augmented batches train differently
    with torch.no_grad():
        method.network.head[0].bias[0] += 1e-6
    moved = key()
    assert moved != first
    stage.data["labelled"].store[0, 0, 0, 0] ^= 1
    assert key() != moved


def test_a_reused_stage_is_announced_on_the_console_and_in_the_job_log(tmp_path: Path):
    common = (*TINY_FAST, "trainer.steps=4", "trainer.eval_every=4")
    run_cli("method=source_only", *common, f"hydra.run.dir={tmp_path / 'first'}", cwd=tmp_path)
    second = run_cli("method=adda", *common, f"hydra.run.dir={tmp_path / 'second'}",
                     cwd=tmp_path)
    announced = "stage pretrain: reusing "
    assert announced in second.stdout
    assert announced in (tmp_path / "second" / "transferlab.log").read_text()
