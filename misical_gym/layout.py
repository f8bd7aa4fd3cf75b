"""The column layout of a store's feature table: the one place that knows where each column is.

A row holds, in order: the class-agnostic uncertainty columns (:data:`GLOBAL_FEATURES`), the
presence of every class (mean predicted probability over the patch), then the one-vs-rest BALD
of every class (patch mean). NumPy only; the store, the feature extraction and the
environments all read positions from here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

GLOBAL_FEATURES: tuple[str, ...] = ("bald_mean", "bald_max", "entropy_mean")
"""Class-agnostic feature columns, first in every store."""


@dataclass(frozen=True)
class FeatureLayout:
    """Column positions of the feature table over ``class_names``."""

    class_names: tuple[str, ...]

    @classmethod
    def of(cls, class_names: Sequence[object]) -> FeatureLayout:
        return cls(tuple(str(c) for c in class_names))

    @classmethod
    def positional(cls, num_classes: int) -> FeatureLayout:
        """The layout of ``num_classes`` classes by position (for code that has no names)."""
        return cls.of(range(num_classes))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_global(self) -> int:
        return len(GLOBAL_FEATURES)

    @property
    def num_columns(self) -> int:
        return self.num_global + 2 * self.num_classes

    @property
    def presence(self) -> slice:
        """The presence columns, one per class."""
        return slice(self.num_global, self.num_global + self.num_classes)

    @property
    def class_bald(self) -> slice:
        """The one-vs-rest BALD columns, one per class."""
        return slice(self.presence.stop, self.presence.stop + self.num_classes)

    @cached_property
    def names(self) -> tuple[str, ...]:
        """``bald_mean, bald_max, entropy_mean, presence:<class>..., class_bald:<class>...``."""
        return (
            GLOBAL_FEATURES
            + tuple(f"presence:{c}" for c in self.class_names)
            + tuple(f"class_bald:{c}" for c in self.class_names)
        )

    def upper_bounds(self) -> np.ndarray:
        """float32 upper bound of every column (the lower bound is 0): the global BALD and
        entropy columns are at most ``log C``, presence is a probability and a one-vs-rest BALD
        is at most ``log 2``. Feature extraction clamps to these; stores are checked against
        them."""
        bounds = np.ones(self.num_columns, dtype=np.float32)
        bounds[: self.num_global] = math.log(max(self.num_classes, 2))
        bounds[self.class_bald] = math.log(2)
        return bounds
