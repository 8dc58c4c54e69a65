"""Tests that fail when an algorithm's defining step is removed or altered: the gradient that
reaches the encoder, which tensors a step changes, which network classifies the target, which
splits a stage reads, the schedules the loop applies, the batch stream's shuffling, and what a
resume restores. Exact checks on tiny inputs, not end-to-end accuracy."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import choices_of, compose_config, method_overrides
from transferlab.checkpoint import Checkpointer, load_safely
from transferlab.data.domain import BatchStream, Split, as_input
from transferlab.experiment import build, build_evaluators
from transferlab.methods.base import Method
from transferlab.schedules import annealed_lr, dann_lambda
from transferlab.train import TrainerConfig, fit

CPU = torch.device("cpu")


def built(*overrides: str) -> tuple:
    cfg = compose_config("data=tiny", "device=cpu", *overrides)
    pair, method = build(cfg, CPU)
    return cfg, pair, method


def trainer(**kwargs) -> TrainerConfig:
    return TrainerConfig(**{"batch_size": 16, "eval_every": 10_000, "progress_bar": False,
                            "log_every": 1, **kwargs})


def batch_of(pair, method: Method, n: int = 16) -> dict:
    view = pair.training_view(method.uses_target_labels)
    norm = method.network.normalization
    return {"source": (as_input(view.source.images[:n], pair.channels, norm),
                       view.source.labels[:n]),
            "target": (as_input(view.target.images[:n], pair.channels, norm),
                       view.target.labels[:n])}


def grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params, retain_graph=True))


@pytest.mark.parametrize("progress", [0.0, 0.3, 1.0])
def test_dann_step_moves_encoder_by_label_gradient_minus_lambda_times_domain_gradient(progress):
    """Plain SGD, lr 0.01: Δθ_f = −lr (∂L_y/∂θ_f − λ_p ∂L_d/∂θ_f), Δθ_d = −lr ∂L_d/∂θ_d. The
    reversed gradient's sign and its scale λ_p (the paper's schedule) are both pinned."""
    _, pair, method = built("method=dann", "trainer.optimizer.momentum=0.0")
    [stage] = method.stages(pair.training_view(False))
    batch = batch_of(pair, method)
    (xs, ys), (xt, _) = batch["source"], batch["target"]

    reference = copy.deepcopy(method)
    encoder = list(reference.network.encoder.parameters())
    discriminator = list(reference.adversarial.discriminator.parameters())
    features = reference.network.features(torch.cat([xs, xt]))
    label_loss = F.cross_entropy(reference.network.head(features[: len(xs)]), ys)
    domains = torch.cat([torch.zeros(len(xs)), torch.ones(len(xt))]).long()
    domain_loss = F.cross_entropy(reference.adversarial.discriminator(features), domains)
    lam = dann_lambda(progress, 10.0, 1.0)
    expected_encoder = [p - 0.01 * (gy - lam * gd) for p, gy, gd in
                        zip(encoder, grads(label_loss, encoder), grads(domain_loss, encoder),
                            strict=True)]
    expected_disc = [p - 0.01 * g for p, g in
                     zip(discriminator, grads(domain_loss, discriminator), strict=True)]

    stage.update(batch, progress)
    for got, want in zip(method.network.encoder.parameters(), expected_encoder, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    for got, want in zip(method.adversarial.discriminator.parameters(), expected_disc,
                         strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_adda_target_encoder_starts_from_the_pretrained_source_encoder():
    """With the adaptation learning rate at 0 the target encoder must end exactly where the
    source encoder ended pretraining (not at the weights it was constructed with)."""
    cfg, pair, method = built("method=adda", "trainer.steps=5", "method.adapt_optimizer.lr=0.0")
    initial = copy.deepcopy(method.target_encoder.state_dict())
    fit(method, pair, trainer(), 0, lambda *_: None, build_evaluators(cfg))
    source = method.network.encoder.state_dict()
    for name, tensor in method.target_encoder.state_dict().items():
        assert torch.equal(tensor, source[name]), name
    assert any(not torch.equal(t, initial[n]) for n, t in source.items())  # pretraining ran


@pytest.mark.parametrize("split,adapted", [("encoder", {"target_encoder"}),
                                           ("last_layer", {"target_encoder", "target_hidden"})])
def test_adda_adaptation_changes_only_the_target_side_and_discriminator(split, adapted):
    _, pair, method = built("method=adda", "trainer.steps=3", f"method.split={split}")
    stages = method.stages(pair.training_view(False))
    stages[1].on_start()
    method.train()
    before = copy.deepcopy(method.state_dict())
    stages[1].update(batch_of(pair, method), 0.5)
    changed = {k.split(".")[0] for k, v in method.state_dict().items()
               if not torch.equal(v, before[k])}
    assert changed == adapted | {"discriminator"}


def test_adda_classifies_target_images_with_the_target_encoder_and_source_head():
    _, pair, method = built("method=adda", "trainer.steps=3", "method.split=encoder")
    stages = method.stages(pair.training_view(False))
    x = batch_of(pair, method)["target"][0]
    method.eval()
    torch.testing.assert_close(method.predict(x, "target"), method.network(x))  # before
    stages[1].on_start()
    with torch.no_grad():
        method.target_encoder[0].weight.add_(0.5)  # as adaptation would move it
    torch.testing.assert_close(method.predict(x, "target"),
                               method.network.head(method.target_encoder(x)))
    torch.testing.assert_close(method.predict(x, "source"), method.network(x))
    assert not torch.allclose(method.predict(x, "target"), method.predict(x, "source"))


UDA = [m for m in choices_of("method") if m not in ("target_only", "finetune")]


@pytest.mark.parametrize("name", UDA)
def test_adaptation_never_sees_a_target_label(name: str):
    """Target train labels are poisoned with 999; every batch any update receives must carry
    labels that are either classes (source labels, SHOT's pseudo-labels) or the mask -1, and
    every adaptation method reads target batches."""
    cfg, pair, method = built(*method_overrides(name), "trainer.steps=4")
    target = pair.target
    poisoned = Split(target.train.images, torch.full_like(target.train.labels, 999))
    pair = type(pair)(pair.source, type(target)(target.name, poisoned, target.test,
                                                 target.num_classes),
                      pair.source_val, pair.target_val)
    seen: list[tuple[str, torch.Tensor]] = []
    stages = method.stages

    def spying(view):
        result = stages(view)
        for stage in result:
            def update(batch, progress, inner=stage.update):
                seen.extend((stream, y) for stream, (_, y) in batch.items())
                return inner(batch, progress)
            stage.update = update
        return result

    method.stages = spying
    fit(method, pair, trainer(), 0, lambda *_: None, build_evaluators(cfg))
    assert seen and all(((y >= -1) & (y < pair.num_classes)).all() for _, y in seen)
    assert name == "source_only" or any(stream == "target" for stream, _ in seen)


@pytest.mark.parametrize("name", UDA)
def test_streams_read_the_split_their_name_says(name: str):
    _, pair, method = built(*method_overrides(name))
    view = pair.training_view(False)
    expected = {"source": view.source, "labelled": view.source, "target": view.target}
    for stage in method.stages(view):
        for stream, split in stage.data.items():
            # the same images (SHOT's target stream carries its pseudo-labels instead)
            assert split.store is expected[stream].store, f"{stage.name}: {stream}"
            assert torch.equal(split.images, expected[stream].images), f"{stage.name}: {stream}"


def test_the_loop_anneals_the_learning_rate_by_the_papers_formula():
    cfg, pair, method = built("method=dann", "trainer.steps=10")
    logged: dict[int, float] = {}

    def log(scalars: dict, step: int) -> None:
        if "lr/dann" in scalars:  # not the evaluation's call
            logged[step] = scalars["lr/dann"]

    fit(method, pair, trainer(), 0, log, build_evaluators(cfg))
    # Logged after the step's scheduler update: the rate the next step will use.
    for step, lr in logged.items():
        assert lr == pytest.approx(0.01 * annealed_lr(step / 10, 10.0, 0.75))
    assert logged[10] == pytest.approx(0.01 / 11 ** 0.75)


def test_adda_adapts_at_a_constant_rate_as_in_its_paper():
    cfg, pair, method = built("method=adda", "trainer.steps=4")
    logged: dict[str, list[float]] = {}

    def log(scalars: dict, step: int) -> None:
        for tag, value in scalars.items():
            if tag.startswith("lr/"):
                logged.setdefault(tag, []).append(value)

    fit(method, pair, trainer(), 0, log, build_evaluators(cfg))
    assert logged["lr/adapt"] == [pytest.approx(2e-4)] * 4
    assert logged["lr/pretrain"][-1] == pytest.approx(0.01 / 11 ** 0.75)


def test_batch_stream_shuffles_each_epoch_and_covers_every_sample():
    split = Split(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10))
    stream = BatchStream(split, batch_size=5, seed=3)
    epochs = [torch.cat([stream.next()[1] for _ in range(2)]) for _ in range(3)]
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(10))
    assert epochs[0].tolist() != list(range(10))  # shuffled
    assert epochs[0].tolist() != epochs[1].tolist()  # a fresh order per epoch
    other = BatchStream(split, batch_size=5, seed=4)
    assert other.next()[1].tolist() != epochs[0][:5].tolist()


def test_batch_stream_resumes_mid_epoch_exactly():
    split = Split(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10))
    a = BatchStream(split, batch_size=4, seed=0)
    a.next()
    b = BatchStream(split, batch_size=4, seed=99)
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        assert torch.equal(a.next()[1], b.next()[1])


@pytest.mark.parametrize("name", ["dann", "adda", "adabn", "tent"])
def test_resume_restores_everything_the_next_steps_depend_on(tmp_path: Path, name: str):
    """Weights, optimizer moments, scheduler position, stream positions and RNG: a run cut
    at a checkpoint and resumed in a fresh method ends with the same weights, bit for bit.
    ADDA's, AdaBN's and TENT's cut falls inside their second stage."""
    overrides = (*method_overrides(name), "trainer.steps=6", "trainer.batch_size=16")
    torch.manual_seed(0)
    cfg, pair, whole = built(*overrides)
    evaluators = build_evaluators(cfg)
    fit(whole, pair, trainer(), 0, lambda *_: None, evaluators)

    torch.manual_seed(0)
    _, _, first = built(*overrides)
    cut = 3 if name == "dann" else 8
    checkpointer = Checkpointer(tmp_path, every=cut, config={})

    def stop(scalars: dict, step: int) -> None:
        if step == cut + 1:  # after the checkpoint of step `cut` was written
            raise RuntimeError("cut")

    with pytest.raises(RuntimeError, match="cut"):
        fit(first, pair, trainer(), 0, stop, evaluators, checkpointer)
    state = load_safely(tmp_path / "last.pt")
    assert state["step"] == cut
    torch.manual_seed(123)  # the resumed run must not depend on the process's RNG state
    _, _, resumed = built(*overrides)
    fit(resumed, pair, trainer(), 0, lambda *_: None, evaluators, resume=state)
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_dann_lambda_reaches_the_discriminator_through_the_loop():
    """λ_p as logged by the loop follows the schedule at the step's progress."""
    cfg, pair, method = built("method=dann", "trainer.steps=5")
    lambdas: dict[int, float] = {}

    def log(scalars: dict, step: int) -> None:
        if "dann/lambda" in scalars:
            lambdas[step] = scalars["dann/lambda"]

    fit(method, pair, trainer(), 0, log, build_evaluators(cfg))
    assert [lambdas[s] for s in range(1, 6)] == pytest.approx(
        [dann_lambda((s - 1) / 5) for s in range(1, 6)])
    assert math.isclose(lambdas[1], 0.0)
