"""Datasets (synthetic, COCO-Stuff, COCO JSON, mask folders), the COCO-Stuff class table, the
patch grid and the init / pool split.

Every dataset yields ``(image, label)``: ``image`` uint8 ``[H, W, 3]``, ``label`` uint8 ``[H, W]``
holding contiguous train ids ``0..C-1`` and 255 for ignore. Every dataset has ``class_names``
(a tuple of C names) and ``image_ids``.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from misical_gym.data.base import SegmentationDataset
from misical_gym.data.classes import (
    COCO_STUFF_CLASSES,
    COCO_STUFF_IDS,
    IGNORE_INDEX,
    coco_id_to_train_id,
)
from misical_gym.data.coco import CocoJson, CocoStuff10k, CocoStuff164k
from misical_gym.data.masks import MaskClasses, MaskFolder, read_mask_classes
from misical_gym.data.patches import PatchGrid, split_indices
from misical_gym.data.resize import resize_example
from misical_gym.data.synthetic import SyntheticScenes
from misical_gym.data.unlabelled import UnlabelledImages
from misical_gym.errors import DatasetError, StoreError

if TYPE_CHECKING:
    from misical_gym.store import FeatureStore

__all__ = [
    "COCO_STUFF_CLASSES",
    "COCO_STUFF_IDS",
    "IGNORE_INDEX",
    "CocoJson",
    "CocoStuff10k",
    "CocoStuff164k",
    "MaskClasses",
    "MaskFolder",
    "PatchGrid",
    "SegmentationDataset",
    "SyntheticScenes",
    "UnlabelledImages",
    "coco_id_to_train_id",
    "open_dataset",
    "read_mask_classes",
    "resize_example",
    "split_indices",
    "store_image",
    "store_image_file",
]

_DATASET_KINDS = ("synthetic", "coco10k", "coco164k", "coco-json", "masks", "unlabelled")


def open_dataset(spec: Mapping[str, Any]) -> SegmentationDataset:
    """Rebuild a dataset from its ``spec`` (the dict its ``spec`` property returns).

    Args:
        spec: ``{"kind": ..., **constructor arguments}``, kind one of ``"synthetic"``,
            ``"coco10k"``, ``"coco164k"``, ``"coco-json"``, ``"masks"`` and ``"unlabelled"``.

    Returns:
        The dataset.

    Raises:
        DatasetError: ``spec`` has no known ``kind``, its arguments do not fit that dataset, or
            the dataset itself rejects them (e.g. its folder is gone).
    """
    if not isinstance(spec, Mapping) or "kind" not in spec:
        raise DatasetError(f"a dataset spec is a dict with a 'kind' key; got {spec!r}")
    kind = spec["kind"]
    factory: Callable[..., SegmentationDataset]
    if kind == "synthetic":
        factory = SyntheticScenes
    elif kind == "coco10k":
        factory = CocoStuff10k
    elif kind == "coco164k":
        factory = CocoStuff164k
    elif kind == "coco-json":
        factory = CocoJson
    elif kind == "masks":
        factory = MaskFolder
    elif kind == "unlabelled":
        factory = UnlabelledImages
    else:
        raise DatasetError(
            f"unknown dataset kind {kind!r}; known kinds: {', '.join(_DATASET_KINDS)}"
        )
    arguments = {key: value for key, value in spec.items() if key != "kind"}
    try:
        inspect.signature(factory).bind(**arguments)
    except TypeError as err:
        raise DatasetError(f"dataset spec {dict(spec)!r} does not fit {kind!r}: {err}") from err
    return factory(**arguments)


def store_image(store: FeatureStore, image_index: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``(image, label)`` of one of ``store``'s images, read from its dataset again.

    Raises:
        StoreError: the store does not record where its images are, or its manifest's record
            of them is damaged.
        DatasetError: the dataset is gone or changed.
    """
    dataset, item = _store_item(store, image_index)
    return dataset[item]


def store_image_file(store: FeatureStore, image_index: int) -> tuple[Path | None, str]:
    """``(folder, name)`` of one of ``store``'s image files, ``name`` the dataset's own.

    A store that does not record where its images are, or whose dataset is not read from
    files (the synthetic world), gives ``(None, image id)``.

    Raises:
        StoreError, DatasetError: as :func:`store_image`, for a store that records its images.
    """
    if not store.can_reach_images:
        return None, store.image_ids[int(image_index)]
    dataset, item = _store_item(store, image_index)
    image_file = getattr(dataset, "image_file", None)
    if image_file is None:
        return None, store.image_ids[int(image_index)]
    return image_file(item)


def _store_item(store: FeatureStore, image_index: int) -> tuple[SegmentationDataset, int]:
    """The dataset and item index that hold image ``image_index`` of ``store``."""
    if not store.can_reach_images:
        raise StoreError(f"{store.path}: this store does not record where its images are")
    manifest = store.path / "manifest.json"
    sources, items, index = store.dataset["sources"], store.dataset["items"], int(image_index)
    entry = items[index] if isinstance(items, list) and 0 <= index < len(items) else None
    if not (
        isinstance(sources, list)
        and isinstance(entry, list)
        and len(entry) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in entry)
        and entry[0] < len(sources)
    ):
        raise StoreError(
            f"{manifest}: dataset items[{index}] is {entry!r:.80}, not [source, item] of one of "
            "its sources; the manifest is damaged or was edited"
        )
    source, item = entry
    dataset = _open_cached(json.dumps(sources[source], sort_keys=True))
    if item >= len(dataset):
        raise StoreError(
            f"{manifest}: dataset items[{index}] names image {item} of a source that has "
            f"{len(dataset)}; the dataset changed or the manifest was edited"
        )
    return dataset, item


@functools.lru_cache(maxsize=16)
def _open_cached(spec_json: str) -> SegmentationDataset:
    """Datasets reopened for :func:`store_image`, once per process and spec."""
    return open_dataset(json.loads(spec_json))
