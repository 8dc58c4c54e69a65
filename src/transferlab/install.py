"""A broken PyTorch install, told in one line: which versions are installed, and the command
that installs a matching pair. A pip install can leave torchvision built for another torch
(`operator torchvision::nms does not exist`), or torch without a library it links against."""

from __future__ import annotations

import traceback
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("torch", "torchvision")


def installed(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def matching_torchvision(torch_version: str) -> str:
    """The torchvision release made for a torch release: 0.(minor + 15) for torch 2.minor."""
    major, minor, *_ = [*torch_version.split("+")[0].split("."), "0"]
    return f"0.{int(minor) + 15}" if major == "2" else "(the release made for it)"


def _from_torch(error: BaseException) -> bool:
    """Whether `error` was raised inside torch or torchvision (their import, or a library they
    load), as opposed to our own code."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and any(f"/{p}/" in frames[-1].filename for p in PACKAGES)


def diagnose(error: BaseException) -> str | None:
    """One line for `error` if it comes from a broken torch/torchvision install, else None."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    missing = isinstance(error, ModuleNotFoundError) and error.name in PACKAGES
    broken = "operator torchvision::" in str(error) or (
        isinstance(error, ImportError | OSError) and _from_torch(error))
    if not (missing or broken):
        return None
    torch_version, vision_version = installed("torch"), installed("torchvision")
    if torch_version is None:
        return "torch is not installed: pip install torch torchvision"
    match = matching_torchvision(torch_version)
    found = (f"torch {torch_version} with torchvision {vision_version or '(not installed)'}, "
             f"which needs torchvision {match}")
    return (f"the PyTorch install is broken ({found}; {message}): reinstall a matching pair, "
            f"e.g. pip install --force-reinstall torch=={torch_version.split('+')[0]} "
            f"torchvision=={match}.*")
