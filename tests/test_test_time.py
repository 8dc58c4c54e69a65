"""AdaBN and TENT: the source model adapted on target batches alone, through its batch-norm
layers only; source images still classified by the source model."""

from __future__ import annotations

import pytest
import torch

from helpers import compose_config, method_overrides
from steps import batches
from transferlab.errors import find_user_error
from transferlab.experiment import build
from transferlab.losses.entropy import entropy
from transferlab.nn.norms import batch_norm_layers


def adapting(name: str, *overrides: str) -> tuple:
    torch.manual_seed(0)
    cfg = compose_config("data=tiny", "device=cpu", *method_overrides(name), *overrides)
    pair, method = build(cfg, torch.device("cpu"))
    method = method.double()
    return pair, method, method.stages(pair.training_view(method.uses_target_labels))


@pytest.mark.parametrize("name", ["adabn", "tent"])
def test_a_backbone_without_batch_norm_is_refused_in_one_line(name: str):
    cfg = compose_config("data=tiny", "device=cpu", f"method={name}")  # dann_mnist: no BN
    with pytest.raises(Exception) as raised:  # Hydra wraps it; the CLI unwraps it
        build(cfg, torch.device("cpu"))
    message = str(find_user_error(raised.value))
    assert f"method={name} adapts batch-norm layers" in message
    assert "backbone.batch_norm=true" in message and "\n" not in message


@pytest.mark.parametrize("name", ["adabn", "tent"])
def test_the_adaptation_stage_reads_the_target_alone_after_the_stored_source_stage(name):
    pair, _, (source, adapt) = adapting(name)
    assert source.reuse is not None and set(source.data) == {"labelled"}
    assert set(adapt.data) == {"target"}
    assert adapt.data["target"].store is pair.target.train.store
    assert adapt.steps == -(-len(pair.target.train) // 64)  # one pass at the trainer's batch


def test_adabn_statistics_are_the_targets_and_its_weights_stay():
    pair, method, (_, adapt) = adapting("adabn")
    method.train()
    weights = {n: p.detach().clone() for n, p in method.named_parameters()}
    first = batch_norm_layers(method.network)[0]
    first.running_mean.fill_(5.0)  # source statistics, to be forgotten
    adapt.on_start()
    x = batches(pair, n=60)["target"][0]
    for part in x.split(20):  # equal batches: the cumulative average is the overall mean
        adapt.update({"target": (part, torch.full((20,), -1))}, 0.0)
    seen = []
    hook = first.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    method.eval()
    method.network(x)
    hook.remove()
    torch.testing.assert_close(first.running_mean, seen[0].mean(dim=(0, 2, 3)))
    per_batch = [b.var(dim=(0, 2, 3)) for b in seen[0].split(20)]
    torch.testing.assert_close(first.running_var, torch.stack(per_batch).mean(0))
    for n, p in method.named_parameters():
        assert torch.equal(p, weights[n]), n


@pytest.mark.parametrize("name", ["adabn", "tent"])
def test_source_images_are_classified_by_the_source_model_as_it_was(name: str):
    pair, method, (_, adapt) = adapting(name)
    data = batches(pair, n=16)
    method.train()
    adapt.on_start()
    method.eval()
    x = data["source"][0]
    source_logits = method.predict(x, "source").clone()
    method.train()
    for _ in range(3):
        adapt.update({"target": data["target"]}, 0.0)
    method.eval()
    torch.testing.assert_close(method.predict(x, "source"), source_logits)
    assert not torch.allclose(method.predict(x, "target"), source_logits)


def test_tent_updates_the_batch_norm_scales_and_shifts_and_nothing_else():
    pair, method, (_, adapt) = adapting("tent")
    method.train()
    adapt.on_start()
    before = {n: p.detach().clone() for n, p in method.network.named_parameters()}
    affine = {id(p) for p in method.affine_parameters()}
    adapt.update({"target": batches(pair, n=16)["target"]}, 0.0)
    for name, p in method.network.named_parameters():
        assert torch.equal(p, before[name]) != (id(p) in affine), name


def test_tent_lowers_the_entropy_of_the_batch_it_steps_on():
    pair, method, (_, adapt) = adapting("tent", "method.adapt_optimizer.lr=1e-4")
    method.train()
    adapt.on_start()
    x = batches(pair, n=32)["target"][0]
    with torch.no_grad():
        before = entropy(method.network(x)).mean()
    logged = adapt.update({"target": (x, torch.full((32,), -1))}, 0.0)
    with torch.no_grad():
        after = entropy(method.network(x)).mean()
    torch.testing.assert_close(logged["loss/target_entropy"], before)
    assert after < before
