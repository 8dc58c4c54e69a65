"""Transfer methods, one module each; `base` holds what they share."""

from transferlab.methods.base import Method, Stage

__all__ = ["Method", "Stage"]
