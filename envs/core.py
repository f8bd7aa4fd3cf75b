"""Pieces shared by the single and the vector environment: store lookup, observations, rewards.

Everything here is NumPy over a memory-mapped :class:`~misical_gym.store.FeatureStore`; nothing
imports torch.
"""

from __future__ import annotations

import bisect
import difflib
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from misical_gym.errors import StoreError
from misical_gym.paths import default_store_path
from misical_gym.store import MANIFEST, FeatureStore

REWARD_SCHEMES: tuple[str, ...] = ("categorical", "binary", "share", "log_count")
DEFAULT_REWARD_BINS: tuple[float, ...] = (0.0, 0.05)
DEFAULT_REWARD_VALUES: tuple[float, ...] = (0.0, 0.5, 1.0)

_PREPARE_HINTS = {
    "camvid": "misical prepare camvid --root /path/to/camvid",
    "coco10k": "misical prepare coco10k --root /path/to/cocostuff-10k-v1.1",
    "synthetic": "misical prepare synthetic",
}
_open_stores: dict[tuple[str, int], FeatureStore] = {}
_warned_absent: set[tuple[str, str, int]] = set()


def resolve_store(root: str | os.PathLike[str] | None, store_name: str | None) -> FeatureStore:
    """Open the store at ``root``, else the default store called ``store_name``.

    A missing store is an error that names the path and the command to run (the registered
    ``MiSiCAL-Synthetic`` ids prepare theirs before they get here). Opened stores are cached per
    process, so many environments share one memory map.
    """
    if root is None:
        if store_name is None:
            raise StoreError(
                "this environment needs root=<path of a prepared store>, "
                'e.g. gym.make("MiSiCAL-Store", root="~/.cache/misical/synthetic")'
            )
        path = default_store_path(store_name)
        if not (path / MANIFEST).is_file():
            hint = _PREPARE_HINTS.get(store_name, f"misical prepare {store_name} ...")
            raise StoreError(
                f"no prepared {store_name!r} feature store at {path} (the default location: "
                "$MISICAL_HOME/<name>, else ~/.cache/misical/<name>). Download the dataset, then "
                f"run `{hint}` once, or pass root=<path of a prepared store>."
            )
    else:
        path = Path(root).expanduser()
    manifest = path / MANIFEST
    # Keyed by the manifest's mtime too: a store prepared again in place is opened afresh.
    key = (str(path.resolve()), manifest.stat().st_mtime_ns if manifest.is_file() else 0)
    if key not in _open_stores:
        _open_stores[key] = FeatureStore.open(path)
    return _open_stores[key]


def resolve_target(store: FeatureStore, target: str | int, split: str) -> int | None:
    """A fixed target's class index, or None for ``"random"`` (a new target every episode).

    ``"default"`` is the store's first designed rare class, else ``skis`` (the class the paper
    highlights) when the store has it, else the rarest class that occurs in the split. A target
    that never occurs in the split is allowed (every pick then pays 0), with a warning, once.
    """
    if isinstance(target, str) and target == "random":
        return None
    if isinstance(target, str) and target == "default":
        if store.rare_classes:
            chosen = int(store.rare_classes[0])
        elif "skis" in store.class_names:
            chosen = store.class_names.index("skis")
        else:
            freq = store.class_patches(split)
            chosen = int(np.argmin(np.where(freq > 0, freq, np.iinfo(np.int64).max)))
    else:
        chosen = store.class_index(target)
    key = (str(store.path), split, chosen)
    if store.class_patches(split)[chosen] == 0 and key not in _warned_absent:
        _warned_absent.add(key)
        warnings.warn(
            f"target class {store.class_names[chosen]!r} never occurs in split {split!r} of "
            f"{store.path}: every pick of an episode on it pays 0",
            UserWarning,
            stacklevel=3,
        )
    return chosen


def check_reset_options(options: Any, known: Sequence[str]) -> Mapping[str, Any]:
    """``options`` of ``reset`` as a mapping, refusing anything but the ``known`` keys.

    An ignored option is a silent bug in the caller (``{"target": ...}`` for
    ``{"target_class": ...}``), so a misspelt or unknown key is an error that names the known
    ones.

    Raises:
        TypeError: ``options`` is neither None nor a mapping.
        ValueError: it has a key not in ``known``.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"reset options must be a dict or None, got {type(options).__name__}")
    unknown = [key for key in options if key not in known]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), known, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown reset option(s) {', '.join(map(repr, unknown))}; this environment takes "
            f"{', '.join(map(repr, known))}.{hint}"
        )
    return options


LABELLED_SET_SPLIT = "init"
"""The split whose labels a learner may read for every candidate it is shown: the small
labelled set. Elsewhere (``pool``, deployment) annotation reveals only the acquired patch's
label, also where a simulation's labelled pool knows them all."""


def revealed_when_shown(store: FeatureStore) -> np.ndarray:
    """bool ``[num_patches]``: the patches whose labels a learner may read when they are only
    shown as candidates, not acquired: the labelled set's (:data:`LABELLED_SET_SPLIT`)."""
    revealed = np.zeros(store.num_patches, dtype=bool)
    revealed[store.split_ids(LABELLED_SET_SPLIT, labelled=True)] = True
    return revealed


def targets_present(store: FeatureStore, split: str) -> np.ndarray:
    """Class indices with at least one labelled pixel in the split: the draws of ``"random"``."""
    present = np.flatnonzero(store.class_patches(split) > 0)
    if present.size == 0:
        raise StoreError(f"{store.path}: no class occurs in this split, so no target can be drawn")
    return present


class RewardFunction:
    """Maps the chosen patch's oracle count of the target to a reward.

    Schemes:
        ``categorical``: the target's pixel share falls into ordered bins; share ``s`` is in bin
        ``k`` when ``bins[k-1] < s <= bins[k]`` (bin 0 is ``s <= bins[0]``; the last bin is
        ``s > bins[-1]``), and earns ``values[k]``. The defaults give 0 for absent, 0.5 for
        present and 1 for substantial (share above 5%).
        ``binary``: 1 when the target is present, else 0.
        ``share``: the target's pixel share of the patch, in [0, 1].
        ``log_count``: ``log1p(target pixels)``.
    """

    def __init__(
        self,
        scheme: str = "categorical",
        bins: Sequence[float] = DEFAULT_REWARD_BINS,
        values: Sequence[float] = DEFAULT_REWARD_VALUES,
    ) -> None:
        if scheme not in REWARD_SCHEMES:
            raise ValueError(
                f"unknown reward {scheme!r}; choose one of {', '.join(REWARD_SCHEMES)}"
            )
        self.scheme = scheme
        self.bins = np.asarray(bins, dtype=np.float64)
        self.values = np.asarray(values, dtype=np.float64)
        if scheme == "categorical":
            if self.bins.ndim != 1 or self.bins.size < 1 or np.any(np.diff(self.bins) <= 0):
                raise ValueError(f"reward_bins must be increasing share thresholds, got {bins}")
            if self.values.shape != (self.bins.size + 1,) or not np.all(np.isfinite(self.values)):
                raise ValueError(
                    f"reward_values needs len(reward_bins) + 1 = {self.bins.size + 1} finite "
                    f"values, got {values}"
                )

        self._bins_list = self.bins.tolist()
        self._values_list = self.values.tolist()

    def range(self, max_patch_area: int) -> tuple[float, float]:
        """The lowest and highest reward this function can give."""
        if self.scheme == "categorical":
            return float(self.values.min()), float(self.values.max())
        if self.scheme == "log_count":
            return 0.0, math.log1p(max_patch_area)
        return 0.0, 1.0

    def scalar(self, count: int, area: int) -> float:
        """One patch's reward: the numbers of :meth:`__call__` at a fraction of the cost."""
        if self.scheme == "binary":
            return float(count > 0)
        if self.scheme == "log_count":
            return math.log1p(count)
        share = count / max(area, 1)
        if self.scheme == "share":
            return share
        return self._values_list[bisect.bisect_left(self._bins_list, share)]

    def __call__(self, count: np.ndarray, area: np.ndarray) -> np.ndarray:
        """Rewards for target pixel counts ``count`` in patches of ``area`` pixels."""
        count = np.asarray(count, dtype=np.float64)
        if self.scheme == "binary":
            return (count > 0).astype(np.float64)
        if self.scheme == "log_count":
            return np.log1p(count)
        share = count / np.maximum(area, 1)
        if self.scheme == "share":
            return share
        return self.values[np.searchsorted(self.bins, share, side="left")]


_WHOLE_ROWS_UP_TO = 256
"""Below this many candidate rows :meth:`ObservationBuilder.build` takes whole store rows in
one gather (cheapest for an env's step); from it, a batch's gather of the kept columns only
reads fewer bytes (in one measurement on a COCO-shaped store: break-even near 128 rows, 35%
faster at 4,096)."""
_WHOLE_ROWS_UP_TO_COLUMNS = 128
"""A store row of at most this many columns is taken whole for a batch too: a few cache lines
per row, which NumPy copies faster than it gathers half of them from a strided view (4,096 rows
of random ids, one measurement: 145 against 230-290 us for the synthetic store's 43 columns, even
near 123, 35% slower at 243)."""


_TARGET_TABLE_MAX_BYTES = 16 * 2**20
"""Largest per-target table :meth:`ObservationBuilder.build` keeps (the synthetic store's is
5 MB; a COCO-10k-sized store's would be 113 MB, and its batches gather from the store)."""
_TARGET_TABLES_KEPT = 4
"""Per-target tables a builder keeps: a fixed target needs one."""


class ObservationBuilder:
    """Builds per-candidate observation rows from store ids.

    Columns of a candidate's row, in order:
        ``bald_mean, bald_max, entropy_mean``: class-agnostic uncertainty of the patch (and
        any extra uncertainty columns the store was prepared with);
        ``presence:<class>`` for every class: mean predicted probability over the patch;
        ``target_presence``, ``target_class_bald``: the target's own presence and one-vs-rest
        BALD, so a policy trained on one target transfers its meaning to another;
        ``budget_left``: the fraction of the episode's budget still to spend;
        ``target:<class>`` one-hot (only with ``target_onehot``), for goal-conditioned agents.

    ``features`` keeps only some of the patch columns (every column before ``budget_left``):
    a group or a list of names, see :meth:`~misical_gym.layout.FeatureLayout.select`;
    ``budget_left`` and the one-hot are always kept. An empty slot (store id -1) is all zeros.
    No oracle count ever enters a row.
    """

    def __init__(
        self, store: FeatureStore, target_onehot: bool, features: str | Sequence[str] = "all"
    ) -> None:
        self.store = store
        # A plain ndarray view of the memory map: NumPy's memmap subclass slows every gather.
        self.features = np.asarray(store.features)
        layout = store.layout
        self.num_global = layout.num_global
        self.num_base = layout.class_bald.start
        self.target_onehot = target_onehot
        names = [*layout.observation_columns, "budget_left"]
        if target_onehot:
            names += [f"target:{name}" for name in store.class_names]
        self.names: tuple[str, ...] = tuple(names)
        # The store's bounds for the columns taken as they are; then the target's presence (1),
        # its class-BALD, the budget left and the one-hot (1).
        high = np.ones(len(names), dtype=np.float32)
        high[: self.num_base] = layout.upper_bounds()[: self.num_base]
        high[self.num_base + 1] = math.log(2)
        self.low = np.zeros(len(names), dtype=np.float32)
        self.high = high
        self.num_full = len(names)
        """Columns of a full row, before ``features`` keeps some of them."""
        # The kept columns of a full row: None keeps them all, the default's fast path.
        kept = list(layout.select(features))
        kept += range(len(layout.observation_columns), len(names))
        self.columns: np.ndarray | None = None
        if len(kept) < len(names):
            self.columns = np.array(kept, dtype=np.int64)
            self.names = tuple(names[i] for i in kept)
            self.low, self.high = self.low[self.columns], self.high[self.columns]
        self._budget_column = self.names.index("budget_left")
        self._target_tables: dict[int, np.ndarray] = {}

    @property
    def num_features(self) -> int:
        return len(self.names)

    def build(
        self,
        candidate_ids: np.ndarray,
        target: np.ndarray | int,
        budget_left: np.ndarray | float,
        *,
        may_have_empty: bool = True,
    ) -> np.ndarray:
        """Observation rows ``[..., K, F]`` for candidate ids ``[..., K]`` (-1 = empty slot).

        ``target`` and ``budget_left`` (a fraction) broadcast over the leading dimensions.
        A caller that knows every id is a patch passes ``may_have_empty=False`` to skip the
        search for empty slots (a sizeable share of a single step's cost).
        """
        ids = np.asarray(candidate_ids, dtype=np.int64)
        if not isinstance(target, int | np.integer):  # a batch of one target: its single paths
            target = _the_one(np.asarray(target))
        if ids.size >= _WHOLE_ROWS_UP_TO and isinstance(target, int | np.integer):
            table = self._target_table(int(target))  # a batch: the target's table, if it has one
            if table is not None:
                out = table.take(ids, axis=0)  # id -1 reads the table's last, all-zero row
                budget = _trailing(np.asarray(budget_left, dtype=np.float32), ids.ndim)
                out[..., self._budget_column] = np.where(ids >= 0, budget, np.float32(0.0))
                return out
        return self._gather(ids, target, budget_left, may_have_empty)

    def _target_table(self, target: int) -> np.ndarray | None:
        """Every patch's row for ``target``, budget left 0, then an all-zero row: float32
        ``[num_patches + 1, F]``; None when the table would be large.

        A replay batch then reads one contiguous row per candidate instead of a store row and
        two scattered target columns, the same values (a third of the time, synthetic store).
        The store never changes under a builder, so a table stays valid; a few are kept.
        """
        if self.features.shape[0] * self.num_features * 4 > _TARGET_TABLE_MAX_BYTES:
            return None

        def table() -> np.ndarray:
            patches = np.arange(self.features.shape[0])
            rows = self._gather(patches, target, 0.0, may_have_empty=False)
            return np.concatenate([rows, np.zeros((1, rows.shape[1]), dtype=np.float32)])

        return kept_table(self._target_tables, target, table, _TARGET_TABLES_KEPT)

    def _gather(
        self,
        ids: np.ndarray,
        target: np.ndarray | int,
        budget_left: np.ndarray | float,
        may_have_empty: bool,
    ) -> np.ndarray:
        """:meth:`build` from the store's rows."""
        out = np.empty((*ids.shape, self.num_full), dtype=np.float32)
        g, nb = self.num_global, self.num_base
        # An empty slot (-1) takes the last row, like Python indexing; it is zeroed below.
        rows = None
        if ids.size < _WHOLE_ROWS_UP_TO or self.features.shape[1] <= _WHOLE_ROWS_UP_TO_COLUMNS:
            # The method, not np.take: it skips NumPy's function dispatch, about 2 µs of a step.
            rows = self.features.take(ids, axis=0)  # [..., K, 3 + 2C]
            out[..., :nb] = rows[..., :nb]
        else:  # a batch: only the columns taken as they are, half of a COCO-shaped row's bytes
            out[..., :nb] = self.features[:, :nb][ids]
        if rows is not None and isinstance(target, int | np.integer):  # one target
            out[..., nb] = rows[..., g + target]
            out[..., nb + 1] = rows[..., nb + target]
        else:  # gather the target's two columns straight from the store
            t = _trailing(np.asarray(target, dtype=np.int64), ids.ndim)
            out[..., nb] = self.features[ids, g + t]
            out[..., nb + 1] = self.features[ids, nb + t]
        if isinstance(budget_left, float | int):
            out[..., nb + 2] = budget_left
        else:
            out[..., nb + 2] = _trailing(np.asarray(budget_left, dtype=np.float32), ids.ndim)
        if self.target_onehot:
            onehot = out[..., nb + 3 :]
            onehot[...] = 0.0
            t = _trailing(np.asarray(target, dtype=np.int64), ids.ndim)[..., None]
            np.put_along_axis(onehot, np.broadcast_to(t, (*ids.shape, 1)), 1.0, axis=-1)
        if may_have_empty and ids.size and ids.min() < 0:
            out[ids < 0] = 0.0
        return out if self.columns is None else out[..., self.columns]


def kept_table(
    tables: dict[int, np.ndarray], target: int, make: Callable[[], np.ndarray], limit: int
) -> np.ndarray:
    """``tables[target]``, made by ``make()`` on first use; at most ``limit`` are kept (all are
    dropped when a new one would exceed it: a fixed target keeps its one)."""
    table = tables.get(target)
    if table is None:
        if len(tables) >= limit:
            tables.clear()
        table = tables[target] = make()
    return table


def _the_one(values: np.ndarray) -> np.ndarray | int:
    """The single value of ``values`` when they are all the same, else ``values``: copying a
    column of the taken rows costs a third of gathering it from the store."""
    if values.size and (first := values.flat[0]) == values.min() == values.max():
        return int(first)
    return values


def _trailing(array: np.ndarray, ndim: int) -> np.ndarray:
    """``array`` with singleton axes appended up to ``ndim``, to broadcast over trailing axes."""
    return array.reshape(array.shape + (1,) * (ndim - array.ndim))
