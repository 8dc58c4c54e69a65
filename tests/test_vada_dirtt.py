"""VADA's and DIRT-T's updates against their equations, the moving average, DIRT-T's teacher
rule, and resume across DIRT-T's stage boundary."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, TINY_FAST, run_cli
from helpers import compose_config
from steps import assert_same_steps, batches, build_method, expected_step, sgd_step
from test_reliability import KILLER
from transferlab.experiment import build, build_evaluators
from transferlab.losses.entropy import entropy
from transferlab.losses.vat import kl_divergence, vat_loss
from transferlab.nn.backbones import dirtt_small
from transferlab.train import TrainerConfig, fit

WEIGHTS = ("method.lambda_d=0.3", "method.lambda_s=0.7", "method.lambda_t=0.2")


def test_dirtt_small_ignores_each_images_per_channel_brightness_and_contrast():
    net = dirtt_small(in_channels=3, num_classes=10, image_size=28).eval()
    x = torch.randn(4, 3, 28, 28)
    gain, shift = torch.tensor([2.0, 0.5, 3.0]).view(1, 3, 1, 1), torch.randn(4, 3, 1, 1)
    torch.testing.assert_close(net(gain * x + shift), net(x), atol=1e-4, rtol=1e-4)
    assert net.feature_dim == 64 * 7 * 7  # the discriminator sees the flattened 7x7 maps
    plain = dirtt_small(in_channels=3, num_classes=10, image_size=28, instance_norm=False)
    assert not torch.allclose(plain.eval()(gain * x + shift), plain(x), atol=1e-4)


def test_vada_update_follows_its_equation():
    pair, method = build_method("method=vada", *WEIGHTS)
    reference = copy.deepcopy(method)
    batch = batches(pair)
    (xs, ys), (xt, _) = batch["source"], batch["target"]
    got, scalars = sgd_step(method, method.update, batch,
                            optimizers=("_optimizer", "_d_optimizer"))

    net, discriminator = reference.network, reference.discriminator
    fs, ft = net.features(xs), net.features(xt)
    ls, lt = net.head(fs), net.head(ft)
    # First the discriminator learns the domains (source 0, target 1) on fixed features...
    domains = torch.tensor([0] * len(xs) + [1] * len(xt))
    F.cross_entropy(discriminator(torch.cat([fs, ft]).detach()), domains).backward()
    expected = {f"discriminator.{n}": -p.grad.clone()
                for n, p in discriminator.named_parameters()}
    with torch.no_grad():
        for p in discriminator.parameters():
            p -= p.grad
    # ...then the classifier: its encoder fools the updated discriminator (labels swapped).
    torch.manual_seed(7)  # VAT's random starts, target first as in the update
    target_vat = vat_loss(net, xt, lt, radius=3.5)
    source_vat = vat_loss(net, xs, ls, radius=3.5)
    swapped = F.cross_entropy(discriminator(torch.cat([fs, ft])), 1 - domains)
    loss = (F.cross_entropy(ls, ys) + 0.3 * swapped + 0.7 * source_vat
            + 0.2 * (entropy(lt).mean() + target_vat))
    grads = torch.autograd.grad(loss, list(net.parameters()))
    expected |= {f"network.{n}": -g for (n, _), g in zip(net.named_parameters(), grads,
                                                           strict=True)}
    assert_same_steps(got, expected)
    assert {"loss/classification", "loss/domain", "loss/discriminator", "loss/target_entropy",
            "loss/target_vat", "loss/source_vat", "vada/domain_acc"} <= set(scalars)


def test_vada_predicts_with_the_moving_average_of_its_weights():
    pair, method = build_method("method=vada", "method.ema_decay=0.9")
    start = copy.deepcopy(method.network.state_dict())
    method.update(batches(pair), 0.0)
    for name, value in method.average.state_dict().items():
        torch.testing.assert_close(value, 0.9 * start[name]
                                   + 0.1 * method.network.state_dict()[name], msg=name)
    x = batches(pair)["target"][0]
    torch.testing.assert_close(method.predict(x, "target"), method.average(x))
    assert not torch.allclose(method.predict(x, "target"), method.network(x))


def test_dirtt_refinement_follows_its_equation():
    pair, method = build_method("method=dirtt", "method.beta=0.5", "method.lambda_t=0.2")
    with torch.no_grad():  # a teacher that differs from the student, so the KL term acts
        for p in method.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    method.train()
    reference = copy.deepcopy(method)
    batch = {"target": batches(pair)["target"]}
    x = batch["target"][0]
    got, scalars = sgd_step(method, method.refine_update, batch)

    def loss():
        logits = reference.network(x)
        kl = kl_divergence(reference.teacher(x), logits).mean()
        return 0.2 * (entropy(logits).mean() + vat_loss(reference.network, x, logits, 3.5)) \
            + 0.5 * kl

    assert_same_steps(got, expected_step(reference, loss))
    assert set(scalars) == {"loss/teacher_kl", "loss/target_entropy", "loss/target_vat"}


def test_dirtt_teacher_is_the_average_model_at_the_start_and_every_k_steps():
    cfg = compose_config("data=tiny", "device=cpu", "method=dirtt", "method.vada_steps=2",
                         "method.refine_steps=7", "method.teacher_every=3")
    pair, method = build(cfg, torch.device("cpu"))
    averages, teachers = {}, {}

    def log(scalars: dict, step: int) -> None:  # called once per step (log_every=1)
        if "acc/source" not in scalars:
            averages[step] = copy.deepcopy(method.average.state_dict())
            teachers[step] = copy.deepcopy(method.teacher.state_dict())

    fit(method, pair, TrainerConfig(batch_size=16, eval_every=1000, progress_bar=False,
                                    log_every=1), seed=0, log=log,
        evaluators=build_evaluators(cfg))
    for refined in range(1, 8):  # after refinement step n: the average of step 3·⌊n/3⌋
        source = 2 + 3 * (refined // 3)
        for name, value in teachers[2 + refined].items():
            assert torch.equal(value, averages[source][name]), (refined, name)
    assert not torch.equal(averages[3]["head.0.weight"], averages[2]["head.0.weight"])
    assert int(method.refined) == 7


# DIRT-T: 6 VADA steps, then 6 refinement steps; checkpoints every 3 steps.
DIRTT_RUN = (*TINY_FAST, "method=dirtt", "trainer.steps=6", "trainer.eval_every=3",
             "trainer.checkpoint_every=3", "trainer.batch_size=16",
             "trainer.reuse_stages=false", "method.teacher_every=2")


def _history(run_dir: Path) -> tuple[dict, list]:
    record = json.loads((run_dir / "results.json").read_text())
    return record["metrics"], [{k: v for k, v in h.items() if k != "time_s"}
                               for h in record["history"]]


@pytest.fixture(scope="module")
def dirtt_uninterrupted(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("dirtt")
    run_cli(*DIRTT_RUN, f"hydra.run.dir={tmp / 'run'}", cwd=tmp)
    return tmp / "run"


def test_dirtt_resumes_exactly_across_its_stage_boundary(tmp_path: Path,
                                                         dirtt_uninterrupted: Path):
    # Killed after the first refinement step's update, before its checkpoint: the run
    # resumes from the checkpoint at the end of VADA (step 6) and must start refinement
    # exactly as the uninterrupted run did (teacher, random state, Adam's state).
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "KILL_STEP": "7"}
    killed = subprocess.run([sys.executable, "-c", KILLER, *DIRTT_RUN,
                             f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run_cli(*DIRTT_RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert "at step 6" in resumed.stdout
    assert _history(run_dir) == _history(dirtt_uninterrupted)
