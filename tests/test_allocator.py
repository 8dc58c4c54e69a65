import pytest

from helpers import compose_config
from transferlab import allocator
from transferlab.config import validate
from transferlab.errors import UserError
from transferlab.rules import OPERATIONAL_KEYS


def test_disabled_does_not_touch_the_c_library(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the C library was called")

    monkeypatch.setattr(allocator.ctypes, "CDLL", refuse)
    assert allocator.tune_malloc(False) is False


def test_a_no_op_where_the_c_library_is_not_glibc(monkeypatch):
    monkeypatch.setattr(allocator, "glibc_version", lambda: None)
    assert allocator.tune_malloc(True) is False


def test_applies_where_glibc_is_the_allocator():
    # mallopt accepts both values on every glibc; elsewhere tune_malloc reports that it did not.
    assert allocator.tune_malloc(True) is (allocator.glibc_version() is not None)


def test_the_key_defaults_on_is_validated_and_is_operational():
    assert compose_config().trainer.malloc_tuning is True
    with pytest.raises(UserError, match=r"^trainer\.malloc_tuning='maybe' is invalid: must be "
                                        r"true or false$"):
        validate(compose_config("trainer.malloc_tuning=maybe"))
    assert "trainer.malloc_tuning" in OPERATIONAL_KEYS  # resume does not refuse over it
