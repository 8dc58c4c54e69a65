"""`trainer.flush_denormal`: subnormal floats are flushed to zero on every thread of a run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import compose_config, run_in_process
from transferlab.config import validate
from transferlab.errors import UserError
from transferlab.rules import OPERATIONAL_KEYS


def _fresh_process(enabled: bool) -> list[str]:
    # A new process: torch's threads start after the flags are set, as in a CLI run.
    code = ("import torch; from transferlab.denormals import SUBNORMAL, flush_denormals, "
            "flush_state; torch.set_num_threads(2); "
            f"print(flush_denormals({enabled}), flush_state(), "
            "(torch.tensor([SUBNORMAL]) * 1.0).item())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return out.split()


def test_flushing_reaches_every_thread_of_a_fresh_process():
    assert _fresh_process(True) == ["True", "all", "0.0"]


def test_without_it_subnormals_are_kept():
    flushed, state, value = _fresh_process(False)
    assert (flushed, state) == ("False", "none")
    assert float(value) == pytest.approx(1e-39, rel=1e-3)


def test_a_run_sets_it_and_records_it(tmp_path: Path):
    one_thread = ("trainer.steps=2", "trainer.eval_every=2", "trainer.num_threads=1")
    kept = run_in_process(tmp_path / "kept", *one_thread, "trainer.flush_denormal=false")
    flushed = run_in_process(tmp_path / "flushed", *one_thread)
    assert (kept["denormals_flushed"], flushed["denormals_flushed"]) == (False, True)


def test_the_key_defaults_on_is_validated_and_changes_results():
    assert compose_config().trainer.flush_denormal is True
    with pytest.raises(UserError, match=r"^trainer\.flush_denormal='yes please' is invalid: "
                                        r"must be true or false$"):
        validate(compose_config("trainer.flush_denormal='yes please'"))
    # Flushing changes the numbers: a checkpoint does not resume across a change of it.
    assert "trainer.flush_denormal" not in OPERATIONAL_KEYS
