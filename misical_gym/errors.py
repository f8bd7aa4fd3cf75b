"""Exceptions raised at the package's boundaries (datasets, stores, CLI and env arguments)."""

from __future__ import annotations


class MisicalError(Exception):
    """Base class of every error this package raises on bad input."""


class DatasetError(MisicalError, ValueError):
    """A dataset is missing, laid out wrongly, or holds values it should not."""


class StoreError(MisicalError, ValueError):
    """A feature store is missing, corrupt, or does not match what was asked for."""


class MissingDependencyError(MisicalError, ImportError):
    """An optional extra that the asked-for feature needs is not installed."""
