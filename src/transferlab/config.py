"""Config helpers shared by the entrypoint and the tests: resolvers used by `conf/`."""

from __future__ import annotations

from omegaconf import OmegaConf


def register_resolvers() -> None:
    # `${min:500,${trainer.steps}}`: a stage length that shrinks with trainer.steps (smoke runs)
    # but is capped for full runs.
    if not OmegaConf.has_resolver("min"):
        OmegaConf.register_new_resolver("min", lambda *xs: min(xs))
