"""Returned annotations as COCO JSON (polygons or RLE, as any COCO tool exports them).

Images are named by ``file_name`` (the dataset's own file name) and must say their ``height``
and ``width``; categories are matched to the store's classes by name. Pixels no annotation
covers are "not annotated" (255), so a patch is labelled only where the annotations cover every
pixel of it, background classes included. A file whose ``info`` names a store
(``"store_id"``, ``"store_fingerprint"``, as ``misical select --format coco`` writes
them) must name this store; a file without them is matched by file name only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from misical_gym.annotations.base import Annotation, check_label, check_store_id, match_image
from misical_gym.data.classes import IGNORE_INDEX
from misical_gym.data.coco import CocoJson
from misical_gym.errors import DatasetError

if TYPE_CHECKING:
    from misical_gym.store import FeatureStore


def read_coco(path: Path, store: FeatureStore) -> list[Annotation]:
    """The images of the COCO JSON file ``path``, painted as :class:`CocoJson` paints them.

    Raises:
        DatasetError: the file is not COCO JSON, names another store, names an image the store
            does not know or gives it another size, or a category that is not a class of the
            store.
    """
    path = Path(path).expanduser().resolve()
    data = CocoJson(path.parent, [path], allow_outside_root=True)  # images are never read
    info = data.info
    if "store_id" in info or "store_fingerprint" in info:
        check_store_id(store, info.get("store_id"), info.get("store_fingerprint"), path)
    lookup = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for train_id, name in enumerate(data.class_names):
        if name not in store.class_names:
            continue  # a class no annotation uses (COCO numbering lists all 171)
        lookup[train_id] = store.class_names.index(name)
    annotations: list[Annotation] = []
    seen: dict[int, str] = {}
    for k in range(len(data)):
        file_name = data.file_name(k)
        index = match_image(store, file_name, f"{path}: image {file_name!r}")
        if index in seen:
            raise DatasetError(f"{path}: images {seen[index]!r} and {file_name!r} are one image")
        seen[index] = file_name
        painted = data.label(k)
        used = np.unique(painted[painted != IGNORE_INDEX])
        foreign = [data.class_names[v] for v in used if lookup[v] == IGNORE_INDEX]
        if foreign:
            raise DatasetError(
                f"{path}: image {file_name!r} is annotated with {foreign[:5]}, which are not "
                f"classes of store {store.path.name!r} ({', '.join(store.class_names[:10])}...)"
            )
        annotation = Annotation(index, lookup[painted])
        check_label(store, annotation, f"{path}: image {file_name!r}")
        annotations.append(annotation)
    return annotations
