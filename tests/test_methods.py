"""Each method trains on the tiny pair through the real entrypoint path, plus the properties
that define ADDA and fine-tune."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from helpers import choices_of, compose_config, method_overrides, run_in_process, scalar_tags
from transferlab.data.domain import Split
from transferlab.evaluation.base import metric_tag
from transferlab.experiment import build, build_evaluators
from transferlab.train import TrainerConfig, fit

FAST = ("trainer.steps=8", "trainer.eval_every=4", "trainer.log_every=1")


@pytest.mark.parametrize("method", choices_of("method"))
def test_every_method_runs_and_writes_results(tmp_path: Path, method: str):
    record = run_in_process(tmp_path, *method_overrides(method), *FAST)
    assert record["status"] == "completed"
    assert record["choices"]["method"] == method
    assert record["steps"] == record["history"][-1]["step"] > 0
    tags = scalar_tags(tmp_path)
    for name, value in record["metrics"].items():
        assert value == record["history"][-1][name]
        assert tags[metric_tag(name)][-1] == pytest.approx(value)


def test_source_only_learns_the_tiny_source_domain(tmp_path: Path):
    record = run_in_process(tmp_path, "trainer.steps=150", "trainer.eval_every=150")
    assert record["metrics"]["source_acc"] > 0.8


def test_dann_logs_lambda_domain_loss_and_domain_accuracy(tmp_path: Path):
    run_in_process(tmp_path, "method=dann", *FAST)
    tags = scalar_tags(tmp_path)
    assert tags["dann/lambda"][0] == 0.0 and tags["dann/lambda"][-1] > 0.5
    assert len(tags["loss/domain"]) == 8 and len(tags["dann/domain_acc"]) == 8


def _trainer() -> TrainerConfig:
    return TrainerConfig(batch_size=32, eval_every=1000, progress_bar=False,
                         log_every=1)


def test_adda_stage_two_changes_the_target_encoder_only(tmp_path: Path):
    cfg = compose_config("data=tiny", "method=adda", "device=cpu", "trainer.steps=6")
    pair, method = build(cfg, torch.device("cpu"))
    snapshots = {}

    def log(scalars: dict, step: int) -> None:
        if step == cfg.method.pretrain_steps and "source" not in snapshots:
            snapshots["source"] = copy.deepcopy(method.network.state_dict())

    fit(method, pair, _trainer(), seed=0, log=log, evaluators=build_evaluators(cfg))
    after = method.network.state_dict()
    for name, tensor in snapshots["source"].items():
        assert torch.equal(tensor, after[name]), f"stage 2 changed the source network: {name}"
    source_encoder = method.network.encoder.state_dict()
    assert any(not torch.equal(t, source_encoder[n])
               for n, t in method.target_encoder.state_dict().items())
    assert method.adapting


def test_finetune_uses_shots_from_target_train_only():
    cfg = compose_config("data=tiny", "method=finetune", "device=cpu", "method.shots=3")
    pair, method = build(cfg, torch.device("cpu"))
    # Mark the target test split: every test image is all-255, no train image is.
    train = pair.target.train
    train = Split(train.images.clamp(max=254), train.labels)
    test = pair.target.test
    test = Split(torch.full_like(test.images, 255), test.labels)
    pair = replace(pair, target=replace(pair.target, train=train, test=test))

    stages = method.stages(pair.training_view(method.uses_target_labels))
    shots = stages[-1].data["labelled"]
    assert len(shots) == 3 * pair.num_classes
    assert torch.bincount(shots.labels, minlength=10).tolist() == [3] * 10
    assert (shots.images.flatten(1).amax(1) < 255).all()
    assert torch.equal(shots.images, train.images[method.shot_indices])
    assert method.results()["shot_indices"] == method.shot_indices.tolist()


def test_finetune_shots_depend_on_the_seed():
    picks = []
    for seed in (0, 1):
        cfg = compose_config("data=tiny", "method=finetune", "device=cpu", f"seed={seed}")
        pair, method = build(cfg, torch.device("cpu"))
        method.stages(pair.training_view(method.uses_target_labels))
        picks.append(method.shot_indices)
    assert not torch.equal(*picks)
