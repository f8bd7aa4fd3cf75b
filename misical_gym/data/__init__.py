"""Datasets, the COCO-Stuff class table, the patch grid and the init / pool split.

Every dataset yields ``(image, label)``: ``image`` uint8 ``[H, W, 3]``, ``label`` uint8 ``[H, W]``
holding contiguous train ids ``0..C-1`` and 255 for ignore. Every dataset has ``class_names``
(a tuple of C names) and ``image_ids``.
"""

from __future__ import annotations

from misical_gym.data.classes import (
    COCO_STUFF_CLASSES,
    COCO_STUFF_IDS,
    IGNORE_INDEX,
    coco_id_to_train_id,
)
from misical_gym.data.patches import PatchGrid, split_indices

__all__ = [
    "COCO_STUFF_CLASSES",
    "COCO_STUFF_IDS",
    "IGNORE_INDEX",
    "PatchGrid",
    "coco_id_to_train_id",
    "split_indices",
]
