"""Regularisers stacked on one-stage methods by config, and the MCC method."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import choices_of, compose_config, method_overrides, run_in_process, scalar_tags
from steps import assert_same_steps, batches, build_method, expected_step, sgd_step
from transferlab.config import CONFIG_DIR, check_choices, validate
from transferlab.errors import UserError, find_user_error
from transferlab.experiment import build
from transferlab.losses.entropy import class_confusion, entropy

STACKED = ("+method/regularizers=[entropy,mcc]", "method.regularizers.entropy.weight=0.3",
           "method.regularizers.mcc.weight=0.5")


@pytest.mark.parametrize("name", ["dann", "mcc", "vada"])
def test_a_stacked_regulariser_changes_the_step_exactly_by_its_term(name: str):
    pair, plain = build_method(f"method={name}")
    _, stacked = build_method(f"method={name}", *STACKED)
    reference = copy.deepcopy(stacked)
    batch = batches(pair)
    xt = batch["target"][0]
    plain_step, _ = sgd_step(plain, plain.update, batch)
    stacked_step, scalars = sgd_step(stacked, stacked.update, batch)

    logits = reference.network(xt)
    terms = {"entropy": entropy(logits).mean(), "mcc": class_confusion(logits, 2.5)}
    term_step = expected_step(reference, lambda: 0.3 * terms["entropy"] + 0.5 * terms["mcc"])
    assert_same_steps({n: stacked_step[n] - plain_step[n] for n in plain_step}, term_step)
    for key, term in terms.items():  # each logged under its own tag
        assert scalars[f"regularizer/{key}"].item() == pytest.approx(term.item())


def test_mcc_method_follows_its_equation():
    pair, method = build_method("method=mcc", "method.trade_off=0.7", "method.temperature=3.0")
    reference = copy.deepcopy(method)
    batch = batches(pair)
    (xs, ys), (xt, _) = batch["source"], batch["target"]
    got, scalars = sgd_step(method, method.update, batch)
    net = reference.network
    expected = expected_step(reference, lambda: F.cross_entropy(net(xs), ys)
                             + 0.7 * class_confusion(net(xt), 3.0))
    assert_same_steps(got, expected)
    assert scalars["loss/mcc"].item() == pytest.approx(class_confusion(net(xt), 3.0).item())


def test_stacked_terms_reach_tensorboard_under_their_own_tags(tmp_path: Path):
    run_in_process(tmp_path, "method=dann", "+method/regularizers=[mcc,entropy]",
                   "trainer.steps=3", "trainer.log_every=1")
    tags = scalar_tags(tmp_path)
    assert len(tags["regularizer/mcc"]) == 3 and len(tags["regularizer/entropy"]) == 3


def test_a_method_in_stages_refuses_regularisers():
    cfg = compose_config("data=tiny", "device=cpu", "method=adda", "+method/regularizers=[mcc]")
    with pytest.raises(Exception) as raised:  # Hydra wraps it; the CLI unwraps it
        build(cfg, torch.device("cpu"))
    assert "ADDA trains in stages of its own" in str(find_user_error(raised.value))


@pytest.mark.parametrize("name", choices_of("method"))
def test_every_method_of_one_joint_stage_takes_regularisers_and_applies_them(name: str):
    """Derived from conf/method/: a method whose training is one stage of source and target
    batches takes `method/regularizers`, and the term changes its update; any other refuses
    them in one line."""
    cfg = compose_config("data=tiny", "device=cpu", *method_overrides(name))
    pair, method = build(cfg, torch.device("cpu"))
    stages = method.stages(pair.training_view(method.uses_target_labels))
    joint = len(stages) == 1 and set(stages[0].data) == {"source", "target"}
    assert method.takes_regularizers == joint, f"{name}: route its step through joint_step"
    stacked = compose_config("data=tiny", "device=cpu", *method_overrides(name),
                             "+method/regularizers=[entropy]",
                             "method.regularizers.entropy.weight=5.0")
    if not joint:
        with pytest.raises(Exception) as raised:
            build(stacked, torch.device("cpu"))
        assert "trains in stages of its own" in str(find_user_error(raised.value))
        return
    plain_pair, plain = build(cfg, torch.device("cpu"))
    _, regularized = build(stacked, torch.device("cpu"))
    regularized.load_state_dict(plain.state_dict())
    plain, regularized = plain.double(), regularized.double()
    batch = batches(plain_pair)
    changed = []
    for m in (plain, regularized):
        torch.manual_seed(0)
        (stage,) = m.stages(plain_pair.training_view(False))
        scalars = stage.update(batch, 0.5)
        changed.append([p.detach().clone() for p in m.network.parameters()])
    assert "regularizer/entropy" in scalars
    assert any(not torch.equal(a, b) for a, b in zip(*changed, strict=True))


def test_bad_regulariser_names_and_values_are_one_line_errors():
    with pytest.raises(UserError, match="method/regularizers=mmc is not a valid choice; "
                                        "valid: entropy, mcc"):
        check_choices(["+method/regularizers=[mcc,mmc]"], CONFIG_DIR)
    cfg = compose_config("method=dann", "+method/regularizers=[mcc]",
                         "method.regularizers.mcc.temperature=0")
    with pytest.raises(UserError, match=r"method\.regularizers\.mcc\.temperature=0 is invalid"):
        validate(cfg)
