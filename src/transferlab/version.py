"""The installed package's version (a leaf, so that any module may read it)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("transferlab")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"
