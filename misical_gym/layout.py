"""The column layout of a store's feature table: the one place that knows where each column is.

A row holds, in order: the class-agnostic uncertainty columns (:data:`GLOBAL_FEATURES`, then the
columns of any extra metric the store was prepared with, :data:`UNCERTAINTY_COLUMNS`), the
presence of every class (mean predicted probability over the patch), then the one-vs-rest BALD
of every class (patch mean). NumPy only; the store, the feature extraction and the
environments all read positions from here, and the environments' ``features=`` groups
(:data:`FEATURE_GROUPS`) are defined here too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

UNCERTAINTY_COLUMNS: dict[str, tuple[str, ...]] = {
    "bald": ("bald_mean", "bald_max"),
    "entropy": ("entropy_mean",),
    # Patch mean and the patch's most uncertain pixel: for the margin that is its minimum.
    "margin": ("margin_mean", "margin_min"),
    "least_confidence": ("least_confidence_mean", "least_confidence_max"),
    "variation_ratio": ("variation_ratio_mean", "variation_ratio_max"),
    "prob_std": ("prob_std_mean", "prob_std_max"),
}
"""Every uncertainty metric ``misical prepare --uncertainty`` knows, in column order, and its
patch-pooled columns. ``bald`` and ``entropy`` are in every store."""
DEFAULT_UNCERTAINTY: tuple[str, ...] = ("bald", "entropy")
"""The metrics of every store (and the only ones of a store prepared before the others)."""
GLOBAL_FEATURES: tuple[str, ...] = ("bald_mean", "bald_max", "entropy_mean")
"""The default class-agnostic feature columns, first in every store."""
_UPPER_BOUNDS: dict[str, float] = {
    # None of these can exceed 1; the std of values in [0, 1] is at most 1/2.
    "margin": 1.0,
    "least_confidence": 1.0,
    "variation_ratio": 1.0,
    "prob_std": 0.5,
}
TARGET_COLUMNS: tuple[str, ...] = ("target_presence", "target_class_bald")
"""The observation's columns of the target itself: its presence and its one-vs-rest BALD."""
FEATURE_GROUPS: tuple[str, ...] = ("all", "presence", "uncertainty", "target_only")
"""Named column groups of an environment's ``features=`` (see :meth:`FeatureLayout.select`)."""


def check_uncertainty(metrics: Sequence[str]) -> tuple[str, ...]:
    """``metrics`` in column order, without repeats, with ``bald`` and ``entropy`` first.

    Raises:
        ValueError: an unknown metric name (the message lists the known ones).
    """
    unknown = [m for m in metrics if m not in UNCERTAINTY_COLUMNS]
    if unknown:
        raise ValueError(
            f"unknown uncertainty metric(s) {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(UNCERTAINTY_COLUMNS)} (bald and entropy are always computed)"
        )
    chosen = set(metrics) | set(DEFAULT_UNCERTAINTY)
    return tuple(m for m in UNCERTAINTY_COLUMNS if m in chosen)


@dataclass(frozen=True)
class FeatureLayout:
    """Column positions of the feature table over ``class_names``, with ``uncertainty``'s
    columns first (:func:`check_uncertainty` order)."""

    class_names: tuple[str, ...]
    uncertainty: tuple[str, ...] = DEFAULT_UNCERTAINTY

    def __post_init__(self) -> None:
        if check_uncertainty(self.uncertainty) != self.uncertainty:
            raise ValueError(
                f"uncertainty metrics must be {DEFAULT_UNCERTAINTY} and others in the order "
                f"{', '.join(UNCERTAINTY_COLUMNS)}, got {self.uncertainty}"
            )

    @classmethod
    def of(
        cls, class_names: Sequence[object], uncertainty: Sequence[str] = DEFAULT_UNCERTAINTY
    ) -> FeatureLayout:
        return cls(tuple(str(c) for c in class_names), check_uncertainty(uncertainty))

    @classmethod
    def positional(
        cls, num_classes: int, uncertainty: Sequence[str] = DEFAULT_UNCERTAINTY
    ) -> FeatureLayout:
        """The layout of ``num_classes`` classes by position (for code that has no names)."""
        return cls.of(range(num_classes), uncertainty)

    @classmethod
    def from_names(
        cls, feature_names: Sequence[str], class_names: Sequence[object]
    ) -> FeatureLayout:
        """The layout whose :attr:`names` are ``feature_names`` (a store's manifest).

        Raises:
            ValueError: the names follow no layout over ``class_names``.
        """
        num_global = len(feature_names) - 2 * len(class_names)
        columns = {c: m for m, cs in UNCERTAINTY_COLUMNS.items() for c in cs}
        metrics = dict.fromkeys(columns.get(n, "?") for n in feature_names[: max(num_global, 0)])
        try:
            layout = cls.of(class_names, tuple(metrics))
        except ValueError:
            layout = None
        if layout is None or layout.names != tuple(feature_names):
            raise ValueError(
                "feature_names do not follow the schema (the uncertainty columns "
                f"{', '.join(c for cs in UNCERTAINTY_COLUMNS.values() for c in cs)} in that "
                "order, bald and entropy's always, then presence:<class> and class_bald:<class> "
                "for every class)"
            )
        return layout

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @cached_property
    def global_features(self) -> tuple[str, ...]:
        """The class-agnostic uncertainty columns (:data:`GLOBAL_FEATURES` by default)."""
        return tuple(c for m in self.uncertainty for c in UNCERTAINTY_COLUMNS[m])

    @property
    def num_global(self) -> int:
        return len(self.global_features)

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
        """``bald_mean, bald_max, entropy_mean, [extra metrics], presence:<class>...,
        class_bald:<class>...``."""
        return (
            self.global_features
            + tuple(f"presence:{c}" for c in self.class_names)
            + tuple(f"class_bald:{c}" for c in self.class_names)
        )

    @cached_property
    def observation_columns(self) -> tuple[str, ...]:
        """The patch columns of an environment's observation row: the uncertainty and presence
        columns as stored, then :data:`TARGET_COLUMNS` (``budget_left`` and the target one-hot,
        which describe the episode, not the patch, follow them)."""
        return self.names[: self.class_bald.start] + TARGET_COLUMNS

    def select(self, features: str | Sequence[str]) -> tuple[int, ...]:
        """Positions in :attr:`observation_columns` of an environment's ``features=`` choice.

        Groups: ``all`` (every column: the default observation), ``presence`` (every class's
        presence and the target's), ``uncertainty`` (the uncertainty columns and the target's
        class-BALD), ``target_only`` (:data:`TARGET_COLUMNS`); or a list of column names, kept
        in layout order.

        Raises:
            ValueError: an unknown group or column name, a repeated or an empty list (the
                message lists the valid names).
        """
        columns = self.observation_columns
        if isinstance(features, str):
            groups = {
                "all": columns,
                "presence": (*self.names[self.presence], TARGET_COLUMNS[0]),
                "uncertainty": (*self.global_features, TARGET_COLUMNS[1]),
                "target_only": TARGET_COLUMNS,
            }
            if features not in groups:
                raise ValueError(
                    f"unknown features {features!r}; choose a group ({', '.join(FEATURE_GROUPS)}) "
                    f"or a list of column names ({', '.join(columns)})"
                )
            chosen: Sequence[str] = groups[features]
        else:
            chosen = [str(name) for name in features]
            unknown = [name for name in chosen if name not in columns]
            if unknown or not chosen or len(set(chosen)) != len(chosen):
                what = (
                    f"unknown column(s) {', '.join(map(repr, unknown))}"
                    if unknown
                    else ("a repeated column" if chosen else "no column")
                )
                raise ValueError(
                    f"features lists {what}; valid names: {', '.join(columns)} (budget_left and "
                    f"the target one-hot are always kept), or a group: {', '.join(FEATURE_GROUPS)}"
                )
        wanted = set(chosen)
        return tuple(i for i, name in enumerate(columns) if name in wanted)

    def upper_bounds(self) -> np.ndarray:
        """float32 upper bound of every column (the lower bound is 0): the global BALD and
        entropy columns are at most ``log C``, presence is a probability and a one-vs-rest BALD
        is at most ``log 2``; the extra metrics' bounds are in ``_UPPER_BOUNDS``. Feature
        extraction clamps to these; stores are checked against them."""
        bounds = np.ones(self.num_columns, dtype=np.float32)
        bounds[: self.num_global] = math.log(max(self.num_classes, 2))
        start = 0
        for metric in self.uncertainty:
            stop = start + len(UNCERTAINTY_COLUMNS[metric])
            if metric in _UPPER_BOUNDS:
                bounds[start:stop] = _UPPER_BOUNDS[metric]
            start = stop
        bounds[self.class_bald] = math.log(2)
        return bounds
