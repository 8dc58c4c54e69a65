"""ADDA's split between the adapted target encoder and the frozen source classifier (issue 15):
`split=last_layer` adapts everything but the classifier's last layer, as the ADDA paper's LeNet
(conv, conv, fc 500 | fc 10) and its authors' code do, whatever the backbone."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import compose_config
from transferlab.experiment import build
from transferlab.train import TrainerConfig, fit

TRAINER = TrainerConfig(batch_size=16, eval_every=1000, progress_bar=False, log_every=1)


def _adda(*overrides: str):
    cfg = compose_config("data=tiny", "method=adda", "device=cpu", "trainer.steps=4", *overrides)
    torch.manual_seed(0)
    return build(cfg, torch.device("cpu"))


def test_last_layer_split_adapts_the_hidden_head_layers_and_keeps_the_classifier():
    pair, method = _adda("backbone=dann_mnist", "method.split=last_layer")
    head = method.network.head
    assert method.discriminator.net[0].in_features == head[-1].in_features == 100
    snapshot = {}

    def log(scalars: dict, step: int) -> None:
        if step == 4 and not snapshot:  # end of pretraining
            snapshot.update(copy.deepcopy(method.network.state_dict()))

    fit(method, pair, TRAINER, seed=0, log=log, evaluators={})
    after = method.network.state_dict()
    assert all(torch.equal(t, after[n]) for n, t in snapshot.items()), "source network changed"
    adapted = method.target_hidden.state_dict()
    assert adapted.keys() == head[:-1].state_dict().keys() and adapted
    assert any(not torch.equal(t, head[:-1].state_dict()[n]) for n, t in adapted.items())
    x = torch.zeros(2, pair.channels, 28, 28)
    with torch.no_grad():
        expected = head[-1](method.target_hidden(method.target_encoder(x)))
        assert torch.equal(method.predict(x, "target"), expected)


def test_encoder_split_adapts_the_encoder_only(caplog):
    _, method = _adda("backbone=dann_mnist", "method.split=encoder")
    assert method.discriminator.net[0].in_features == method.network.feature_dim == 768
    assert not list(method.target_hidden.parameters())
    # The combination that diverged on USPS → MNIST is warned about, not run silently.
    assert "method.split=encoder adapts the encoder under head layers frozen" in caplog.text


@pytest.mark.parametrize("backbone,split", [("dann_mnist", "last_layer"), ("lenet", "encoder")])
def test_no_split_warning_where_nothing_of_the_head_stays_frozen_but_its_last_layer(
        caplog, backbone, split):
    _adda(f"backbone={backbone}", f"method.split={split}")
    assert "method.split" not in caplog.text


@pytest.mark.parametrize("split", ["encoder", "last_layer"])
def test_split_is_the_same_for_lenet_whose_head_is_one_layer(split):
    """LeNet's encoder already ends at fc 500: both splits are the ADDA paper's network."""
    pair, method = _adda("backbone=lenet", f"method.split={split}")
    fit(method, pair, TRAINER, seed=0, log=lambda s, i: None, evaluators={})
    reference_pair, reference = _adda("backbone=lenet", "method.split=encoder")
    fit(reference, reference_pair, TRAINER, seed=0, log=lambda s, i: None,
        evaluators={})
    for (name, a), (_, b) in zip(method.state_dict().items(), reference.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


def test_unknown_split_is_refused(tmp_path):
    from helpers import run_in_process
    from transferlab.errors import UserError

    with pytest.raises(UserError, match=r"method\.split=.middle. is invalid"):
        run_in_process(tmp_path, "method=adda", "method.split=middle")


def test_last_layer_split_starts_the_target_side_from_the_pretrained_source_layers():
    pair, method = _adda("backbone=dann_mnist", "method.split=last_layer")
    stages = method.stages(pair.training_view(False))
    with torch.no_grad():
        for p in method.network.parameters():
            p.add_(0.1)  # as pretraining moves them away from the copies made at build time
    stages[1].on_start()
    for target, source in ((method.target_encoder, method.network.encoder),
                           (method.target_hidden, method.network.head[:-1])):
        reference = source.state_dict()
        assert all(torch.equal(t, reference[n]) for n, t in target.state_dict().items())
