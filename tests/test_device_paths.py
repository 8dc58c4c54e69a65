"""What the GPU path depends on that a CPU can still check: the NaN check across stages and
value kinds, RNG state that leaves CUDA alone, checkpoints across GPU counts, and precision
that is recorded and keeps groups apart."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TINY_FAST, run_cli
from helpers import compose_config
from transferlab import checkpoint
from transferlab.experiment import build, build_evaluators
from transferlab.methods.base import Stage
from transferlab.summarize import Run, group_runs
from transferlab.train import FiniteCheck, NonFiniteLoss, TrainerConfig, fit, training_precision


def test_a_nan_in_adda_stage_two_is_one_line_naming_that_stages_loss(tmp_path: Path):
    result = run_cli(*TINY_FAST, "method=adda", "trainer.steps=4",
                     "method.adapt_optimizer.lr=1e38", f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "became NaN or infinite at step" in line
    name = line.split("error: ")[1].split(" became")[0]
    assert name in ("loss/discriminator", "loss/target_encoder", "adda/domain_acc")
    assert int(line.split("at step ")[1].split(";")[0]) > 4  # in the second stage


def test_finite_check_handles_plain_numbers_changing_names_and_nothing():
    check = FiniteCheck()
    check.update({"loss/a": torch.tensor(1.0), "lambda": 0.5}, 1)
    check.update(None, 2)
    check.update({}, 3)
    check.update({"loss/b": torch.tensor(2.0), "loss/c": torch.tensor(float("inf"))}, 4)
    check.update({"loss/a": torch.tensor(float("nan"))}, 5)
    with pytest.raises(NonFiniteLoss, match=r"^loss/c became NaN or infinite at step 4; .*"
                                            "no checkpoint was written yet"):
        check.raise_if_bad(None)
    host = FiniteCheck()
    host.update({"lambda": float("nan"), "loss": torch.tensor(1.0)}, 7)
    with pytest.raises(NonFiniteLoss, match=r"^lambda became NaN .* at step 7; .*last good "
                                            r"checkpoint: ck\.pt"):
        host.raise_if_bad("ck.pt")


def test_an_update_that_returns_nothing_trains_on():
    cfg = compose_config("data=tiny", "device=cpu", "trainer.steps=3")
    pair, method = build(cfg, torch.device("cpu"))
    stages = method.stages

    def silent(view):
        return [Stage(s.name, s.steps, lambda b, p, u=s.update: u(b, p) and None, s.data,
                      s.optimizers) for s in stages(view)]

    method.stages = silent
    history = fit(method, pair, TrainerConfig(batch_size=8, eval_every=3, progress_bar=False),
                  0, lambda *_: None, build_evaluators(cfg))
    assert history[-1]["step"] == 3


def test_rng_state_does_not_initialise_cuda(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("CUDA touched")

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", forbidden)
    assert checkpoint.rng_state()["cuda"] == []


def test_a_checkpoint_from_more_gpus_restores_the_ones_this_node_has(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: restored.append(d))
    state = checkpoint.rng_state()
    state["cuda"] = [torch.zeros(8, dtype=torch.uint8)] * 4  # saved on a 4-GPU node
    checkpoint.set_rng_state(state)
    assert restored == [0]


def test_precision_is_resolved_recorded_and_splits_summary_groups(tmp_path: Path):
    assert training_precision("auto", torch.device("cpu")) == "fp32"
    assert training_precision("auto", torch.device("cuda")) == "bf16"
    assert training_precision("fp32", torch.device("cuda")) == "fp32"
    from helpers import run_in_process

    record = run_in_process(tmp_path, "trainer.steps=1")
    assert record["precision"] == {"train": "fp32", "eval": "fp32"}
    runs = [Run(tmp_path / str(i), "completed", {"method": "dann"}, i, {"seed": i}, {}, 1.0,
                "", precision) for i, precision in enumerate(["fp32", "bf16", "fp32"])]
    assert sorted(len(g.runs) for g in group_runs(runs)) == [1, 2]
