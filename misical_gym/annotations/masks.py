"""Returned annotations as mask images in the dataset's own encoding.

A folder of label masks named as the store's images (``<image name>.png``, in sub-folders or
not), encoded as the store's mask dataset encodes its labels (its classes file: index values or
colours, and what is ignored); a store of another kind takes index masks of its train ids.
In index masks, value 255 is "not annotated" (unless the classes file names it); what the
classes file ignores (CamVid's Unlabelled) is annotated as void: a pixel of no class.

Mask files carry no store id: they are matched to the store by file name only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from misical_gym.annotations.base import Annotation, check_label, match_image
from misical_gym.data.classes import IGNORE_INDEX
from misical_gym.data.masks import MaskClasses, mask_to_train_ids, read_mask
from misical_gym.errors import DatasetError

if TYPE_CHECKING:
    from misical_gym.store import FeatureStore


def read_masks(path: Path, store: FeatureStore) -> list[Annotation]:
    """Every mask file under the folder ``path`` (or the one file ``path``), as annotations.

    Raises:
        DatasetError: the folder is missing or holds no mask, a mask names an image the store
            does not know or is unreadable, of another size than its image, holds values the
            encoding does not name, or two masks name one image.
    """
    table, unknown_as_ignore, suffix = _encoding(store)
    path = Path(path).expanduser()
    if path.is_file():
        files, root = [path], path.parent
    elif path.is_dir():
        files, root = sorted(p for p in path.rglob(f"*{suffix}") if p.is_file()), path
    else:
        raise DatasetError(f"annotation masks {path} not found (a folder of {suffix} masks)")
    if not files:
        raise DatasetError(f"no {suffix} masks in {path}")
    annotations: list[Annotation] = []
    seen: dict[int, Path] = {}
    for file in files:
        name = file.relative_to(root).with_suffix("").as_posix()
        index = match_image(store, name, str(file))
        if index in seen:
            raise DatasetError(f"{file} and {seen[index]} are both masks of one image")
        seen[index] = file
        raw = read_mask(file)
        label = mask_to_train_ids(raw, file, table, unknown_as_ignore)
        unannotated = raw == IGNORE_INDEX if raw.ndim == 2 else np.zeros(label.shape, bool)
        annotation = Annotation(index, label, void=(label == IGNORE_INDEX) & ~unannotated)
        check_label(store, annotation, str(file))
        annotations.append(annotation)
    return annotations


def _encoding(store: FeatureStore) -> tuple[MaskClasses, bool, str]:
    """The class table, unknown-as-ignore and label suffix of the store's mask dataset."""
    for spec in store.dataset.get("sources", []):
        if isinstance(spec, dict) and spec.get("kind") == "masks":
            table = MaskClasses.from_mapping(spec["classes"], f"{store.path.name}'s classes")
            if IGNORE_INDEX not in (*table.values, *table.ignore_values):
                # 255 is "not annotated": read as ignore, then told apart from void by value.
                table = dataclasses.replace(
                    table, ignore_values=(*table.ignore_values, IGNORE_INDEX)
                )
            if table.names != store.class_names:
                raise DatasetError(f"{store.path}: its mask dataset's classes are not the store's")
            return table, bool(spec.get("unknown_as_ignore")), str(spec.get("label_suffix", ".png"))
    names = store.class_names
    table = MaskClasses(names, tuple(range(len(names))), ignore_values=(IGNORE_INDEX,))
    return table, False, ".png"
