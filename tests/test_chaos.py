"""The chaos script (tests/chaos.py) on this machine: every fault case holds."""

from __future__ import annotations

import pytest

import chaos


@pytest.mark.slow
def test_every_chaos_case_holds():
    assert chaos.main() == 0
