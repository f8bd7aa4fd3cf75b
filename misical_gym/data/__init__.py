"""Datasets (synthetic, COCO-Stuff, COCO JSON, mask folders), the COCO-Stuff class table, the
patch grid and the init / pool split.

Every dataset yields ``(image, label)``: ``image`` uint8 ``[H, W, 3]``, ``label`` uint8 ``[H, W]``
holding contiguous train ids ``0..C-1`` and 255 for ignore. Every dataset has ``class_names``
(a tuple of C names) and ``image_ids``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

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
from misical_gym.data.synthetic import SyntheticScenes
from misical_gym.errors import DatasetError

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
    "coco_id_to_train_id",
    "open_dataset",
    "read_mask_classes",
    "split_indices",
]

_DATASET_KINDS = ("synthetic", "coco10k", "coco164k", "coco-json", "masks")


def open_dataset(spec: Mapping[str, Any]) -> SegmentationDataset:
    """Rebuild a dataset from its ``spec`` (the dict its ``spec`` property returns).

    Args:
        spec: ``{"kind": ..., **constructor arguments}``, kind one of ``"synthetic"``,
            ``"coco10k"``, ``"coco164k"``, ``"coco-json"`` and ``"masks"``.

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
