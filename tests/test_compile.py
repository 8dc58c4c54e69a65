"""`trainer.compile`: compiled networks train as the eager ones do, and checkpoints keep their
keys."""

from __future__ import annotations

import pytest
import torch

from helpers import compose_config
from steps import batches
from transferlab.experiment import build


def steps_of(backend: str | None, method_name: str = "dann") -> tuple[list, dict, list]:
    overrides = ["data=tiny", "device=cpu", f"method={method_name}"]
    if backend:
        overrides += ["trainer.compile=true", f"trainer.compile_backend={backend}"]
    torch.manual_seed(0)
    pair, method = build(compose_config(*overrides), torch.device("cpu"))
    (stage,) = method.stages(pair.training_view(False))
    torch.manual_seed(1)
    batch = {k: (x.float(), y) for k, (x, y) in batches(pair, n=16).items()}
    logged = [stage.update(batch, p) for p in (0.1, 0.2, 0.3)]
    losses = [float(s["loss/classification"].detach()) for s in logged]
    return losses, method.state_dict(), [p.detach().clone() for p in method.parameters()]


@pytest.mark.parametrize("method_name", ["dann", "mcd"])
def test_compiled_networks_train_as_the_eager_ones(method_name: str):
    eager_losses, eager_state, eager = steps_of(None, method_name)
    losses, state, compiled = steps_of("aot_eager", method_name)
    assert state.keys() == eager_state.keys()  # in place: checkpoints keep their keys
    assert losses == pytest.approx(eager_losses, rel=1e-5)
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_compile_is_applied_to_the_networks_the_update_calls():
    _, method = build(compose_config("data=tiny", "device=cpu", "method=dann",
                                     "trainer.compile=true", "trainer.compile_backend=eager"),
                      torch.device("cpu"))
    compiled = {name for name, m in method.named_modules() if m._compiled_call_impl is not None}
    assert {"network.encoder", "network.head", "adversarial"} <= compiled


@pytest.mark.slow
def test_inductor_compiled_steps_agree_with_eager():
    eager_losses, _, eager = steps_of(None)
    losses, _, compiled = steps_of("inductor")
    assert losses == pytest.approx(eager_losses, rel=1e-4)
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
