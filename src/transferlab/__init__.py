"""transferlab: a config-driven experiment runner for transfer learning and domain adaptation."""

from transferlab.version import __version__

# Loading trained runs needs torch and Hydra: imported on first use, not with the package.
_API = ("load", "predict_images", "run_pair", "evaluate_run")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> object:
    if name in _API:
        from transferlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'transferlab' has no attribute {name!r}")
