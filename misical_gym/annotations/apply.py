"""``misical label``: returned annotations become oracle counts of the patches they cover.

A patch becomes labelled when its annotation covers every pixel of it (with a class, or as the
dataset's void class): a patch with a pixel left unannotated keeps unknown counts, since a
partial count would read as a full one. Labelling is idempotent: a patch labelled again with
the same counts is left alone, and with different counts is refused (nothing changes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from misical_gym.annotations.base import Annotation, check_label, check_store_id
from misical_gym.data.classes import IGNORE_INDEX
from misical_gym.errors import DatasetError
from misical_gym.store import FeatureStore


def label_patches(
    store: FeatureStore,
    annotations: Sequence[Annotation],
    only: np.ndarray | None = None,
) -> dict[str, Any]:
    """Count the classes of every fully annotated patch, mark it labelled, update the store.

    All annotations are checked before anything is written, and the store is rewritten once,
    atomically (:meth:`FeatureStore.update`); with nothing new it is not touched at all.

    Args:
        store: The store.
        annotations: One per image.
        only: Patch ids to label (the picks sent for annotation); None: every covered patch.

    Returns:
        ``{"labelled": newly labelled patches, "unchanged": patches labelled before with the
        same counts, "partial": patches of annotated images not fully covered, "not_picked":
        patches left alone because ``only`` does not hold them, "images": n}``.

    Raises:
        DatasetError: a label is of the wrong size or holds unknown ids, two annotations name
            one image, or a labelled patch would get different counts.
    """
    counts, labelled = np.array(store.counts), np.array(store.labelled)
    order = np.argsort(np.asarray(store.patches[:, 0]), kind="stable")
    starts = np.searchsorted(
        np.asarray(store.patches[order, 0]), np.arange(len(store.image_ids) + 1)
    )
    seen: set[int] = set()
    picked = None if only is None else np.zeros(store.num_patches, dtype=bool)
    if picked is not None:
        picked[only] = True
    summary = {"labelled": 0, "unchanged": 0, "partial": 0, "images": len(annotations)}
    if picked is not None:
        summary["not_picked"] = 0
    for annotation in annotations:
        index = annotation.image_index
        name = store.image_ids[index]
        check_label(store, annotation, f"image {name!r}")
        if index in seen:
            raise DatasetError(f"two annotations of image {name!r}; give one per image")
        seen.add(index)
        ids = order[starts[index] : starts[index + 1]]
        annotated = annotation.annotated
        for patch, (y0, x0, y1, x1) in zip(ids, store.boxes(ids), strict=True):
            if picked is not None and not picked[patch]:
                summary["not_picked"] += 1
                continue
            if not annotated[y0:y1, x0:x1].all():
                summary["partial"] += 1
                continue
            pixels = annotation.label[y0:y1, x0:x1].ravel()
            new = np.bincount(pixels[pixels != IGNORE_INDEX], minlength=store.num_classes)
            if labelled[patch]:
                if not np.array_equal(counts[patch], new):
                    raise DatasetError(
                        f"patch {int(patch)} of image {name!r} is labelled already, with other "
                        f"counts ({counts[patch].tolist()}, now {new.tolist()}); nothing changed"
                    )
                summary["unchanged"] += 1
                continue
            counts[patch], labelled[patch] = new, True
            summary["labelled"] += 1
    if summary["labelled"]:
        store.update(counts=counts, labelled=labelled)
    return summary


def read_picks(path: str | Path, store: FeatureStore) -> np.ndarray:
    """The patch ids of a ``misical select`` JSON file, checked against ``store``: the one
    reader of picks files (``label --picks``, ``select --exclude``).

    Every pick must name a patch of the store with its image and box as the store has them,
    so picks of another store (or an edited file) are refused, not silently misapplied; a
    ``store_fingerprint`` in the file, when there is one, must be one of the store's.

    Raises:
        DatasetError: the file is not a selection of this store.
    """
    try:
        selection = json.loads(Path(path).read_text(encoding="utf-8"))
        store_name = selection.get("store_id") or Path(selection["store"]).name
        picks = selection["picks"]
        ids = np.array([int(p["patch_id"]) for p in picks], dtype=np.int64)
        names = [str(p["image_id"]) for p in picks]
        boxes = np.array([[int(v) for v in p["box"]] for p in picks], dtype=np.int64)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read it as JSON ({exc})") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(
            f"{path}: not a misical select JSON file (store, picks with patch_id, "
            f"image_id and box): {type(exc).__name__}: {exc}"
        ) from None
    if "store_fingerprint" in selection:
        check_store_id(store, store_name, selection["store_fingerprint"], path)
    elif store_name != store.path.name:
        check_store_id(store, store_name, None, path)
    inside = (ids >= 0) & (ids < store.num_patches)
    same = np.zeros(len(ids), dtype=bool)
    if inside.any():
        real = store.boxes(ids[inside])
        images = [store.image_ids[i] for i in np.asarray(store.patches[ids[inside], 0])]
        same[inside] = (real == boxes[inside].reshape(-1, 4)).all(axis=1) & (
            np.array(images) == np.array(names)[inside]
        )
    if not same.all():
        bad = int(np.flatnonzero(~same)[0])
        raise DatasetError(
            f"{path}: pick {bad} (patch {ids[bad]}, image {names[bad]!r}, box "
            f"{boxes[bad].tolist()}) is not a patch of store {store.path.name!r}; the picks come "
            "from another store or were edited"
        )
    return ids
