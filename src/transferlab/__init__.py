"""transferlab: a config-driven experiment runner for transfer learning and domain adaptation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("transferlab")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"
