"""transferlab: a config-driven experiment runner for transfer learning and domain adaptation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("transferlab")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"

# Loading trained runs needs torch and Hydra: imported on first use, not with the package.
_API = ("load", "predict_images", "run_pair", "evaluate_run")


def __getattr__(name: str) -> object:
    if name in _API:
        from transferlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'transferlab' has no attribute {name!r}")
