"""Domains as in-memory uint8 tensors, and source→target pairs built from them."""

from transferlab.data.domain import DataContext, Domain, DomainPair, Split, build_pair

__all__ = ["DataContext", "Domain", "DomainPair", "Split", "build_pair"]
